"""Poolers: a module that turns the backbone's token states into one vector per sentence.

The contract (:class:`Pooler`): ``forward(outputs, inputs, backbone) -> (B, H)`` over the backbone's
outputs for the tokenized ``inputs``; class attributes saying which outputs it reads
(``needs_hidden_states``, ``needs_attentions``); ``config()`` (its settings, saved in the model
folder) and ``create(settings, ...)`` (built back from them, checked against the model);
``tokenize`` (how a sentence becomes token ids, for poolers that wrap it in a template) and
``stock_modules`` (the stock sentence-transformers modules that compute it, or None when none can).

Every pooler joins :data:`POOLERS` under its ``name``, the name the CLI and recipes use. The
SimCSE poolers (Gao et al. 2021, Sec. 6.3 and ``simcse/models.py::Pooler``) live here:

- ``cls``: the [CLS] state, through SimCSE's MLP head (dense + tanh), which the encoder adds;
- ``cls_before_pooler``: the [CLS] state as it is;
- ``mean``: mean of the last layer over real tokens (SimCSE's ``avg``);
- ``max``: element-wise max of the last layer over real tokens;
- ``first_last_avg``: mean over tokens of (first layer + last layer) / 2, where the first layer is
  the output of the first transformer block, ``hidden_states[1]``, as in SimCSE's evaluation;
- ``last2avg``: mean over tokens of (last two layers) / 2 (SimCSE's ``avg_top2``).

For decoders (:mod:`csekit.models.decoder`): ``last_token``, the state of each row's last real token, and
``mean`` both read ``hidden_states[layer]`` (``layer``: 0 = the embedding output, ``L`` or -1 = the last
layer, the model's final output; negative indices count from the end).

PromptBERT's ``mask`` and ``mask_denoised`` are in :mod:`csekit.models.prompt`; the decoder prompt poolers
(PromptEOL, MetaEOL, echo, contrastive prompting) in :mod:`csekit.models.eol`, :mod:`csekit.models.echo` and
:mod:`csekit.models.contrastive_prompting`; the training-free poolers (WhiteningBERT's layer sets, Ditto)
register from :mod:`csekit.postprocess`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from csekit.errors import CsekitError

_ST = "sentence_transformers.models."


@dataclass
class StockModule:
    """One entry of a saved folder's ``modules.json`` that stock sentence-transformers loads."""

    kind: str  # the sentence-transformers class name, also the folder's suffix (``2_Dense``)
    config: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Tensor] | None = None
    type: str = ""  # dotted class path; default ``sentence_transformers.models.<kind>``

    @property
    def class_path(self) -> str:
        return self.type or _ST + self.kind


def masked_mean(token_states: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T, H) states, (B, T) mask -> (B, H) mean over the real tokens."""
    mask = attention_mask.unsqueeze(-1).to(token_states.dtype)  # (B, T, 1)
    summed = (token_states * mask).sum(dim=1)  # (B, H)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


def last_token_states(token_states: Tensor, attention_mask: Tensor) -> Tensor:
    """(B, T, H) states, (B, T) mask -> (B, H) the state of each row's last real token (padding on either side)."""
    last = attention_mask.shape[1] - 1 - (attention_mask != 0).int().flip(1).argmax(dim=1)  # (B,)
    return token_states[torch.arange(token_states.shape[0], device=token_states.device), last]


def check_layer(layer: int, num_layers: int, what: str = "layer") -> int:
    """``layer`` as an index into ``hidden_states`` (0..L), negative ones counting from the end; else a one-line error."""
    if not -(num_layers + 1) <= layer <= num_layers:
        raise CsekitError(f"{what} {layer} is out of range: the model has hidden states 0..{num_layers} "
                          f"(or -{num_layers + 1}..-1 from the end)")  # fmt: skip
    return layer


def layer_states(outputs, layer: int) -> Tensor:
    """(B, T, H) ``hidden_states[layer]``; the last layer is the model's final output (after its final norm)."""
    return outputs.last_hidden_state if layer == -1 else outputs.hidden_states[layer]


def mean_of_layers(hidden_states: Sequence[Tensor], layers: Sequence[int]) -> Tensor:
    """The average of ``hidden_states[i]`` for i in ``layers``: (B, T, H)."""
    return torch.stack([hidden_states[i] for i in layers]).mean(dim=0)  # (len(layers), B, T, H) -> (B, T, H)


class Pooler(nn.Module):
    """(backbone outputs of tokenized sentences) -> (B, H) sentence embeddings."""

    #: The registry name (``--pooler``, ``pooler:`` in recipes, ``csekit_config.json``).
    name: ClassVar[str]
    #: The backbone outputs it reads besides the last layer.
    needs_hidden_states: ClassVar[bool] = False
    needs_attentions: ClassVar[bool] = False
    #: Whether the encoder puts SimCSE's MLP head (dense + tanh) after it (``cls``).
    wants_head: ClassVar[bool] = False
    #: Whether it needs a decoder backbone (a prompt read off at the last token of a causal LM).
    for_decoders: ClassVar[bool] = False
    #: Fields its ``tokenize`` adds to the tokenizer's own (decoder prompt poolers mark prompt tokens in
    #: ``token_type_ids``, which decoders do not read).
    input_fields: ClassVar[tuple[str, ...]] = ()
    #: Whether it runs the backbone itself (several prompts per sentence, steering): then the encoder calls
    #: :meth:`embed` instead of running the backbone and calling ``forward``.
    runs_backbone: ClassVar[bool] = False

    @classmethod
    def create(cls, settings: Mapping[str, Any], *, config, tokenizer) -> Pooler:
        """The pooler with saved ``settings`` (what :meth:`config` returned), checked against the model's
        ``config`` (a transformers ``PretrainedConfig``); ``tokenizer`` for poolers that tokenize."""
        try:
            pooler = cls(**settings)
        except TypeError as error:
            raise CsekitError(f"pooler {cls.name!r}: settings {dict(settings)} are not valid ({error})") from None
        pooler.check(config)
        return pooler

    def check(self, config) -> None:
        """Refuse settings the model cannot satisfy (a layer it lacks); a one-line CsekitError."""

    def config(self) -> dict[str, Any]:
        """Settings beyond the name, JSON-ready: ``create(config())`` rebuilds this pooler."""
        return {}

    def tokenize(self, tokenizer, texts: Sequence[str], *, max_length: int, fields: Sequence[str]) -> dict[str, list]:
        """Unpadded token ids (and masks) of each text, truncated to ``max_length``."""
        encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
        return {key: encoded[key] for key in fields if key in encoded}

    def inference_texts(self, texts: Sequence[str]) -> list[str]:
        """Texts as inference sees them (PromptBERT's test protocol ends each with a period); training
        data is tokenized as it is."""
        return list(texts)

    def forward(self, outputs, inputs: Mapping[str, Tensor], backbone: nn.Module) -> Tensor:
        raise NotImplementedError

    def embed(self, backbone: nn.Module, run: Callable[..., tuple[Any, dict[str, Tensor]]],
              inputs: Mapping[str, Tensor]) -> Tensor:  # fmt: skip
        """(B, H) embeddings of the tokenized ``inputs`` for a pooler that ``runs_backbone``; ``run(inputs,
        output_hidden_states=...)`` runs the backbone as the encoder does and returns its outputs and the
        inputs they align with (left-padded for a decoder)."""
        raise NotImplementedError

    def stock_modules(self, hidden_size: int, num_layers: int) -> list[StockModule] | None:
        """The stock modules that follow a ``Transformer`` to compute this pooler, or None (no stock module
        can: the saved folder then names csekit's own input module, see :mod:`csekit.models.st_module`)."""
        return None

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.config().items())


def _pooling(hidden_size: int, mode: str) -> StockModule:
    return StockModule("Pooling", {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
        **({"pooling_mode_lasttoken": True} if mode == "lasttoken" else {}),
    })  # fmt: skip


class CLSBeforePooler(Pooler):
    name = "cls_before_pooler"

    def forward(self, outputs, inputs: Mapping[str, Tensor], backbone: nn.Module) -> Tensor:
        return outputs.last_hidden_state[:, 0]  # (B, H)

    def stock_modules(self, hidden_size: int, num_layers: int) -> list[StockModule]:
        return [_pooling(hidden_size, "cls")]


class CLSPooler(CLSBeforePooler):
    """The [CLS] state; the encoder adds the MLP head after it."""

    name = "cls"
    wants_head = True


class LayerChoice(Pooler):
    """A pooler over one layer's token states, ``hidden_states[layer]`` (default -1: the last layer)."""

    def __init__(self, *, layer: int = -1):
        super().__init__()
        self.layer = int(layer)
        self.needs_hidden_states = self.layer != -1

    def check(self, config) -> None:
        check_layer(self.layer, config.num_hidden_layers)

    def config(self) -> dict[str, Any]:
        return {} if self.layer == -1 else {"layer": self.layer}


class MeanPooler(LayerChoice):
    name = "mean"

    def forward(self, outputs, inputs: Mapping[str, Tensor], backbone: nn.Module) -> Tensor:
        return masked_mean(layer_states(outputs, self.layer), inputs["attention_mask"])  # (B, H)

    def stock_modules(self, hidden_size: int, num_layers: int) -> list[StockModule] | None:
        return [_pooling(hidden_size, "mean")] if self.layer == -1 else None


class LastTokenPooler(LayerChoice):
    """The state of each row's last real token: for a decoder, the one token that has seen the whole sentence."""

    name = "last_token"

    def forward(self, outputs, inputs: Mapping[str, Tensor], backbone: nn.Module) -> Tensor:
        return last_token_states(layer_states(outputs, self.layer), inputs["attention_mask"])  # (B, H)

    def stock_modules(self, hidden_size: int, num_layers: int) -> list[StockModule] | None:
        return [_pooling(hidden_size, "lasttoken")] if self.layer == -1 else None


class MaxPooler(Pooler):
    name = "max"

    def forward(self, outputs, inputs: Mapping[str, Tensor], backbone: nn.Module) -> Tensor:
        padding = inputs["attention_mask"].unsqueeze(-1) == 0  # (B, T, 1)
        return outputs.last_hidden_state.masked_fill(padding, float("-inf")).max(dim=1).values  # (B, H)

    def stock_modules(self, hidden_size: int, num_layers: int) -> list[StockModule]:
        return [_pooling(hidden_size, "max")]


class LayerAveragePooler(Pooler):
    """Mean over tokens of the average of some hidden states (0 = embedding output, L = last layer)."""

    needs_hidden_states = True

    def averaged_layers(self, num_layers: int) -> tuple[int, ...]:
        raise NotImplementedError

    def forward(self, outputs, inputs: Mapping[str, Tensor], backbone: nn.Module) -> Tensor:
        layers = self.averaged_layers(len(outputs.hidden_states) - 1)
        return masked_mean(mean_of_layers(outputs.hidden_states, layers), inputs["attention_mask"])  # (B, H)

    def stock_modules(self, hidden_size: int, num_layers: int) -> list[StockModule]:
        # WeightedLayerPooling's equal 0/1 weights over the layers from the lowest chosen one on.
        layers = self.averaged_layers(num_layers)
        start = min(layers)
        weights = torch.tensor([1.0 if i in layers else 0.0 for i in range(start, num_layers + 1)])
        config = {"word_embedding_dimension": hidden_size, "layer_start": start, "num_hidden_layers": num_layers}
        return [StockModule("WeightedLayerPooling", config, {"layer_weights": weights}), _pooling(hidden_size, "mean")]


class FirstLastAvgPooler(LayerAveragePooler):
    name = "first_last_avg"

    def averaged_layers(self, num_layers: int) -> tuple[int, ...]:
        return (1, num_layers)


class Last2AvgPooler(LayerAveragePooler):
    name = "last2avg"

    def averaged_layers(self, num_layers: int) -> tuple[int, ...]:
        return (num_layers - 1, num_layers)


#: Name -> pooler class. Poolers of other packages join with :func:`register_pooler`.
POOLERS: dict[str, type[Pooler]] = {}


def register_pooler(cls: type[Pooler]) -> type[Pooler]:
    """Add ``cls`` to :data:`POOLERS` under its ``name`` (usable as a class decorator)."""
    if POOLERS.get(cls.name, cls) is not cls:
        raise ValueError(f"two poolers are named {cls.name!r}: {POOLERS[cls.name].__name__} and {cls.__name__}")
    POOLERS[cls.name] = cls
    return cls


for _pooler in (CLSPooler, CLSBeforePooler, MeanPooler, MaxPooler, FirstLastAvgPooler, Last2AvgPooler, LastTokenPooler):
    register_pooler(_pooler)


def check_pooler(name: str) -> str:
    """``name`` if a pooler is registered under it, else a one-line error listing the choices."""
    if name not in POOLERS:
        raise CsekitError(f"unknown pooler {name!r}; choose one of {', '.join(POOLERS)}")
    return name


def build_pooler(name: str, *, config, tokenizer, settings: Mapping[str, Any] | None = None) -> Pooler:
    """The pooler registered as ``name`` with ``settings`` (its defaults when None), for this model."""
    return POOLERS[check_pooler(name)].create(settings or {}, config=config, tokenizer=tokenizer)
