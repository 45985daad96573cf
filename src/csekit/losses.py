"""Losses: pure functions of embeddings (never of the model), so wrappers compose around them."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from csekit.distributed import all_gather_with_grad, get_rank, get_world_size


def cosine_similarity_matrix(a: Tensor, b: Tensor) -> Tensor:
    """(N, H), (M, H) -> (N, M) cosine similarities."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T  # (N, M)


def info_nce(
    anchors: Tensor,
    candidates: Tensor,
    temperature: float | Tensor = 0.05,
    *,
    weights: Tensor | None = None,
    gather: bool = True,
) -> Tensor:
    """InfoNCE over cosine similarities, mean over anchors (a scalar).

    SimCSE (Gao, Yao & Chen 2021), Eq. 1 (unsupervised, Eq. 4 with dropout views) and Eq. 5
    (supervised, hard negatives): ``-log exp(s_ii / t) / sum_j exp(s_ij / t)``.

    anchors: (B, H). candidates: (N, H), N >= B; ``candidates[i]`` is the positive of ``anchors[i]``
    and every other row is a negative (the other positives, then any hard negatives).

    weights: (B, N) nonnegative multipliers of each ``exp`` term of this rank's candidates (the
    positive's included), applied as ``+ log(weight)`` on the logit. A weight of 0 masks a candidate
    out (the positive's weight must stay > 0). SimCSE's ``hard_negative_weight`` w, which it adds to
    the logit, is ``weights = exp(w)`` at the anchor's own hard negative (:func:`hard_negative_weights`).

    gather: with several processes, candidates of all ranks are gathered (with gradient, see
    :func:`csekit.distributed.all_gather_with_grad`) so each anchor sees W * N candidates. This rank's
    candidates sit at columns ``rank * N ... rank * N + N - 1``: the labels shift by ``rank * N`` and
    ``weights`` are placed there; other ranks' columns get weight 1.
    """
    batch_size, num_candidates = anchors.shape[0], candidates.shape[0]
    if num_candidates < batch_size:
        raise ValueError(f"each anchor needs a positive: {batch_size} anchors, {num_candidates} candidates")
    if weights is not None and weights.shape != (batch_size, num_candidates):
        raise ValueError(f"weights must be (B, N) = {batch_size, num_candidates}, not {tuple(weights.shape)}")
    offset = 0
    if gather and get_world_size() > 1:
        offset = get_rank() * num_candidates
        candidates = all_gather_with_grad(candidates)  # (W * N, H), rank order
    logits = cosine_similarity_matrix(anchors, candidates) / temperature  # (B, W * N)
    if weights is not None:
        # log(1) = 0 pads the other ranks' columns: their exp terms count as they are.
        after = logits.shape[1] - offset - num_candidates
        logits = logits + F.pad(_log_weights(weights), (offset, after))  # (B, W * N)
    labels = torch.arange(batch_size, device=anchors.device) + offset  # (B,)
    return F.cross_entropy(logits, labels)


def hard_negative_weights(
    batch_size: int,
    num_candidates: int,
    weight: float,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """(B, N) weights adding SimCSE's ``hard_negative_weight`` to each anchor's own hard negatives.

    Candidates laid out as SimCSE does: B positives, then blocks of B hard negatives, row i of each
    block belonging to anchor i. SimCSE adds ``weight`` to those logits (reference code
    ``simcse/models.py::cl_forward``); as a multiplier of the ``exp`` term that is ``exp(weight)``.
    """
    weights = torch.ones(batch_size, num_candidates, device=device, dtype=dtype)  # (B, N)
    rows = torch.arange(batch_size, device=device)
    for start in range(batch_size, num_candidates - batch_size + 1, batch_size):
        weights[rows, start + rows] = math.exp(weight)
    return weights


def _log_weights(weights: Tensor) -> Tensor:
    """log(weights) with log(0) = -inf and a zero (never NaN) gradient for the masked entries."""
    masked = weights <= 0
    # torch.where backpropagates 0 * d(log w) into the unchosen branch, which is NaN at w = 0, so the
    # log is taken of a safe value there.
    return torch.where(masked, -math.inf, torch.where(masked, 1.0, weights).log())
