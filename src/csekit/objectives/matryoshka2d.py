"""2D Matryoshka Sentence Embeddings as a wrapper over any objective (Li et al. 2024, "2D Matryoshka Sentence
Embeddings", since renamed "ESE: Espresso Sentence Embeddings"; arXiv 2402.14776).

2DMSE trains the embedding of every layer n, and every prefix d of it, as a sentence embedding of its own,
and pulls the shallow layers towards the last one. sentence-transformers' ``Matryoshka2dLoss`` is
``AdaptiveLayerLoss`` over ``MatryoshkaLoss``, and this wrapper computes what it computes, per step:

- the inner loss under Matryoshka at the last layer, times ``last_layer_weight``;
- for each of ``layers_per_step`` layers drawn from ``layers`` (the encoder's own pooler, head and output
  modules over that layer's hidden states, from the same forward pass): the inner loss under Matryoshka,
  times ``w(layer) / layers drawn * prior_layers_weight``;
- for each drawn layer, ``kl_weight * t * KL(softmax(last / t) || softmax(layer / t))`` over the features of
  each full-width sentence embedding (every sentence key's rows together, mean over rows: PyTorch's
  "batchmean"), with the last layer's side detached: it is the teacher (sentence-transformers once let the
  gradient into it, #3757);
- each Matryoshka call draws ``dims_per_step`` of ``dims`` (1 and 1 by default, as ``Matryoshka2dLoss`` and
  the paper's reference code draw one layer and one width a step; 0 trains all of them every step).

``layer_weighting``: ``uniform`` (the default: every drawn layer alike, as sentence-transformers now weights
them, after the 2DMSE and Starbucks papers), ``linear`` 1 / (1 + n) (sentence-transformers' earlier default,
close to the reference code's 1 / n) or ``log`` 1 / (1 + ln(1 + n)) (the ESE revision); n is the layer's
hidden-state index, as sentence-transformers counts it. Layers are 1..L-1, the transformer blocks below the
last: sentence-transformers also draws the embedding output (index 0), the reference code does not, and a
model cut to no blocks is no sentence encoder.

The layer embeddings come from :class:`~csekit.models.depth.LayerTap`: the inner ``embed`` runs once with
hidden states recorded, then once more per layer with the encoder's outputs replayed from that layer (no
backbone pass; the RNG replayed too), and the sentence keys of each replay are that layer's. They are
row-wise keys (``<key>@layer<n>``), so the gradient cache slices them like any other.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from csekit.data.batches import Batch
from csekit.errors import CsekitError
from csekit.losses import feature_kl
from csekit.models.depth import LayerTap, check_layer
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Embeddings, Objective, ObjectiveWrapper, RunContext
from csekit.objectives.matryoshka import check_truncatable, nested_dims, prefix_terms, sample

LAYER_WEIGHTINGS = {
    "uniform": lambda layer: 1.0,
    "linear": lambda layer: 1.0 / (1 + layer),
    "log": lambda layer: 1.0 / (1 + math.log(1 + layer)),
}


class Matryoshka2d(ObjectiveWrapper):
    def __init__(self, inner: Objective, encoder: SentenceEncoder, context: RunContext, *,
                 dims: Sequence[int] = (), weights: Sequence[float] = (), layers: Sequence[int] = (),
                 layers_per_step: int = 1, dims_per_step: int = 1, last_layer_weight: float = 1.0,
                 prior_layers_weight: float = 1.0, kl_weight: float = 1.0, kl_temperature: float = 0.3,
                 layer_weighting: str = "uniform"):  # fmt: skip
        super().__init__(inner)
        check_truncatable(inner, "matryoshka2d")
        self.dims, self.weights = nested_dims(dims, weights, encoder.embedding_dim, owner="matryoshka2d")
        self.num_layers = encoder.num_layers
        self.layers = check_prior_layers(layers or range(1, self.num_layers), self.num_layers, owner="matryoshka2d")
        if layer_weighting not in LAYER_WEIGHTINGS:
            raise CsekitError(f"matryoshka2d: layer_weighting must be one of {', '.join(LAYER_WEIGHTINGS)}, "
                              f"not {layer_weighting!r}")  # fmt: skip
        if min(layers_per_step, dims_per_step, kl_temperature, kl_weight) < 0:
            raise CsekitError("matryoshka2d: layers_per_step, dims_per_step, kl_weight and kl_temperature must be >= 0")
        self.layers_per_step, self.dims_per_step = layers_per_step, dims_per_step
        self.last_layer_weight, self.prior_layers_weight = last_layer_weight, prior_layers_weight
        self.kl_weight, self.kl_temperature = kl_weight, kl_temperature
        self.layer_weight = LAYER_WEIGHTINGS[layer_weighting]

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        return embed_with_layers(self.inner, encoder, batch, self.layers)

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        terms = self.matryoshka_terms(embeddings, batch, self.num_layers, self.last_layer_weight)
        drawn = [self.layers[i] for i in sample(len(self.layers), self.layers_per_step)]
        for layer in drawn:
            weight = self.layer_weight(layer) / len(drawn) * self.prior_layers_weight
            terms.update(self.matryoshka_terms(at_layer(embeddings, self.sentence_keys, layer), batch, layer, weight))
            if self.kl_temperature > 0:
                student, teacher = sentence_rows(embeddings, self.sentence_keys, layer)  # (K * B, H) each
                kl = feature_kl(student, teacher, temperature=self.kl_temperature)
                terms[f"kl@L{layer}"] = self.kl_weight * self.kl_temperature * kl
        return terms

    def matryoshka_terms(self, embeddings: Embeddings, batch: Batch, layer: int, weight: float) -> dict[str, Tensor]:
        widths = [(self.dims[i], weight * self.weights[i]) for i in sample(len(self.dims), self.dims_per_step)]
        return prefix_terms(self.inner, embeddings, batch, widths, tag=f"L{layer}/")


def check_prior_layers(layers: Sequence[int], num_layers: int, *, owner: str) -> list[int]:
    """Layers below the last (1..L-1), each once, in order."""
    if num_layers < 2:
        raise CsekitError(f"{owner}: the model has {num_layers} transformer layer; shallower layers need 2 or more")
    for layer in layers:
        check_layer(layer, num_layers - 1, what=f"{owner}: layer")
    return sorted(set(layers))


def layer_key(key: str, layer: int) -> str:
    return f"{key}@layer{layer}"


def at_layer(embeddings: Embeddings, keys: Sequence[str], layer: int) -> Embeddings:
    """``embeddings`` with each sentence key replaced by its value at ``layer``."""
    return {**embeddings, **{key: embeddings[layer_key(key, layer)] for key in keys}}


def sentence_rows(embeddings: Embeddings, keys: Sequence[str], layer: int) -> tuple[Tensor, Tensor]:
    """Every sentence key's rows at ``layer`` and at the last layer: (K * B, H) each."""
    return (torch.cat([embeddings[layer_key(key, layer)] for key in keys]),
            torch.cat([embeddings[key] for key in keys]))  # fmt: skip


def embed_with_layers(inner: Objective, encoder: SentenceEncoder, batch: Batch, layers: Sequence[int]) -> Embeddings:
    """``inner.embed``'s output plus each sentence key at each of ``layers`` (``<key>@layer<n>``), from one
    backbone pass: the inner embed is replayed per layer with the encoder's outputs taken from that layer."""
    tap = LayerTap(layers)
    with tapped(encoder, tap), replayable_rng(encoder) as rewind:
        embeddings = inner.embed(encoder, batch)
        for layer in layers:
            rewind()  # the same draws as the recorded pass (dropout-free replays, but augmentations, masks)
            tap.start_replay(layer)
            replayed = inner.embed(encoder, batch)
            tap.finish_replay()
            embeddings.update({layer_key(key, layer): replayed[key] for key in inner.sentence_keys})
    return embeddings


@contextmanager
def tapped(encoder: SentenceEncoder, tap: LayerTap) -> Iterator[None]:
    if encoder.layer_tap is not None:
        raise CsekitError("two layer wrappers (matryoshka2d, starbucks) cannot wrap one objective")
    encoder.layer_tap = tap
    try:
        yield
    finally:
        encoder.layer_tap = None


@contextmanager
def replayable_rng(encoder: SentenceEncoder) -> Iterator:
    """Yield a function that puts torch's and Python's generators back where they were on entry; on exit they
    are where the first pass left them."""
    device = encoder.device
    cuda = [device] if device.type == "cuda" else []
    start = (torch.random.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda], random.getstate())
    after: list = []

    def rewind() -> None:
        if not after:
            after.append((torch.random.get_rng_state(), [torch.cuda.get_rng_state(d) for d in cuda], random.getstate()))
        _set_state(start, cuda)

    try:
        yield rewind
    finally:
        if after:
            _set_state(after[0], cuda)


def _set_state(state, cuda) -> None:
    cpu, gpus, python = state
    torch.random.set_rng_state(cpu)
    for device, gpu in zip(cuda, gpus):
        torch.cuda.set_rng_state(gpu, device)
    random.setstate(python)
