"""Averaging the tokens of a chosen set of layers (WhiteningBERT's layer combinations).

Huang et al., "WhiteningBERT: An Easy Unsupervised Sentence Embedding Approach", Findings of EMNLP
2021 (reference code: github.com/Jun-jie-Huang/WhiteningBERT, ``LayerNPooling`` in
``sentence_transformers/models/MyPooling.py``): the token states of the chosen layers are averaged,
then averaged over the sentence's tokens. The paper's findings are that averaging tokens beats [CLS],
and that combining a bottom layer with the top layer (its demo: layers 1 and 12 of BERT-base) beats the
top layer alone and the top two layers; whitening (:mod:`csekit.postprocess.whitening`) goes on top.

Layers are numbered as in the reference (and as Hugging Face's ``hidden_states``): 0 is the embedding
layer's output, 1..L the outputs of the L transformer blocks. Combinations that an existing csekit pooler
computes map onto it, so nothing new is saved for them:

    (L,)      -> mean              (1, L) -> first_last_avg        (L-1, L) -> last2avg

Any other set (e.g. ``2,12`` or ``0,12``) becomes a :class:`LayerMeanPooler` (the pooler ``layer_mean``),
saved as a stock sentence-transformers ``WeightedLayerPooling`` (0/1 weights) + mean ``Pooling``.

One difference from the reference: it divides each token sum by ``n + 0.01`` tokens; csekit divides by
``n``. Cosines do not change; whitening's fitted mean moves by that scale only.
"""

from __future__ import annotations

from collections.abc import Sequence

from csekit.errors import CsekitError
from csekit.models.pooling import LayerAveragePooler


def parse_layers(spec: str | Sequence[int], *, num_layers: int) -> tuple[int, ...]:
    """``"1,12"`` (or a sequence of ints) -> sorted distinct layer numbers, each in 0..num_layers."""
    if isinstance(spec, str):
        try:
            layers = [int(part) for part in spec.split(",") if part.strip()]
        except ValueError:
            raise CsekitError(f"layers {spec!r} must be integers separated by commas, e.g. 1,{num_layers}") from None
    else:
        layers = [int(layer) for layer in spec]
    if not layers:
        raise CsekitError(f"no layer given; name hidden-state layers 0..{num_layers}, e.g. 1,{num_layers}")
    outside = [layer for layer in layers if not 0 <= layer <= num_layers]
    if outside:
        raise CsekitError(
            f"layer(s) {', '.join(map(str, outside))} out of range: this model has hidden states 0..{num_layers} "
            "(0 = embedding output)"
        )
    if len(set(layers)) != len(layers):
        raise CsekitError(f"layers {spec!r} repeat a layer; name each layer once")
    return tuple(sorted(layers))


def named_pooler(layers: tuple[int, ...], *, num_layers: int) -> str | None:
    """The existing csekit pooler that averages exactly ``layers``, if there is one."""
    return {
        (num_layers,): "mean",
        (1, num_layers): "first_last_avg",
        (num_layers - 1, num_layers): "last2avg",
    }.get(layers)


class LayerMeanPooler(LayerAveragePooler):
    """Mean over tokens of the mean of the chosen layers' states."""

    name = "layer_mean"

    def __init__(self, *, layers: Sequence[int]):
        super().__init__()
        self.layers = tuple(int(layer) for layer in layers)

    def check(self, config) -> None:
        parse_layers(self.layers, num_layers=config.num_hidden_layers)

    def averaged_layers(self, num_layers: int) -> tuple[int, ...]:
        return self.layers

    def config(self) -> dict:
        return {"layers": list(self.layers)}
