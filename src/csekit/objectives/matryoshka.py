"""Matryoshka Representation Learning as a wrapper over any objective (Kusupati et al. 2022).

MRL trains every prefix z[:m] of an embedding, for m in a nested set of widths, to be a representation of
its own: the loss is ``sum_m c_m L(z[:m])`` (their Eq. 1, with importance weights c_m, all 1 in the paper).
sentence-transformers' ``MatryoshkaLoss`` is the usual implementation for sentence embeddings: it embeds
once, cuts the sentence embeddings to each of ``matryoshka_dims`` and calls the inner loss on them, weighted
by ``matryoshka_weights`` (default 1), optionally on ``n_dims_per_step`` of them drawn each step.

``Matryoshka(objective, dims=..., weights=...)`` does exactly that with csekit's split of an objective:
``embed`` is the inner objective's (one forward pass), and ``loss`` calls the inner ``loss`` once per width
with the keys the objective declares as its sentence embeddings (``sentence_keys``) cut to that width; the
other keys (a frozen model's embeddings, token counts) are passed as they are. Each width's terms are
logged as ``<term>@<dim>`` and the trainer minimises their sum.

As in sentence-transformers, a term that does not read the sentence embeddings (DiffCSE's replaced-token
detection, an inner MLM wrapper's term) is counted once per width; list ``mlm`` after ``matryoshka`` in a
recipe's ``wrappers`` to add it once.

Departures: sentence-transformers also L2-normalises the cut embeddings; csekit's losses compare cosines
(they normalise themselves), so cutting alone gives the same loss, and a loss that reads raw embeddings sees
the raw prefix, as the paper defines it. ``dims`` defaults to the full width and its halves down to 8 (the
paper's log-spaced nesting, Sec. 3); recipes name them. An objective whose loss needs the full width (a
classifier over (u, v, |u − v|), a queue of full-width keys) says so (``truncatable = False``) and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from csekit.data.batches import Batch
from csekit.errors import CsekitError
from csekit.models.depth import check_dim
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Embeddings, Objective, ObjectiveWrapper, RunContext


class Matryoshka(ObjectiveWrapper):
    def __init__(self, inner: Objective, encoder: SentenceEncoder, context: RunContext, *,
                 dims: Sequence[int] = (), weights: Sequence[float] = (), dims_per_step: int = 0):  # fmt: skip
        super().__init__(inner)
        check_truncatable(inner, "matryoshka")
        self.dims, self.weights = nested_dims(dims, weights, encoder.embedding_dim, owner="matryoshka")
        if dims_per_step < 0:
            raise CsekitError(f"matryoshka: dims_per_step must be >= 0 (0: every width each step), got {dims_per_step}")
        self.dims_per_step = dims_per_step

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        chosen = sample(len(self.dims), self.dims_per_step)
        return prefix_terms(self.inner, embeddings, batch, [(self.dims[i], self.weights[i]) for i in chosen])


def check_truncatable(inner: Objective, owner: str) -> None:
    if not inner.truncatable:
        method = inner.wrapped if isinstance(inner, ObjectiveWrapper) else inner
        raise CsekitError(f"{owner}: {type(method).__name__}'s loss needs the full embedding width and cannot "
                          "be trained on prefixes")  # fmt: skip


def nested_dims(dims: Sequence[int], weights: Sequence[float], width: int, *, owner: str) -> tuple[list[int], list[float]]:
    """The widths, widest first, and their weights (default 1), checked against the model's ``width``."""
    dims = list(dims) or [width >> shift for shift in range(width.bit_length()) if width >> shift >= 8]
    weights = list(weights) or [1.0] * len(dims)
    if len(weights) != len(dims):
        raise CsekitError(f"{owner}: {len(weights)} weights for {len(dims)} dims; give one weight per dim")
    for dim in dims:
        check_dim(dim, width, what=f"{owner}: dim")
    if len(set(dims)) != len(dims):
        raise CsekitError(f"{owner}: dims {dims} repeat a width")
    pairs = sorted(zip(dims, weights), key=lambda pair: -pair[0])
    return [dim for dim, _ in pairs], [weight for _, weight in pairs]


def sample(count: int, per_step: int) -> list[int]:
    """``per_step`` of ``range(count)`` drawn with torch's generator, in order (0 or >= count: all)."""
    if per_step <= 0 or per_step >= count:
        return list(range(count))
    return sorted(torch.randperm(count)[:per_step].tolist())


def truncated(embeddings: Embeddings, keys: Sequence[str], dim: int) -> Embeddings:
    """``embeddings`` with each of ``keys`` cut to its first ``dim`` columns ((B, H) -> (B, dim))."""
    return {key: value[:, :dim] if key in keys else value for key, value in embeddings.items()}


def prefix_terms(inner: Objective, embeddings: Embeddings, batch: Batch, widths: Sequence[tuple[int, float]],
                 *, tag: str = "") -> dict[str, Tensor]:  # fmt: skip
    """``weight * term`` of the inner loss at each (dim, weight), named ``<term>@<tag><dim>``."""
    terms: dict[str, Tensor] = {}
    for dim, weight in widths:
        for name, value in inner.loss(truncated(embeddings, inner.sentence_keys, dim), batch).items():
            terms[f"{name}@{tag}{dim}"] = weight * value
    return terms
