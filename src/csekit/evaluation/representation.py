"""How much of its space an encoder uses: effective rank, numerical rank and anisotropy.

- Effective rank (Roy & Vetterli 2007): ``exp(H(p))`` with ``p_k = s_k / sum(s)`` over the singular
  values ``s`` of the embedding matrix and ``H`` the Shannon entropy (nats); between 1 and the rank,
  equal to n for n equal singular values.
- Numerical rank: singular values above ``tol``; by default numpy's ``matrix_rank`` rule with float32
  precision, ``s_max * max(N, H) * eps(float32)``, since embeddings come as float32.
- Both on the *centered* matrix: the mean embedding that anisotropic models share (Ethayarajh 2019)
  would otherwise count as one large direction and hide how the sentences spread around it.
- Anisotropy (Ethayarajh 2019): the expected cosine between two different sentences. It is computed
  exactly, over all ordered pairs i != j, from ``||sum u_i||^2 = sum_i sum_j u_i . u_j`` with
  ``u = x / ||x||``: the limit that sampling random pairs estimates, with no sampling noise and no seed.

Sentences: the distinct sentences of STS-B (dev by default), as for alignment and uniformity.
"""

from __future__ import annotations

import os

import numpy as np

from csekit.data.senteval import resolve_data_dir
from csekit.errors import CsekitError
from csekit.evaluation.alignment_uniformity import normalize_rows
from csekit.evaluation.base import EvaluationSettings, Evaluator
from csekit.evaluation.sts import load_task


def singular_values(x: np.ndarray, *, center: bool = True) -> np.ndarray:
    """Singular values of the (N, H) matrix (after subtracting the mean row if ``center``), float64."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"need an (N, H) array with N > 0, got shape {x.shape}")
    if center:
        x = x - x.mean(axis=0, keepdims=True)
    return np.linalg.svd(x, compute_uv=False)


def effective_rank(x: np.ndarray, *, center: bool = True) -> float:
    """Roy & Vetterli's effective rank; 0 for an all-zero matrix (no direction at all)."""
    values = singular_values(x, center=center)
    total = values.sum()
    if total == 0:
        return 0.0
    p = values[values > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def numerical_rank(x: np.ndarray, *, tol: float | None = None, center: bool = True) -> int:
    """Singular values above ``tol`` (default ``s_max * max(N, H) * eps(float32)``)."""
    values = singular_values(x, center=center)
    if tol is None:
        tol = (values.max(initial=0.0)) * max(np.shape(x)) * np.finfo(np.float32).eps
    return int(np.sum(values > tol))


def anisotropy(x: np.ndarray) -> float:
    """Mean cosine over ordered pairs of different rows; a zero row has cosine 0 with everything."""
    units = normalize_rows(x)  # (N, H)
    n = len(units)
    if n < 2:
        raise ValueError(f"anisotropy needs at least 2 rows, got {n}")
    total = units.sum(axis=0)  # (H,)
    # sum over i != j of u_i . u_j = ||sum u||^2 - sum ||u_i||^2
    off_diagonal = total @ total - np.einsum("nh,nh->", units, units)
    return float(off_diagonal / (n * (n - 1)))


class RepresentationEvaluator(Evaluator):
    """``effective_rank``, ``rank`` and ``anisotropy`` of the embeddings of a sentence set.

    Keys: ``effective_rank`` (the headline: higher means the sentences spread over more directions),
    ``rank``, ``anisotropy`` (lower is better), ``sentences``. The default set is the distinct STS-B dev
    sentences.
    """

    family = "rank"
    primary_metric = "effective_rank"

    @classmethod
    def from_settings(cls, tasks: list[str], settings: EvaluationSettings) -> RepresentationEvaluator:
        return cls(data_dir=settings.data_dir, batch_size=settings.batch_size)

    def __init__(
        self,
        sentences: list[str] | None = None,
        *,
        split: str = "dev",
        data_dir: str | os.PathLike | None = None,
        batch_size: int = 128,
        verify: bool = True,
        tol: float | None = None,
    ):
        self.batch_size, self.tol = batch_size, tol
        if sentences is None:
            if split not in ("dev", "test"):
                raise CsekitError(f"split must be 'dev' or 'test', not {split!r}")
            (pairs,) = load_task(resolve_data_dir(data_dir), "stsb", split, verify=verify)
            sentences = [*pairs.first, *pairs.second]
        self.sentences = sorted(set(sentences))
        if len(self.sentences) < 2:
            raise CsekitError("the representation metrics need at least 2 distinct sentences")

    def score(self, table: np.ndarray) -> dict[str, float]:
        """Metrics from embeddings of ``self.sentences`` (row i embeds sentence i)."""
        return {
            "effective_rank": effective_rank(table),
            "rank": float(numerical_rank(table, tol=self.tol)),
            "anisotropy": anisotropy(table),
            "sentences": float(len(self.sentences)),
        }

    def format_table(self, metrics: dict[str, float]) -> str:
        return "\n".join([
            f"{'metric':<15} {'value':>8}  (STS-B dev, {int(metrics['sentences'])} sentences)",
            f"{'effective_rank':<15} {metrics['effective_rank']:8.2f}",
            f"{'rank':<15} {int(metrics['rank']):8d}",
            f"{'anisotropy':<15} {metrics['anisotropy']:8.4f}",
        ])  # fmt: skip

    def summary_rows(self) -> list[tuple[str, str, int]]:
        return [("effective_rank", "eff.rank", 2), ("rank", "rank", 0), ("anisotropy", "anisotr.", 4)]

    def improves(self, metric: str, value: float, best: float | None) -> bool:
        if metric == "anisotropy":  # a space whose sentences point the same way is worse
            return best is None or value < best
        return super().improves(metric, value, best)
