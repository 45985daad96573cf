"""Starbucks Representation Learning as a wrapper over any objective (Zhuang et al. 2024, "Starbucks: Improved
Training for 2D Matryoshka Embeddings", arXiv 2410.13230, Sec. 3.2).

Where 2D Matryoshka draws a layer and a width each step, Starbucks fine-tunes a fixed, small list of
(layer, width) pairs, the sizes a user will deploy, every step: BERT-base's (2, 32), (4, 64), (6, 128),
(8, 256), (10, 512), (12, 768). Per step, as the reference ``StarbucksLoss`` (built on
sentence-transformers' adaptive-layer machinery) computes it:

- the inner loss at the last layer and full width, times ``last_layer_weight``;
- for each pair (l, d) with l below the last layer: the inner loss on layer l's sentence embeddings cut to d
  (weight 1; a pair at the last layer and a narrower width is a term of its own, without KL), plus
  ``kl_weight * kl_temperature * KL(softmax(last[:, :d]) || softmax(layer_l[:, :d]))`` over the features of
  each sentence embedding (every sentence key's rows together, mean over rows).

Departures: the reference lets the gradient flow into the last layer's side of the KL term; here it is
detached, the teacher, as sentence-transformers' 2D Matryoshka loss now does (#3757), so the shallow
sub-models move towards the full model and not the reverse. The reference scales the KL term by its
temperature without dividing the logits by it; so does this wrapper (its default 0.3 is the reference's).

Layer embeddings come from one backbone pass, replayed per layer (:func:`~csekit.objectives.matryoshka2d.embed_with_layers`).
``pairs`` defaults to the last layer at full width, and each layer below it at half the width of the one
above (BERT-mini: (1, 32), (2, 64), (3, 128), (4, 256)); recipes name the paper's pairs for BERT-base.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from csekit.data.batches import Batch
from csekit.errors import CsekitError
from csekit.losses import feature_kl
from csekit.models.depth import check_dim, check_layer
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Embeddings, Objective, ObjectiveWrapper, RunContext
from csekit.objectives.matryoshka import check_truncatable, prefix_terms
from csekit.objectives.matryoshka2d import at_layer, embed_with_layers, sentence_rows


class Starbucks(ObjectiveWrapper):
    def __init__(self, inner: Objective, encoder: SentenceEncoder, context: RunContext, *,
                 pairs: Sequence[Sequence[int]] = (), last_layer_weight: float = 1.0, kl_weight: float = 1.0,
                 kl_temperature: float = 0.3):  # fmt: skip
        super().__init__(inner)
        check_truncatable(inner, "starbucks")
        self.num_layers, self.width = encoder.num_layers, encoder.embedding_dim
        self.pairs = check_pairs(pairs or default_pairs(self.num_layers, self.width), self.num_layers, self.width)
        if kl_weight < 0 or kl_temperature < 0:
            raise CsekitError(f"starbucks: kl_weight and kl_temperature must be >= 0, got {kl_weight} and {kl_temperature}")
        self.last_layer_weight, self.kl_weight, self.kl_temperature = last_layer_weight, kl_weight, kl_temperature
        self.layers = sorted({layer for layer, _ in self.pairs if layer < self.num_layers})

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        return embed_with_layers(self.inner, encoder, batch, self.layers)

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        last = f"L{self.num_layers}/"
        terms = prefix_terms(self.inner, embeddings, batch, [(self.width, self.last_layer_weight)], tag=last)
        for layer, dim in self.pairs:
            if layer == self.num_layers:
                if dim != self.width:
                    terms.update(prefix_terms(self.inner, embeddings, batch, [(dim, 1.0)], tag=last))
                continue
            shallow = at_layer(embeddings, self.sentence_keys, layer)
            terms.update(prefix_terms(self.inner, shallow, batch, [(dim, 1.0)], tag=f"L{layer}/"))
            if self.kl_temperature > 0:
                student, teacher = sentence_rows(embeddings, self.sentence_keys, layer)  # (K * B, H) each
                kl = feature_kl(student[:, :dim], teacher[:, :dim])  # (K * B, d) each
                terms[f"kl@L{layer}/{dim}"] = self.kl_weight * self.kl_temperature * kl
        return terms


def default_pairs(num_layers: int, width: int) -> list[tuple[int, int]]:
    """The last layer at full width, each layer below at half the width of the one above (at least 8)."""
    return [(layer, width >> (num_layers - layer)) for layer in range(1, num_layers + 1)
            if width >> (num_layers - layer) >= 8]  # fmt: skip


def check_pairs(pairs: Sequence[Sequence[int]], num_layers: int, width: int) -> list[tuple[int, int]]:
    checked = []
    for pair in pairs:
        if len(pair) != 2:
            raise CsekitError(f"starbucks: a pair is [layer, dim], got {list(pair)}")
        layer, dim = pair
        checked.append((check_layer(layer, num_layers, what="starbucks: layer"), check_dim(dim, width, what="starbucks: dim")))
    if len(set(checked)) != len(checked):
        raise CsekitError(f"starbucks: pairs {checked} repeat a pair")
    return sorted(checked)
