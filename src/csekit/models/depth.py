"""A model used smaller than it was trained: a prefix of its dimensions, the first k of its layers.

Matryoshka-trained models (Kusupati et al. 2022) keep most of their quality in a prefix of each embedding;
2D Matryoshka and Starbucks models (Li et al. 2024; Zhuang et al. 2024) also in their shallower layers.

- A prefix is the encoder's ``truncate_dim``: the first d numbers of each embedding (renormalised where the
  model normalises). sentence-transformers reads the same setting from ``config_sentence_transformers.json``.
- k layers are a backbone cut to its first k transformer blocks (:func:`cut_backbone`): the saved folder is
  an ordinary, smaller Hugging Face model that stock ``SentenceTransformer(path)`` loads as it is. For BERT-like
  encoders its last hidden state is the full model's ``hidden_states[k]``, which is what training at layer k
  pools (:func:`outputs_at_layer`).
- :class:`LayerTap` lets an objective see, for every forward pass of the encoder, the embedding each chosen
  layer gives (record), and then re-run the objective's own code with one layer's embeddings in place of the
  last layer's (replay), without running the backbone again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

from csekit.errors import CsekitError


def check_dim(dim: int, width: int, *, what: str = "dim") -> int:
    """``dim`` if it is a usable prefix of a ``width``-wide embedding, else a one-line error naming the range."""
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= width:
        raise CsekitError(f"{what} {dim!r} is outside 1..{width}, the model's embedding width")
    return dim


def check_layer(layer: int, num_layers: int, *, what: str = "layer") -> int:
    """``layer`` if the backbone has it (1 = the first transformer block), else a one-line error naming the range."""
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= num_layers:
        raise CsekitError(f"{what} {layer!r} is outside 1..{num_layers}, the model's transformer layers")
    return layer


def layer_stack(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's list of transformer blocks (``encoder.layer`` in BERT, RoBERTa, ELECTRA, ...)."""
    stack = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not isinstance(stack, nn.ModuleList):
        raise CsekitError(f"{type(backbone).__name__} keeps no encoder.layer list: csekit cannot use it at fewer layers")
    return stack


def cut_backbone(backbone: nn.Module, layers: int) -> None:
    """Keep the first ``layers`` transformer blocks of ``backbone`` (in place; its config says so too)."""
    stack = layer_stack(backbone)
    check_layer(layers, len(stack), what="layers")
    backbone.encoder.layer = nn.ModuleList(list(stack)[:layers])
    backbone.config.num_hidden_layers = layers


def outputs_at_layer(outputs, layer: int) -> BaseModelOutput:
    """The backbone's outputs as a model cut to ``layer`` blocks would return them (hidden states needed)."""
    hidden = outputs.hidden_states  # (L + 1) x (B, T, H): the embedding output, then each block's
    attentions = outputs.attentions[:layer] if outputs.attentions is not None else None
    return BaseModelOutput(last_hidden_state=hidden[layer], hidden_states=hidden[: layer + 1], attentions=attentions)


@dataclass
class LayerTap:
    """Per forward pass of the encoder, the (N, H) embedding of each of ``layers``; then their replay.

    While recording, each pass appends ``{layer: embedding}``; while replaying ``layer``, the encoder's
    passes return, in order, what that layer gave in the recorded passes, and run nothing.
    """

    layers: Sequence[int]
    recorded: list[dict[int, Tensor]] = field(default_factory=list)
    replaying: int | None = None
    position: int = 0

    def record(self, embeddings: dict[int, Tensor]) -> None:
        self.recorded.append(embeddings)

    def start_replay(self, layer: int) -> None:
        self.replaying, self.position = layer, 0

    def replay(self) -> Tensor:
        if self.position >= len(self.recorded):
            raise RuntimeError("the replay ran more encoder passes than were recorded: embed() is not deterministic")
        embedding = self.recorded[self.position][self.replaying]
        self.position += 1
        return embedding

    def finish_replay(self) -> None:
        if self.position != len(self.recorded):
            raise RuntimeError(f"the replay ran {self.position} of {len(self.recorded)} recorded encoder passes")
        self.replaying = None
