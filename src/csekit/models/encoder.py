"""SentenceEncoder: a Hugging Face encoder + a pooler (+ an optional MLP head).

The head is SimCSE's ``MLPLayer`` (dense + tanh over the [CLS] state, Gao et al. 2021, Sec. 3).
With ``head_at_inference=False`` it is used only while training (SimCSE's ``mlp_only_train``,
the setting of unsupervised SimCSE) and dropped when the model is saved.

The ``mask`` poolers wrap each sentence in a prompt template at tokenization and pool the [MASK]
token's state (PromptBERT, see :mod:`csekit.models.prompt`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from csekit.data.collate import pad_batch
from csekit.errors import CsekitError
from csekit.models.pooling import NEEDS_HIDDEN_STATES, PROMPT_POOLERS, check_pooler, pool
from csekit.models.prompt import DEFAULT_TEMPLATE, Prompt

#: encode() shows a progress bar by default only when there are more sentences than this.
PROGRESS_THRESHOLD = 10_000


class MLPHead(nn.Module):
    """Dense + tanh, the shape of BERT's pooler and SimCSE's ``MLPLayer``."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, features: Tensor) -> Tensor:
        return self.activation(self.dense(features))


class SentenceEncoder(nn.Module):
    """Text -> (B, H) sentence embeddings.

    ``forward`` takes tokenized tensors (the training path); ``encode`` takes strings and returns a
    float32 numpy array in the caller's order (the inference path).
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        pooler: str = "cls",
        head: MLPHead | None = None,
        head_at_inference: bool = True,
        max_length: int | None = None,
        normalize: bool = False,
        prompt: Prompt | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.pooler = check_pooler(pooler)
        if pooler == "cls" and head is None:
            head = MLPHead(backbone.config.hidden_size)
            _init_like_backbone(head, backbone)
        if pooler != "cls" and head is not None:
            raise ValueError(f"an MLP head goes with the 'cls' pooler, not {pooler!r}")
        if pooler in PROMPT_POOLERS and prompt is None:
            prompt = Prompt.from_template(DEFAULT_TEMPLATE, tokenizer)
        if pooler not in PROMPT_POOLERS and prompt is not None:
            raise ValueError(f"a prompt goes with the {' and '.join(sorted(PROMPT_POOLERS))} poolers, not {pooler!r}")
        #: The template around each sentence for the mask poolers (csekit.models.prompt), else None.
        self.prompt = prompt
        self.head = head
        self.head_at_inference = head_at_inference
        self.max_length = max_length or _default_max_length(backbone, tokenizer)
        self.normalize = normalize
        #: Set by csekit.postprocess: a module that pools in place of ``pooler`` (layer means, Ditto), whose
        #: name ``pooler`` then holds; and a fitted affine map after pooling and head (BERT-whitening).
        self.token_pooler: nn.Module | None = None
        self.whitening: nn.Linear | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        pooler: str = "cls",
        head_at_inference: bool = True,
        max_length: int | None = None,
        **hf_kwargs,
    ) -> SentenceEncoder:
        """Wrap a Hugging Face encoder (a local folder or a hub id).

        For ``pooler="cls"`` the head starts from the checkpoint's own pooler (BERT's dense + tanh,
        what SimCSE's evaluation calls ``cls`` for a raw model) when the checkpoint has one, and from
        a fresh initialisation otherwise.
        """
        check_model_reference(name_or_path)
        check_pooler(pooler)
        try:
            with _quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(name_or_path)
                backbone, info = AutoModel.from_pretrained(name_or_path, output_loading_info=True, **hf_kwargs)
        except OSError as error:
            raise CsekitError(f"cannot load model {name_or_path!r}: {_first_line(error)}") from None
        pretrained_pooler = _detach_pooler(backbone, info)
        head = None  # __init__ gives the ``cls`` pooler a fresh head when none is pretrained
        if pooler == "cls" and pretrained_pooler is not None:
            head = MLPHead(backbone.config.hidden_size)
            head.dense.load_state_dict(pretrained_pooler.dense.state_dict())
        return cls(
            backbone,
            tokenizer,
            pooler=pooler,
            head=head,
            head_at_inference=head_at_inference,
            max_length=max_length,
        )

    # ------------------------------------------------------------------ training path
    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """(B, T) token ids -> (B, H) embeddings (not normalized; losses normalize themselves)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        custom = self.token_pooler
        outputs = self.backbone(
            **inputs,
            output_hidden_states=self.pooler in NEEDS_HIDDEN_STATES or getattr(custom, "needs_hidden_states", False),
            output_attentions=getattr(custom, "needs_attentions", False),
            return_dict=True,
        )
        if custom is not None:
            embeddings = custom(outputs, attention_mask)
        elif self.prompt is not None:  # the template's [MASK] state, minus the template alone's if denoised
            embeddings = self.prompt.pool(self.backbone, outputs.last_hidden_state, input_ids, attention_mask,
                                          denoise=self.pooler == "mask_denoised")  # fmt: skip
        else:
            embeddings = pool(self.pooler, outputs.last_hidden_state, outputs.hidden_states, attention_mask)
        if self.head is not None and (self.training or self.head_at_inference):
            embeddings = self.head(embeddings)
        if self.whitening is not None:
            embeddings = self.whitening(embeddings)  # (B, H) -> (B, k)
        return embeddings  # (B, H), or (B, k) when whitened

    def tokenize(self, texts: Sequence[str], *, max_length: int | None = None) -> dict[str, list[list[int]]]:
        """Unpadded token ids (and masks) for each text, truncated to ``max_length``."""
        if self.prompt is not None:  # wrapped in the template; truncation cuts the sentence only
            return self.prompt.tokenize(self.tokenizer, texts, max_length=max_length or self.max_length,
                                        fields=self.model_input_names)  # fmt: skip
        encoded = self.tokenizer(
            list(texts), truncation=True, max_length=max_length or self.max_length, padding=False
        )
        return {key: encoded[key] for key in self.model_input_names if key in encoded}

    @property
    def model_input_names(self) -> list[str]:
        return [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in self.tokenizer.model_input_names]

    # ------------------------------------------------------------------ inference path
    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        normalize: bool | None = None,
        show_progress: bool | None = None,
        max_length: int | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` -> float32 array (N, H) in the caller's order.

        Texts are tokenized once, sorted longest first and padded per batch, so padding is small and
        an out-of-memory error, if any, comes at the first batch.
        """
        if isinstance(texts, str):
            raise TypeError("encode() takes a list of texts; wrap a single string in a list")
        normalize = self.normalize if normalize is None else normalize
        if len(texts) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        tokens = self.tokenize(texts, max_length=max_length)
        order = sorted(range(len(texts)), key=lambda i: -len(tokens["input_ids"][i]))
        pad_id = self.tokenizer.pad_token_id or 0
        show_progress = len(texts) > PROGRESS_THRESHOLD if show_progress is None else show_progress
        was_training = self.training
        self.eval()
        device = self.device
        output = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        try:
            starts = range(0, len(order), batch_size)
            for start in tqdm(starts, desc="encode", disable=not show_progress, unit="batch"):
                indices = order[start : start + batch_size]
                batch = pad_batch([{key: tokens[key][i] for key in tokens} for i in indices], pad_id)
                embeddings = self(**{key: value.to(device) for key, value in batch.items()}).float()
                if normalize:
                    embeddings = nn.functional.normalize(embeddings, dim=-1)
                output[indices] = embeddings.cpu().numpy()
        finally:
            self.train(was_training)
        return output

    # ------------------------------------------------------------------ facts
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def embedding_dim(self) -> int:
        return self.whitening.out_features if self.whitening is not None else self.backbone.config.hidden_size

    def save(self, path: str | os.PathLike) -> None:
        """Save as a sentence-transformers folder (see :mod:`csekit.models.io`)."""
        from csekit.models.io import save_encoder

        save_encoder(self, path)


def check_model_reference(name_or_path: str) -> None:
    """Refuse a path-like reference to a folder that does not exist, before the hub is asked."""
    if os.path.exists(name_or_path):
        if not os.path.isdir(name_or_path):
            raise CsekitError(f"model path {name_or_path!r} is a file; give the model's folder")
        return
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    if looks_like_path or not name_or_path.strip():
        raise CsekitError(
            f"model folder {name_or_path!r} does not exist (give a local folder or a Hugging Face hub id)"
        )


def _detach_pooler(backbone: PreTrainedModel, loading_info: dict) -> nn.Module | None:
    """Remove the backbone's own pooler (the encoder pools itself); return it if it was pretrained."""
    pretrained_pooler = getattr(backbone, "pooler", None)
    if not isinstance(pretrained_pooler, nn.Module):
        return None
    backbone.pooler = None  # its output is unused; keeping it would waste compute and confuse DDP
    missing = loading_info.get("missing_keys", []) if loading_info else []
    if any("pooler" in key for key in missing) or not hasattr(pretrained_pooler, "dense"):
        return None
    return pretrained_pooler


def _init_like_backbone(module: nn.Module, backbone: PreTrainedModel) -> None:
    std = getattr(backbone.config, "initializer_range", 0.02)
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, mean=0.0, std=std)
            nn.init.zeros_(layer.bias)


def _default_max_length(backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    limits = [getattr(backbone.config, "max_position_embeddings", 512), 512]
    if tokenizer.model_max_length and tokenizer.model_max_length < 100_000:
        limits.append(tokenizer.model_max_length)
    return min(limits)


@contextmanager
def _quiet_transformers():
    """Hide the load report: an MLM checkpoint loaded as an encoder always has unused head weights."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
