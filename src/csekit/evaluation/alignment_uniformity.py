"""Alignment and uniformity of an embedding space (Wang & Isola 2020, Eq. 2 and 3), as SimCSE reads them.

- ``align = E_{(x, y) ~ p_pos} ||f(x) - f(y)||^alpha`` with alpha = 2;
- ``uniform = log E_{x, y ~ p_data} exp(-t ||f(x) - f(y)||^2)`` with t = 2, over distinct pairs
  (Wang & Isola's reference code: ``torch.pdist(x).pow(2).mul(-t).exp().mean().log()``);
- both on L2-normalised embeddings; lower is better for both.

Data (Gao et al. 2021, footnote 3 of Sec. 3): "We take STS-B pairs with a score higher than 4 as
p_pos and all STS-B sentences as p_data." The paper does not name the split; the development set is
used here (as in later work, e.g. EASE, Nishikawa et al. 2022), so that test data never steers
training. p_data is the set of distinct sentences of the split: a sentence that occurs twice would
otherwise add a zero distance that says nothing about the space.

The headline (``primary_metric``) is ``uniform``: the quantity contrastive learning changes most
(SimCSE Fig. 2). It must be read with ``align``: a collapsed encoder aligns perfectly, a random one is
perfectly uniform.
"""

from __future__ import annotations

import os

import numpy as np
from scipy.special import logsumexp

from csekit.data.senteval import resolve_data_dir
from csekit.errors import CsekitError
from csekit.evaluation.base import EvaluationSettings, Evaluator
from csekit.evaluation.sts import load_task


def alignment(x: np.ndarray, y: np.ndarray, alpha: float = 2) -> float:
    """Mean ``||x_i - y_i||^alpha`` over paired rows of (N, H) arrays, in float64."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2 or len(x) == 0:
        raise ValueError(
            f"alignment needs two (N, H) arrays of one shape with N > 0, got {x.shape} and {y.shape}"
        )
    return float(np.mean(np.linalg.norm(x - y, axis=1) ** alpha))


def uniformity(x: np.ndarray, t: float = 2, *, chunk_size: int = 1024) -> float:
    """``log`` of the mean of ``exp(-t ||x_i - x_j||^2)`` over the N(N-1)/2 pairs i < j, in float64.

    Rows are taken ``chunk_size`` at a time against the rows after them, so memory is
    O(chunk_size * N) (10k sentences: 80 MB a chunk), and the mean is a running log-sum-exp, so a
    large ``t`` cannot underflow it to log(0).
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if x.ndim != 2 or n < 2:
        raise ValueError(f"uniformity needs an (N, H) array with N >= 2, got shape {x.shape}")
    squares = np.einsum("nh,nh->n", x, x)  # (N,)
    partial_sums = []
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        # (C, N - start): squared distances of this chunk's rows to every row from `start` on.
        distances = squares[start:stop, None] + squares[None, start:] - 2 * (x[start:stop] @ x[start:].T)
        np.maximum(distances, 0, out=distances)  # rounding can push a zero distance below 0
        above_diagonal = np.arange(n - start)[None, :] > np.arange(stop - start)[:, None]  # keep j > i
        if above_diagonal.any():
            partial_sums.append(logsumexp(-t * distances[above_diagonal]))
    return float(logsumexp(partial_sums) - np.log(n * (n - 1) / 2))


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, in float64; a zero row stays zero."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1, norms)


class AlignmentUniformityEvaluator(Evaluator):
    """``align`` over STS-B pairs with gold score > ``threshold``, ``uniform`` over the split's sentences.

    Keys: ``align``, ``uniform``, ``align/pairs``, ``uniform/sentences``. Lower is better for both.
    """

    family = "align_uniform"
    primary_metric = "uniform"
    greater_is_better = False

    @classmethod
    def from_settings(cls, tasks: list[str], settings: EvaluationSettings) -> AlignmentUniformityEvaluator:
        return cls(data_dir=settings.data_dir, batch_size=settings.batch_size)

    def __init__(
        self,
        *,
        split: str = "dev",
        threshold: float = 4.0,
        data_dir: str | os.PathLike | None = None,
        batch_size: int = 128,
        verify: bool = True,
        alpha: float = 2,
        t: float = 2,
    ):
        if split not in ("dev", "test"):
            raise CsekitError(f"split must be 'dev' or 'test', not {split!r}")
        self.alpha, self.t, self.batch_size = alpha, t, batch_size
        (pairs,) = load_task(resolve_data_dir(data_dir), "stsb", split, verify=verify)
        positive = pairs.gold > threshold  # "higher than 4": strictly
        if not positive.any():
            raise CsekitError(f"no STS-B {split} pair has a gold score above {threshold}")
        self.positive_pairs = [(a, b) for a, b, keep in zip(pairs.first, pairs.second, positive) if keep]
        self.sentences = sorted({*pairs.first, *pairs.second})

    def score(self, table: np.ndarray) -> dict[str, float]:
        """Metrics from embeddings of ``self.sentences`` (row i embeds sentence i)."""
        table = normalize_rows(table)
        row = {text: i for i, text in enumerate(self.sentences)}
        first = table[[row[a] for a, _ in self.positive_pairs]]  # (P, H)
        second = table[[row[b] for _, b in self.positive_pairs]]  # (P, H)
        return {
            "align": alignment(first, second, self.alpha),
            "uniform": uniformity(table, self.t),
            "align/pairs": float(len(self.positive_pairs)),
            "uniform/sentences": float(len(self.sentences)),
        }

    def format_table(self, metrics: dict[str, float]) -> str:
        return "\n".join([
            f"{'metric':<8} {'value':>8}  over (STS-B dev; lower is better)",
            f"{'align':<8} {metrics['align']:8.4f}  {int(metrics['align/pairs'])} pairs with gold score > 4",
            f"{'uniform':<8} {metrics['uniform']:8.4f}  {int(metrics['uniform/sentences'])} sentences",
        ])  # fmt: skip

    def summary_rows(self) -> list[tuple[str, str, int]]:
        return [("align", "align", 4), ("uniform", "uniform", 4)]
