"""SentenceEncoder: a Hugging Face backbone + a pooler (+ an optional head) + output modules.

    text -> pooler.tokenize -> backbone -> pooler -> [head] -> [output modules] -> [normalize]

- the pooler (:mod:`csekit.models.pooling`) reads the backbone's outputs; prompt poolers also decide
  how a sentence becomes token ids;
- the head is SimCSE's ``MLPLayer`` (dense + tanh over the [CLS] state, Gao et al. 2021, Sec. 3) for the
  ``cls`` pooler, or an objective's own training head (DiffCSE's projector). With
  ``head_at_inference=False`` it is used only while training (SimCSE's ``mlp_only_train``, the setting of
  unsupervised SimCSE) and dropped when the model is saved;
- a deep prefix (:mod:`csekit.models.prefix`, PromCSE's soft prompt) adds trained keys and values in
  every attention layer of the backbone, when one is set (:meth:`SentenceEncoder.set_prefix`);
- output modules are fitted or learned maps after the head (BERT-whitening's :class:`AffineMap`);
- ``truncate_dim`` keeps a prefix of each embedding (a Matryoshka model used smaller, :mod:`csekit.models.depth`),
  after the output modules and before ``normalize``;
- ``normalize`` makes ``encode`` return unit rows (a saved ``Normalize`` module).

A decoder (a causal LM's base model, :mod:`csekit.models.decoder`) runs on left-padded rows whatever the
caller padded, and its tokenizer pads with the end-of-sequence token where it has no padding token.

The stages change only through :meth:`SentenceEncoder.set_pooler`, :meth:`set_head` and
:meth:`set_outputs`, which keep them consistent (a head only where the pooler takes one; the attention
implementation a pooler needs).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from csekit.data.collate import pad_batch
from csekit.errors import CsekitError, CsekitNote
from csekit.models.decoder import decoder_forward, is_decoder, prepare_tokenizer, split_reference
from csekit.models.depth import LayerTap, check_dim, cut_backbone, outputs_at_layer
from csekit.models.lora import adapter_base, load_adapter
from csekit.models.modules import MLPHead
from csekit.models.packing import packed_forward
from csekit.models.pooling import Pooler, build_pooler, check_pooler
from csekit.models.prefix import DeepPrefix
from csekit.models.saving import SavedHead, save_encoder

#: encode() shows a progress bar by default only when there are more sentences than this.
PROGRESS_THRESHOLD = 10_000


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
        pooler: str | Pooler = "cls",
        head: nn.Module | None = None,
        head_at_inference: bool = True,
        max_length: int | None = None,
        normalize: bool = False,
        outputs: Sequence[nn.Module] = (),
    ):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.is_decoder = is_decoder(backbone)
        if self.is_decoder:
            prepare_tokenizer(tokenizer)
        self.head: nn.Module | None = None
        self.set_pooler(pooler, head=head)  # checks the pooler, and sets the head it takes
        self.head_at_inference = head_at_inference
        self.outputs = nn.ModuleList(outputs)
        self.max_length = max_length or _default_max_length(backbone, tokenizer)
        self.normalize = normalize
        self.row_tokens: int | None = None  # set by pack(): the backbone runs on packed rows of this many tokens
        self.truncate_dim: int | None = None
        self.layer_tap: LayerTap | None = None  # set only while an objective trains shallower layers
        self.prefix: DeepPrefix | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        pooler: str | None = None,
        pooler_settings: dict | None = None,
        head_at_inference: bool = True,
        max_length: int | None = None,
        pretrained_head: bool = True,
        **hf_kwargs,
    ) -> SentenceEncoder:
        """Wrap a Hugging Face encoder or decoder (a local folder, a hub id, or ``FOLDER#gguf=FILE``);
        ``pooler`` by default ``cls`` for an encoder and ``last_token`` for a decoder; ``pooler_settings`` as
        the pooler's ``config()`` returns them (a prompt's template), its defaults when None.

        For ``pooler="cls"`` the head starts from the checkpoint's own pooler (BERT's dense + tanh, what
        SimCSE's evaluation calls ``cls`` for a raw model) when the checkpoint has one and
        ``pretrained_head`` is set, and from a fresh initialisation otherwise (SimCSE's training).
        """
        folder, gguf_file = split_reference(name_or_path)
        check_model_reference(folder)
        if pooler is not None:
            check_pooler(pooler)  # before the download
        base = adapter_base(folder)  # a LoRA adapter folder: its backbone is the base model it names + the adapters
        weights, gguf_file = split_reference(base) if base else (folder, gguf_file)
        if gguf_file is None or base is not None:
            check_model_files(folder, adapter=base is not None)
        if gguf_file is not None:
            hf_kwargs["gguf_file"] = gguf_file
        try:
            with quiet_transformers():
                own_tokenizer = {"gguf_file": gguf_file} if gguf_file and base is None else {}  # an adapter folder has its own
                tokenizer = AutoTokenizer.from_pretrained(folder, **own_tokenizer)
                backbone, info = AutoModel.from_pretrained(weights, output_loading_info=True, **hf_kwargs)
        except Exception as error:  # OSError, a truncated safetensors file, a config transformers cannot read, ...
            raise CsekitError(f"cannot load model {name_or_path!r}: {first_line(error)}") from None
        if gguf_file is not None:  # de-quantized to float32: saved, it is a plain checkpoint
            backbone.config.__dict__.pop("quantization_config", None)
            backbone.hf_quantizer = None
        if pooler is None:
            pooler = "last_token" if is_decoder(backbone) else "cls"
        vocabulary, rows = len(tokenizer), backbone.get_input_embeddings().num_embeddings
        if vocabulary < rows / 2:
            raise CsekitError(f"{name_or_path}: its tokenizer has {vocabulary} tokens for {rows} embedding rows: they "
                              "do not belong together (were the tokenizer files copied with the model?)")  # fmt: skip
        pretrained_pooler = _detach_pooler(backbone, info)
        if base is not None:
            backbone = load_adapter(backbone, folder)
        if isinstance(pooler, str):
            pooler = build_pooler(pooler, config=backbone.config, tokenizer=tokenizer, settings=pooler_settings)
        head = None  # set_pooler gives a pooler that wants a head a fresh one
        if pooler.wants_head and pretrained_head:  # SimCSE's evaluation: the checkpoint's own pooler
            head = MLPHead(backbone.config.hidden_size)
            if pretrained_pooler is not None:
                head.dense.load_state_dict(pretrained_pooler.dense.state_dict())
            else:  # none to read: a fresh head, the same one every time, so every evaluation agrees
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(0)
                    head.reset_parameters(getattr(backbone.config, "initializer_range", 0.02))
                warnings.warn(f"{name_or_path} has no pretrained pooler: the cls head is a fresh dense + tanh layer "
                              "(seeded, the same in every evaluation); --pooler cls_before_pooler or mean pool "
                              "without it", CsekitNote, stacklevel=2)  # fmt: skip
        return cls(backbone, tokenizer, pooler=pooler, head=head, head_at_inference=head_at_inference,
                   max_length=max_length)  # fmt: skip

    # ------------------------------------------------------------------ stages
    def set_pooler(self, pooler: str | Pooler, *, head: nn.Module | None = None) -> SentenceEncoder:
        """Pool with ``pooler`` (a registered name or a Pooler) from now on.

        A pooler that takes a head gets ``head``, or the one the encoder has, or a fresh MLP head; any
        other pooler drops the head (``head`` must then be None). A pooler that reads attention weights
        switches the backbone to the eager attention implementation, the only one that returns them.
        """
        config = self.backbone.config
        if isinstance(pooler, str):
            pooler = build_pooler(pooler, config=config, tokenizer=self.tokenizer)
        else:
            pooler.check(config)
        if head is not None and not pooler.wants_head:
            raise CsekitError(f"a head goes with the cls pooler, not {pooler.name!r}")
        if pooler.for_decoders and not self.is_decoder:
            raise CsekitError(f"pooler {pooler.name!r} reads a causal language model's last token: give it a decoder "
                              f"backbone, not {type(self.backbone).__name__}")  # fmt: skip
        if pooler.needs_attentions and getattr(config, "_attn_implementation", "eager") != "eager":
            try:
                self.backbone.set_attn_implementation("eager")
            except (AttributeError, ValueError) as error:
                raise CsekitError(f"pooler {pooler.name!r} needs attention weights, which this model cannot "
                                  f"return: {error}") from None  # fmt: skip
        device = next(self.backbone.parameters()).device
        self.pooler = pooler.to(device)
        if pooler.wants_head:
            if head is None:
                head = self.head
            if head is None:
                std = getattr(config, "initializer_range", 0.02)  # as BERT initialises a new layer
                head = MLPHead(config.hidden_size).reset_parameters(std)
            self.head = head.to(device)
        else:
            self.head = None
        return self

    def set_head(self, head: nn.Module, *, at_inference: bool) -> SentenceEncoder:
        """Replace the pooler's head (an objective's training head, e.g. DiffCSE's projector)."""
        if not self.pooler.wants_head:
            raise CsekitError(f"a head goes with the cls pooler, not {self.pooler.name!r}")
        self.head = head.to(next(self.backbone.parameters()).device)
        self.head_at_inference = at_inference
        return self

    def set_outputs(self, modules: Sequence[nn.Module]) -> SentenceEncoder:
        """The output modules after the head, in order (e.g. a fitted whitening map)."""
        device = next(self.backbone.parameters()).device
        self.outputs = nn.ModuleList([module.to(device) for module in modules])
        return self

    def set_prefix(self, prefix: DeepPrefix | None) -> SentenceEncoder:
        """Prepend ``prefix``'s keys and values in every attention layer from now on (None: no prefix)."""
        if prefix is not None:
            if self.row_tokens or self.pooler.needs_attentions:
                raise CsekitError("a prefix goes with padded batches and poolers that read no attention maps")
            positions = getattr(self.backbone.config, "max_position_embeddings", None)
            if positions is not None:  # the tokens' positions start after the prefix: sentences are cut to fit
                if prefix.length >= positions:
                    raise CsekitError(f"a {prefix.length}-token prefix leaves none of the model's {positions} positions")
                self.max_length = min(self.max_length, positions - prefix.length)
            weight = next(self.backbone.parameters())
            prefix = prefix.to(device=weight.device, dtype=weight.dtype).train(self.training)
        self.prefix = prefix
        return self

    def pack(self, row_tokens: int | None) -> SentenceEncoder:
        """Run the backbone on sentences packed into rows of ``row_tokens`` (:mod:`csekit.models.packing`;
        None: padded batches). Same embeddings; no compute spent on padding."""
        if row_tokens is not None:
            if self.prefix is not None:
                raise CsekitError("a model with a prefix runs on padded batches, not packed rows")
            if self.is_decoder:
                raise CsekitError("packed rows are for encoders: a decoder runs on left-padded rows")
            if self.pooler.needs_attentions:
                raise CsekitError(f"pooler {self.pooler.name!r} reads attention maps, which packed rows do not give")
            if row_tokens < 1:
                raise CsekitError(f"row_tokens must be at least 1, got {row_tokens}")
        self.row_tokens = row_tokens
        return self

    def truncate(self, dim: int | None) -> SentenceEncoder:
        """Keep the first ``dim`` numbers of each embedding from now on (None: all of them)."""
        self.truncate_dim = None
        if dim is not None:
            self.truncate_dim = check_dim(dim, self.embedding_dim)
        return self

    def keep_layers(self, layers: int) -> SentenceEncoder:
        """Cut the backbone to its first ``layers`` transformer blocks (in place; saved so)."""
        cut_backbone(self.backbone, layers)
        return self

    @property
    def num_layers(self) -> int:
        return self.backbone.config.num_hidden_layers

    @property
    def uses_head(self) -> bool:
        """Whether the head runs now: always in training, at inference only if it is kept."""
        return self.head is not None and (self.training or self.head_at_inference)

    # ------------------------------------------------------------------ training path
    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """(B, T) token ids -> (B, H) embeddings (not normalized; losses normalize themselves)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        tap = self.layer_tap
        if tap is not None and tap.replaying is not None:
            return tap.replay()  # (B, H) of a shallower layer, recorded in the same pass
        if self.pooler.runs_backbone:
            if tap is not None:
                raise CsekitError(f"pooler {self.pooler.name!r} runs several backbone passes: it cannot train shallower layers")
            return self.finish(self.pooler.embed(self.backbone, self.run_backbone, inputs))
        hidden_states = self.pooler.needs_hidden_states or tap is not None
        if self.is_decoder:
            outputs, inputs = self.run_backbone(inputs, output_hidden_states=hidden_states)
        elif self.row_tokens:
            outputs = packed_forward(self.backbone, inputs, row_tokens=self.row_tokens,
                                     output_hidden_states=hidden_states)  # fmt: skip
        else:
            prefixed = inputs if self.prefix is None else {**inputs, **self.prefix.backbone_inputs(self.backbone, attention_mask)}
            outputs = self.backbone(**prefixed, output_hidden_states=hidden_states,
                                    output_attentions=self.pooler.needs_attentions, return_dict=True)  # fmt: skip
        if tap is not None:
            tap.record({layer: self.pool(outputs_at_layer(outputs, layer), inputs) for layer in tap.layers})
        return self.pool(outputs, inputs)

    def run_backbone(self, inputs: dict[str, Tensor], *, output_hidden_states: bool) -> tuple[object, dict[str, Tensor]]:
        """The backbone's outputs for tokenized ``inputs`` and the inputs they align with: a decoder's rows
        left-padded, with position ids from their first real token (:func:`~csekit.models.decoder.decoder_forward`)."""
        if self.is_decoder:
            return decoder_forward(self.backbone, inputs, output_hidden_states=output_hidden_states,
                                   output_attentions=self.pooler.needs_attentions)  # fmt: skip
        outputs = self.backbone(**inputs, output_hidden_states=output_hidden_states, return_dict=True)
        return outputs, dict(inputs)

    def pool(self, outputs, inputs: dict[str, Tensor]) -> Tensor:
        """The backbone's outputs -> (B, H) embeddings: pooler, head, output modules, prefix."""
        return self.finish(self.pooler(outputs, inputs, self.backbone))  # (B, H)

    def finish(self, embeddings: Tensor) -> Tensor:
        """(B, H) pooled embeddings -> the head, output modules and prefix after them."""
        if self.uses_head:
            embeddings = self.head(embeddings)
        for module in self.outputs:
            embeddings = module(embeddings)  # (B, H) -> (B, k)
        if self.truncate_dim is not None:
            embeddings = embeddings[:, : self.truncate_dim]  # (B, d)
        return embeddings

    def tokenize(self, texts: Sequence[str], *, max_length: int | None = None) -> dict[str, list[list[int]]]:
        """Unpadded token ids (and masks) for each text, truncated to ``max_length``, as the pooler reads them."""
        return self.pooler.tokenize(self.tokenizer, texts, max_length=max_length or self.max_length,
                                    fields=self.model_input_names)  # fmt: skip

    @property
    def model_input_names(self) -> list[str]:
        names = [*self.tokenizer.model_input_names, *self.pooler.input_fields]
        return [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in names]

    @property
    def pad_token_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

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
        if len(texts) == 0:
            return np.zeros((0, self.embedding_dim), dtype=np.float32)
        rows = self.inference_tokens(texts, max_length=max_length)
        order = sorted(range(len(texts)), key=lambda i: -len(rows[i]["input_ids"]))
        show_progress = len(texts) > PROGRESS_THRESHOLD if show_progress is None else show_progress
        output = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc="encode", disable=not show_progress, unit="batch"):
            indices = order[start : start + batch_size]
            output[indices] = self.embed_tokens([rows[i] for i in indices], normalize=normalize)
        return output

    def inference_tokens(self, texts: Sequence[str], *, max_length: int | None = None) -> list[dict[str, list[int]]]:
        """Each text's token ids (one dict of fields per text) as :meth:`encode` feeds them: in the pooler's
        inference form (a prompt template, PromptBERT's test-time period), truncated to ``max_length``."""
        tokens = self.tokenize(self.pooler.inference_texts(texts), max_length=max_length)
        return [dict(zip(tokens, values)) for values in zip(*tokens.values())]

    @torch.inference_mode()
    def embed_tokens(self, rows: Sequence[dict[str, Sequence[int]]], *, normalize: bool | None = None) -> np.ndarray:
        """(B, H) float32 embeddings of tokenized rows (:meth:`inference_tokens`), padded here to the longest,
        in eval mode whatever the module's mode."""
        normalize = self.normalize if normalize is None else normalize
        batch = pad_batch(rows, self.pad_token_id)  # (B, T) each
        was_training = self.training
        self.eval()
        try:
            embeddings = self(**{key: value.to(self.device) for key, value in batch.items()}).float()  # (B, H)
        finally:
            self.train(was_training)
        if normalize:
            embeddings = nn.functional.normalize(embeddings, dim=-1)
        return embeddings.cpu().numpy()

    # ------------------------------------------------------------------ facts
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def embedding_dim(self) -> int:
        return self.truncate_dim or self.full_dim

    @property
    def full_dim(self) -> int:
        """The width before any truncation."""
        dim = self.backbone.config.hidden_size
        for module in self.outputs:
            dim = getattr(module, "out_features", dim)
        return dim

    def save(self, path: str | os.PathLike, *, heads: Mapping[str, SavedHead] | None = None) -> None:
        """Save as a sentence-transformers folder, with the ``heads`` an objective trained beside it (see
        :mod:`csekit.models.saving`)."""
        save_encoder(self, path, heads=heads)


#: Files one of which a local model folder needs for its tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")  # fmt: skip


def check_model_files(name_or_path: str, *, adapter: bool = False) -> None:
    """A local model folder has its config (an adapter folder: its adapter's) and its tokenizer (an empty or
    half-copied folder is refused)."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        return  # a hub id: the hub says what it lacks
    if not adapter and not (folder / "config.json").is_file():
        raise CsekitError(f"model folder {name_or_path!r} has no config.json (an empty or partly copied folder?)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise CsekitError(f"model folder {name_or_path!r} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...): "
                          "copy them from the model it was made from")  # fmt: skip


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


def _default_max_length(backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    limits = [getattr(backbone.config, "max_position_embeddings", 512), 512]
    if tokenizer.model_max_length and tokenizer.model_max_length < 100_000:
        limits.append(tokenizer.model_max_length)
    return min(limits)


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide the load report: an MLM checkpoint loaded as an encoder always has unused head weights."""
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
