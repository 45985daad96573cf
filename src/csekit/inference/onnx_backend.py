"""ONNX Runtime as the engine behind :meth:`SentenceEncoder.embed_tokens` on CPU.

The encoder's whole inference forward (backbone -> pooler -> head -> output modules, in eval mode) is
exported to one ONNX graph with dynamic batch and sequence axes (``torch.onnx.export``'s
``torch.export``-based exporter) and run on ONNX Runtime's CPU execution provider with every graph
optimisation on and one intra-op thread per usable core. Tokenizing stays with the encoder
(:meth:`SentenceEncoder.inference_tokens`): an :class:`OnnxEncoder` takes those rows, pads them as
:func:`~csekit.data.collate.pad_batch` does, and returns what ``embed_tokens`` returns (float32,
normalised on request), within 1e-5, so a caller can swap one for the other.

Why: ``benchmarks/onnx_backend.py`` (results in ``benchmarks/results/onnx-backend.md``) measures it
1.6-1.9x faster than PyTorch's eager path on 2 CPU cores, and faster than ``torch.compile`` and oneDNN
linears, at every batch size ``encode`` uses, with embeddings within 1e-5 for every pooler exported
here. ``csekit encode --backend onnx`` uses it; PyTorch stays the default (no export step, no extra
dependency, any device).

- :func:`export_onnx` writes a folder: ``model.onnx`` (weights inside it, or beside it for models past
  protobuf's 2 GB) and ``onnx_config.json`` (what the host side needs: input names, padding id, output
  width, the default of ``normalize``, the row checks). The folder appears whole or not at all, and
  only after ONNX Runtime has reproduced the encoder on a few example rows.
- :func:`onnx_encoder` keeps exports in a cache keyed by a fingerprint of everything the graph depends
  on (weights, backbone config, pooler settings, head, output modules, torch version), so an encoder is
  exported once (seconds to a minute) and loaded in well under a second after.

Poolers: the SimCSE ones, ``layer_mean`` and Ditto (eager attention's probabilities are ordinary
graph operations) export as they are. The prompt poolers do not trace as written, for two reasons,
and are exported as an equivalent graph: their check that each row holds one [MASK] is data-dependent
control flow, so it moves to the host (the same message); and ``mask_denoised`` runs the backbone over
the template once per distinct sentence length (``torch.unique``, a data-dependent shape), but the
template's [MASK] state depends on the sentence length alone, so it is computed at export for every
length the model's positions allow and stored in the graph as a (lengths, H) table, one row gathered
per sentence. Any other pooler is refused with a one-line error rather than exported untested.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from csekit.atomic import replace_dir, write_text
from csekit.data.collate import pad_batch
from csekit.data.download import cache_root
from csekit.errors import CsekitError
from csekit.models.encoder import SentenceEncoder, first_line
from csekit.models.pooling import POOLERS, masked_mean
from csekit.models.prompt import MaskPooler, Prompt

#: Bumped whenever the graph or the sidecar changes meaning: old cache entries are then never reused.
FORMAT = 1
MODEL_FILE, CONFIG_FILE = "model.onnx", "onnx_config.json"
#: Registered poolers whose export is tested to match PyTorch within 1e-5 (tests/test_onnx_backend.py).
EXPORTABLE_POOLERS = ("cls", "cls_before_pooler", "mean", "max", "first_last_avg", "last2avg", "layer_mean",
                      "ditto", "mask", "mask_denoised")  # fmt: skip
#: How far ONNX Runtime may be from PyTorch on the export's own example rows before the export is refused.
#: Far above float32 rounding (up to ~1e-5 on the raw rows of BERT-mini, whose values reach ~20), far below
#: what a wrong graph gives (~1e-1).
EXPORT_TOLERANCE = 1e-4
#: Rows the export traces and checks: two lengths, so neither axis is specialised to the example.
EXAMPLE_TEXTS = ("a man is playing a guitar .", "two dogs run across a wide field of green grass in the morning")


def _onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise CsekitError("the ONNX backend needs onnxruntime: pip install 'csekit[onnx]'") from None
    return onnxruntime


def usable_cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ------------------------------------------------------------------------------------------ export
def check_exportable(encoder: SentenceEncoder) -> None:
    """Refuse, with one line, an encoder whose pooler has no tested export."""
    pooler = encoder.pooler
    if pooler.name not in EXPORTABLE_POOLERS or POOLERS.get(pooler.name) is not type(pooler):
        raise CsekitError(f"pooler {pooler.name!r} has no ONNX export (csekit exports {', '.join(EXPORTABLE_POOLERS)}); "
                          "encode with the PyTorch backend")  # fmt: skip


class _PromptGraph(nn.Module):
    """The mask poolers' inference forward in a form ``torch.export`` traces (see the module docstring).

    A prompt pooler takes no head, so this is backbone -> [MASK] state (- template state) -> outputs.
    """

    def __init__(self, encoder: SentenceEncoder):
        super().__init__()
        pooler: MaskPooler = encoder.pooler  # type: ignore[assignment]
        self.backbone, self.outputs, self.prompt = encoder.backbone, encoder.outputs, pooler.prompt
        self.template_states: Tensor | None = None
        if pooler.denoise:
            lengths = torch.arange(max_sentence_tokens(encoder) + 1, device=encoder.device)  # (S + 1,)
            with torch.no_grad():
                self.template_states = self.prompt.template_states(self.backbone, lengths)  # (S + 1, H)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        last_hidden = self.backbone(**inputs, return_dict=True).last_hidden_state  # (B, T, H)
        # One [MASK] per row (checked on the host), so the masked mean is that token's state exactly.
        embeddings = masked_mean(last_hidden, input_ids == self.prompt.mask_token_id)  # (B, H)
        if self.template_states is not None:
            embeddings = embeddings - self.template_states[self.prompt.sentence_lengths(attention_mask)]  # (B, H)
        for module in self.outputs:
            embeddings = module(embeddings)  # (B, H) -> (B, k)
        return embeddings


def max_tokens(encoder: SentenceEncoder) -> int:
    """The longest row the backbone's position embeddings take (RoBERTa's start after its padding index)."""
    config = encoder.backbone.config
    padding_idx = getattr(getattr(encoder.backbone, "embeddings", None), "padding_idx", None)
    return config.max_position_embeddings - (0 if padding_idx is None else padding_idx + 1)


def max_sentence_tokens(encoder: SentenceEncoder) -> int:
    """The longest sentence a prompt pooler's rows can hold: the positions left beside the template."""
    return max_tokens(encoder) - encoder.pooler.prompt.length


def host_settings(encoder: SentenceEncoder) -> dict[str, Any]:
    """What the host side of an exported encoder needs, JSON-ready (the sidecar, less the fingerprint)."""
    prompt: Prompt | None = encoder.pooler.prompt if isinstance(encoder.pooler, MaskPooler) else None
    return {
        "format": FORMAT,
        "inputs": encoder.model_input_names,
        "pad_token_id": encoder.pad_token_id,
        "embedding_dim": encoder.embedding_dim,
        "max_tokens": max_tokens(encoder),
        "pooler": {"name": encoder.pooler.name, **encoder.pooler.config()},
        "prompt": None if prompt is None else {"mask_token_id": prompt.mask_token_id, "length": prompt.length},
        "normalize": encoder.normalize,
    }


def fingerprint(encoder: SentenceEncoder) -> str:
    """A hex digest of everything the exported graph and its sidecar depend on (``normalize`` aside: it is
    applied on the host, so toggling it reuses the export)."""
    settings = {key: value for key, value in host_settings(encoder).items() if key != "normalize"}
    config = encoder.backbone.config
    described = {
        **settings, "torch": torch.__version__, "pooler_class": type(encoder.pooler).__qualname__,
        "backbone": config.to_dict(), "attention": getattr(config, "_attn_implementation", None),
        "head": None if encoder.head is None or not encoder.head_at_inference else type(encoder.head).__qualname__,
        "outputs": [type(module).__qualname__ for module in encoder.outputs],
        "prompt_ids": _prompt_ids(encoder),
    }  # fmt: skip
    digest = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode("utf-8"))
    for name, tensor in encoder.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:32]


def _prompt_ids(encoder: SentenceEncoder) -> list[list[int]] | None:
    if not isinstance(encoder.pooler, MaskPooler):
        return None
    return [list(encoder.pooler.prompt.head), list(encoder.pooler.prompt.tail)]


def export_onnx(encoder: SentenceEncoder, folder: str | os.PathLike, *, opset: int | None = None) -> Path:
    """Export ``encoder``'s inference forward to ``folder`` (replaced whole if it exists); return it.

    The export is checked before the folder appears: ONNX Runtime must reproduce ``embed_tokens`` on
    :data:`EXAMPLE_TEXTS` within :data:`EXPORT_TOLERANCE`.
    """
    check_exportable(encoder)
    _onnxruntime()
    folder = Path(folder)
    rows = encoder.inference_tokens(list(EXAMPLE_TEXTS))
    names = encoder.model_input_names
    example = {key: value.to(encoder.device) for key, value in pad_batch(rows, encoder.pad_token_id).items()}
    was_training = encoder.training
    encoder.eval()  # the inference graph: no dropout, and the head only where it is kept at inference
    try:
        expected = encoder.embed_tokens(rows, normalize=False)
        graph = _PromptGraph(encoder) if isinstance(encoder.pooler, MaskPooler) else encoder
        program = _trace(graph, tuple(example[name] for name in names), names, longest=max_tokens(encoder),
                         opset=opset)  # fmt: skip
    finally:
        encoder.train(was_training)
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        program.save(scratch / MODEL_FILE)
        settings = {**host_settings(encoder), "fingerprint": fingerprint(encoder)}
        write_text(scratch / CONFIG_FILE, json.dumps(settings, indent=2) + "\n")
        difference = float(np.abs(OnnxEncoder(scratch).embed_tokens(rows, normalize=False) - expected).max())
        if not difference <= EXPORT_TOLERANCE:
            raise CsekitError(f"the ONNX export of pooler {encoder.pooler.name!r} does not reproduce the encoder "
                              f"(max abs difference {difference:.1e} > {EXPORT_TOLERANCE:.0e}); encode with the "
                              "PyTorch backend")  # fmt: skip
        replace_dir(scratch, folder)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return folder


def _trace(graph: nn.Module, args: tuple[Tensor, ...], names: Sequence[str], *, longest: int, opset: int | None):
    """``torch.onnx.export`` of ``graph`` with batch and sequence (up to ``longest``) dynamic on every input;
    one-line errors."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=longest)
    dynamic = tuple({0: batch, 1: sequence} for _ in args)  # (B, T) each
    try:
        with warnings.catch_warnings(), _quiet_logger("torch.onnx"), torch.no_grad():
            warnings.simplefilter("ignore")  # the exporter's deprecation chatter, not the user's concern
            return torch.onnx.export(graph, args, input_names=list(names), output_names=["embeddings"],
                                     dynamic_shapes=dynamic, opset_version=opset, dynamo=True, verbose=False)  # fmt: skip
    except ImportError as error:  # the exporter's own dependencies
        raise CsekitError(f"the ONNX export needs onnx and onnxscript ({error}): pip install 'csekit[onnx]'") from None
    except Exception as error:  # torch.export's reasons are many; the innermost one names the construct
        raise CsekitError(f"cannot export this encoder to ONNX: {_reason(error)}") from None


def _reason(error: BaseException) -> str:
    """The first line of the innermost cause: the exporter wraps torch.export's reason in its own advice."""
    while error.__cause__ is not None:
        error = error.__cause__
    return re.sub(r"\x1b\[[0-9;]*m", "", first_line(error))  # no terminal colours in a one-line error


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Hide ``name``'s records below errors (the exporter lists the optional operator sets it skips)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# ------------------------------------------------------------------------------------------ running
class OnnxEncoder:
    """An exported encoder on ONNX Runtime: ``embed_tokens(rows)`` as :meth:`SentenceEncoder.embed_tokens`.

    ``threads``: ONNX Runtime's intra-op threads (default: one per usable core, as PyTorch takes).
    """

    def __init__(self, folder: str | os.PathLike, *, threads: int | None = None):
        self.folder = Path(folder)
        try:
            settings = json.loads((self.folder / CONFIG_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise CsekitError(f"{self.folder} is not an ONNX export of csekit ({CONFIG_FILE}: {error})") from None
        if settings.get("format") != FORMAT:
            raise CsekitError(f"{self.folder}: ONNX export format {settings.get('format')!r}, this csekit reads "
                              f"{FORMAT}: export the encoder again")  # fmt: skip
        self.settings = settings
        self.normalize: bool = settings["normalize"]
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or usable_cores()
        options.inter_op_num_threads = 1  # one graph at a time: parallel branches would share the same cores
        options.log_severity_level = 3  # warnings about unused initializers and the like are not the user's
        try:
            self.session = ort.InferenceSession(str(self.folder / MODEL_FILE), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # a missing or corrupt model file
            raise CsekitError(f"cannot load the ONNX model in {self.folder}: {first_line(error)}") from None
        self.input_names = [node.name for node in self.session.get_inputs()]

    @property
    def embedding_dim(self) -> int:
        return self.settings["embedding_dim"]

    @property
    def pad_token_id(self) -> int:
        return self.settings["pad_token_id"]

    def embed_tokens(self, rows: Sequence[dict[str, Sequence[int]]], *, normalize: bool | None = None) -> np.ndarray:
        """(B, H) float32 embeddings of tokenized rows (:meth:`SentenceEncoder.inference_tokens`)."""
        normalize = self.normalize if normalize is None else normalize
        if len(rows) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        self._check_rows(rows)
        batch = pad_batch(rows, self.pad_token_id)  # (B, T) each, as the PyTorch path pads
        missing = [name for name in self.input_names if name not in batch]
        if missing:
            raise CsekitError(f"the rows lack {', '.join(missing)}, which this ONNX model takes: tokenize with "
                              "SentenceEncoder.inference_tokens")  # fmt: skip
        (embeddings,) = self.session.run(None, {name: batch[name].numpy() for name in self.input_names})  # (B, H)
        embeddings = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        if normalize:
            embeddings = nn.functional.normalize(embeddings, dim=-1)  # the PyTorch path's own operation
        return embeddings.numpy()

    def _check_rows(self, rows: Sequence[dict[str, Sequence[int]]]) -> None:
        """Refuse rows the graph would read wrongly or fail on obscurely: as the PyTorch path refuses them."""
        longest = max(len(row["input_ids"]) for row in rows)
        if longest > self.settings["max_tokens"]:
            raise CsekitError(f"a row of {longest} tokens is longer than the model's {self.settings['max_tokens']} "
                              "positions: tokenize with SentenceEncoder.inference_tokens")  # fmt: skip
        prompt = self.settings["prompt"]
        if prompt is None:
            return
        for row in rows:
            ids = row["input_ids"]
            if sum(1 for token in ids if token == prompt["mask_token_id"]) != 1 or len(ids) < prompt["length"]:
                raise CsekitError("the mask poolers need every row wrapped in the prompt (one [MASK] each): "
                                  "tokenize with SentenceEncoder.tokenize")  # fmt: skip


# ------------------------------------------------------------------------------------------ cache
def default_cache_dir() -> Path:
    """``onnx/`` in csekit's user cache (``$CSEKIT_CACHE``, default ``~/.cache/csekit``)."""
    return cache_root() / "onnx"


def onnx_encoder(
    encoder: SentenceEncoder, *, cache_dir: str | os.PathLike | None = None, threads: int | None = None
) -> OnnxEncoder:
    """``encoder`` on ONNX Runtime: exported into ``cache_dir/<fingerprint>/`` the first time, loaded from
    there after; ``normalize`` follows the encoder's."""
    check_exportable(encoder)
    folder = Path(cache_dir or default_cache_dir()) / fingerprint(encoder)
    if not (folder / CONFIG_FILE).is_file():
        export_onnx(encoder, folder)
    loaded = OnnxEncoder(folder, threads=threads)
    loaded.normalize = encoder.normalize
    return loaded
