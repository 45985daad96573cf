"""StaticEncoder: a table of one vector per vocabulary token; a sentence is the mean of its tokens' rows.

    text -> tokenizer (no special tokens) -> rows of the table -> mean -> [normalize]

No transformer runs at inference, so a CPU encodes tens of thousands of sentences a second. Weights that
a method gives tokens (model2vec's SIF weights) are folded into the rows, so the mean stays a plain mean;
a row of zeros adds nothing to the direction of the sum, which is how a method leaves a token out of
every cosine (punctuation in Wada et al. 2025) while the mean still counts it.

The folder is the one stock sentence-transformers writes for its ``StaticEmbedding`` module:
``modules.json`` (``StaticEmbedding`` at the root, then ``Normalize``), ``tokenizer.json`` (padding,
truncation and the special-token template off: ``StaticEmbedding`` tokenizes with
``add_special_tokens=False`` and never truncates) and ``model.safetensors`` holding ``embedding.weight``
(V, D), so ``SentenceTransformer(path)`` gives the same embeddings with no csekit installed.
``csekit_config.json`` records how the table was made. :func:`csekit.models.load_encoder` loads it, so
``csekit eval``, ``encode``, ``search`` and ``serve`` take a static model where they take an encoder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import Tensor, nn

from csekit.atomic import replace_dir
from csekit.errors import CsekitError
from csekit.models.pooling import StockModule
from csekit.models.saving import CSEKIT_CONFIG, FORMAT, check_model_target, write_modules

#: The longest input, in tokens, csekit reads of a text (stock ``StaticEmbedding`` reads all of it); as
#: large as encode's and serve's default batch budgets, which must hold the longest input.
DEFAULT_MAX_LENGTH = 16_384
WEIGHTS_KEY = "embedding.weight"  # the name stock StaticEmbedding saves and loads its table under


class StaticPooling:
    """What csekit's commands read of a pooler (its name, its settings), for a model that has none."""

    name: ClassVar[str] = "static"
    wants_head: ClassVar[bool] = False

    def config(self) -> dict[str, Any]:
        return {}

    def inference_texts(self, texts: Sequence[str]) -> list[str]:
        return list(texts)


class StaticEncoder(nn.Module):
    """Text -> (B, D) mean of token rows; the inference contract of :class:`~csekit.models.SentenceEncoder`
    (``encode``, ``inference_tokens``, ``embed_tokens``, ``embedding_dim``, ``max_length``, ``save``)."""

    head = None
    head_at_inference = False
    uses_head = False
    outputs: tuple = ()
    model_input_names: ClassVar[list[str]] = ["input_ids"]
    pad_token_id = 0

    def __init__(self, tokenizer: Tokenizer, weights: Tensor, *, normalize: bool = True,
                 max_length: int = DEFAULT_MAX_LENGTH, provenance: dict[str, Any] | None = None):  # fmt: skip
        super().__init__()
        if weights.ndim != 2 or weights.shape[0] < tokenizer.get_vocab_size():
            raise CsekitError(f"a static table of shape {tuple(weights.shape)} has no row for each of the "
                              f"tokenizer's {tokenizer.get_vocab_size()} tokens")  # fmt: skip
        self.embedding = nn.EmbeddingBag.from_pretrained(weights.float(), freeze=False, mode="mean")  # (V, D)
        self.tokenizer = plain_tokenizer(tokenizer)
        self.normalize, self.max_length = normalize, max_length
        self.provenance = dict(provenance or {})
        self.pooler = StaticPooling()

    # ------------------------------------------------------------------ training path
    def forward(self, input_ids: Tensor, offsets: Tensor) -> Tensor:
        """Token ids of B texts end to end (N,), each text's first position (B,) -> (B, D) means (zeros for a
        text without tokens)."""
        return self.embedding(input_ids, offsets)

    def tokenize(self, texts: Sequence[str], *, max_length: int | None = None) -> dict[str, list[list[int]]]:
        limit = max_length or self.max_length
        # encode_batch_fast: the ids of encode_batch (what StaticEmbedding calls) without character offsets
        encodings = self.tokenizer.encode_batch_fast(list(texts))
        return {"input_ids": [encoding.ids[:limit] for encoding in encodings]}

    def batch(self, rows: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
        """Token id lists -> the (N,) ids end to end and the (B,) offsets :meth:`forward` takes."""
        offsets = np.cumsum([0, *(len(row) for row in rows[:-1])])
        ids = [token for row in rows for token in row]
        return torch.tensor(ids, dtype=torch.long, device=self.device), torch.as_tensor(offsets, device=self.device)

    # ------------------------------------------------------------------ inference path
    def inference_tokens(self, texts: Sequence[str], *, max_length: int | None = None) -> list[dict[str, list[int]]]:
        return [{"input_ids": ids} for ids in self.tokenize(texts, max_length=max_length)["input_ids"]]

    @torch.inference_mode()
    def embed_tokens(self, rows: Sequence[dict[str, Sequence[int]]], *, normalize: bool | None = None) -> np.ndarray:
        normalize = self.normalize if normalize is None else normalize
        if not rows:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        input_ids, offsets = self.batch([row["input_ids"] for row in rows])
        sums = nn.functional.embedding_bag(input_ids, self.embedding.weight, offsets, mode="sum").cpu().numpy()  # (B, D)
        # The rest in NumPy: torch's threads, woken for such small element-wise work, wait on the tokenizer's
        # threads (measured: encode 1.5x slower on 2 cores).
        lengths = np.array([max(len(row["input_ids"]), 1) for row in rows], dtype=np.float32)
        embeddings = sums / lengths[:, None]
        if normalize:
            embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        return embeddings

    def encode(self, texts: Sequence[str], *, batch_size: int = 1024, normalize: bool | None = None,
               show_progress: bool | None = None, max_length: int | None = None) -> np.ndarray:  # fmt: skip
        """Embed ``texts`` -> float32 (N, D) in their order (no padding, so no sorting either)."""
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts; wrap a single string in a list")
        output = np.zeros((len(texts), self.embedding_dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            rows = self.inference_tokens(texts[start : start + batch_size], max_length=max_length)
            output[start : start + len(rows)] = self.embed_tokens(rows, normalize=normalize)
        return output

    # ------------------------------------------------------------------ facts
    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    @property
    def embedding_dim(self) -> int:
        return self.embedding.embedding_dim

    def save(self, path: str | os.PathLike) -> None:
        """Write the sentence-transformers ``StaticEmbedding`` folder; it appears whole or not at all."""
        target = Path(path)
        check_model_target(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            save_file({WEIGHTS_KEY: self.embedding.weight.detach().cpu().contiguous()}, staging / "model.safetensors")
            self.tokenizer.save(str(staging / "tokenizer.json"))
            modules = [StockModule("StaticEmbedding")] + ([StockModule("Normalize")] if self.normalize else [])
            write_modules(staging, modules)
            (staging / "config_sentence_transformers.json").write_text(json.dumps({"similarity_fn_name": "cosine"}))
            config = {"format": FORMAT, "static": self.provenance, "max_length": self.max_length}
            (staging / CSEKIT_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
            replace_dir(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def plain_tokenizer(tokenizer: Tokenizer) -> Tokenizer:
    """A copy that adds no special tokens, pads nothing and truncates nothing (what ``StaticEmbedding`` does)."""
    settings = json.loads(tokenizer.to_str())
    settings.update(post_processor=None, padding=None, truncation=None)
    return Tokenizer.from_str(json.dumps(settings))


def load_static(folder: str, modules: list[dict], *, max_length: int | None = None) -> StaticEncoder:
    """The :class:`StaticEncoder` of a ``StaticEmbedding`` folder (csekit's or any other tool's)."""
    kinds = [module["type"].rsplit(".", 1)[-1] for module in modules]
    if modules[0].get("path") or kinds[1:] not in ([], ["Normalize"]):
        raise CsekitError(f"{folder}: modules {kinds} are not StaticEmbedding at the folder's root, then an "
                          "optional Normalize: the static models csekit loads")  # fmt: skip
    root = Path(folder)
    for name in ("tokenizer.json", "model.safetensors"):
        if not (root / name).is_file():
            raise CsekitError(f"{folder}: a StaticEmbedding folder needs {name}, which it lacks (copy the whole folder)")
    weights = load_file(root / "model.safetensors")
    if WEIGHTS_KEY not in weights:
        raise CsekitError(f"{folder}/model.safetensors has no {WEIGHTS_KEY!r} table (it holds {sorted(weights)})")
    saved = json.loads((root / CSEKIT_CONFIG).read_text(encoding="utf-8")) if (root / CSEKIT_CONFIG).is_file() else {}
    return StaticEncoder(Tokenizer.from_file(str(root / "tokenizer.json")), weights[WEIGHTS_KEY],
                         normalize=bool(kinds[1:]), max_length=max_length or saved.get("max_length") or DEFAULT_MAX_LENGTH,
                         provenance=saved.get("static"))  # fmt: skip
