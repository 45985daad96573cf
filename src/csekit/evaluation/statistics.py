"""Statistics for comparing encoders: mean ± std over seeds, t-tests over seeds, and a paired
bootstrap over test pairs for STS.

- Seeds: a method is reported as the mean and the *sample* standard deviation (n − 1) of its runs.
  With the same seeds on both sides, the paired t-test over seeds compares two methods; with
  different seeds, Welch's t-test. Three seeds make either test weak.
- Test pairs: the test the field uses for one test set and a non-decomposable metric is the paired
  bootstrap (Efron & Tibshirani 1993; Koehn 2004 for NLP; Dror et al. 2018, "The Hitchhiker's Guide
  to Testing Statistical Significance in NLP", recommend it for correlation metrics, where a
  per-example permutation would mix two models' similarity scales). The STS pairs are resampled with
  replacement, *the same* resample for both methods, and the Spearman difference is recomputed on
  each. Several models per method (seeds) enter as the mean of their Spearman correlations on the
  resample, which is what the reported mean is; several tasks are resampled independently (each task
  its own stratum) and their differences averaged, which is what the reported average is.
- p-value: two-sided, from the bootstrap distribution shifted to the null of no difference
  (Berg-Kirkpatrick et al. 2012; Efron & Tibshirani 1993, Sec. 16.4): the share of resampled
  differences at least ``|δ|`` away from the observed ``δ``, with the observed sample counted once,
  ``(1 + #{|δ*_r − δ| ≥ |δ|}) / (R + 1)``. Identical models give δ* = δ = 0 everywhere, so p = 1;
  the smallest p that R resamples can show is 1 / (R + 1). The interval is the percentile interval.

Correlations are ×100, as in the STS tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

#: Resamples scored at once: a few (chunk, N) float64 arrays, 10 MB each for SICK-R's 4,927 pairs.
CHUNK = 256


@dataclass(frozen=True)
class BootstrapResult:
    """``delta``: second minus first (Spearman ×100); ``low``/``high``: its percentile interval."""

    delta: float
    p_value: float
    low: float
    high: float
    resamples: int


@dataclass(frozen=True)
class TTestResult:
    """``delta``: mean of second minus mean of first; ``kind``: "paired" or "welch"."""

    delta: float
    t: float
    p_value: float
    n: int
    kind: str


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1); the deviation of a single value is nan."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"mean_std needs a non-empty list of numbers, got shape {array.shape}")
    std = float(array.std(ddof=1)) if len(array) > 1 else float("nan")
    return float(array.mean()), std


def paired_t_test(first: Sequence[float], second: Sequence[float]) -> TTestResult:
    """Paired t-test of ``second - first`` (same seeds, same order); equal differences give t = ±inf or 0."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"a paired t-test needs two lists of one length >= 2, got {a.shape} and {b.shape}")
    differences = b - a
    mean, spread = differences.mean(), differences.std(ddof=1)
    if spread == 0:  # scipy says nan; every seed moved by the same amount: certain, or no change at all
        return TTestResult(float(mean), 0.0 if mean == 0 else float(np.sign(mean) * np.inf),
                           1.0 if mean == 0 else 0.0, len(a), "paired")  # fmt: skip
    t = mean / (spread / np.sqrt(len(a)))
    return TTestResult(float(mean), float(t), float(2 * stats.t.sf(abs(t), len(a) - 1)), len(a), "paired")


def welch_t_test(first: Sequence[float], second: Sequence[float]) -> TTestResult:
    """Welch's unequal-variance t-test of ``mean(second) - mean(first)``, for runs that share no seeds."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1 or len(a) < 2 or len(b) < 2:
        raise ValueError(f"Welch's t-test needs two lists of >= 2 values, got {a.shape} and {b.shape}")
    delta = float(b.mean() - a.mean())
    if a.var() == 0 and b.var() == 0:  # both constant: scipy says nan
        t, p = (0.0, 1.0) if delta == 0 else (float(np.sign(delta) * np.inf), 0.0)
        return TTestResult(delta, t, p, len(a) + len(b), "welch")
    result = stats.ttest_ind(b, a, equal_var=False)
    return TTestResult(delta, float(result.statistic), float(result.pvalue), len(a) + len(b), "welch")


# ------------------------------------------------------------------------------ paired bootstrap
def spearman_rows(predictions: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Row-wise Spearman ×100 of (R, N) predictions against (R, N) gold (ties get average ranks)."""
    x = stats.rankdata(predictions, axis=1)  # (R, N)
    y = stats.rankdata(gold, axis=1)  # (R, N)
    return _weighted_pearson(x, y, np.ones_like(x))


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """(R, N) float counts: how often each of the N pairs was drawn in each of the R resamples."""
    rows = len(indices)
    bins = indices + n * np.arange(rows)[:, None]  # (R, N): one bin per (resample, pair)
    return np.bincount(bins.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def _tie_groups(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort order, start of each run of equal values in it, and the run of each sorted position."""
    order = np.argsort(values, kind="stable")  # (N,)
    ordered = values[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])  # (G,)
    run_of = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(values)]))  # (N,)
    return order, starts, run_of


def _midranks(groups: tuple[np.ndarray, np.ndarray, np.ndarray], counts: np.ndarray) -> np.ndarray:
    """(R, N) average rank of each pair's value within each resample, pair i drawn counts[r, i] times.

    A resample's ranks follow from one sort of the full set: a run of equal values that the resample
    holds ``k`` times, after ``c`` smaller ones, takes ranks c + 1 ... c + k, on average ``c + (k + 1) / 2``
    (scipy's "average" ties, copies of one pair included). No per-resample sort is needed.
    """
    order, starts, run_of = groups
    drawn = np.cumsum(counts[:, order], axis=1)  # (R, N): draws up to each sorted position
    upto = drawn[:, np.r_[starts[1:], counts.shape[1]] - 1]  # (R, G): draws up to the end of each run
    before = np.concatenate([np.zeros((len(counts), 1)), upto[:, :-1]], axis=1)  # (R, G): draws before each run
    run_rank = before + (upto - before + 1) / 2  # (R, G)
    ranks = np.empty_like(counts)
    ranks[:, order] = run_rank[:, run_of]  # (R, N)
    return ranks


def _weighted_pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Row-wise Pearson ×100 of (R, N) x and y, row r counting item i weights[r, i] times; nan if constant."""
    total = weights.sum(axis=1, keepdims=True)  # (R, 1)
    x = x - (weights * x).sum(axis=1, keepdims=True) / total
    y = y - (weights * y).sum(axis=1, keepdims=True) / total
    with np.errstate(invalid="ignore", divide="ignore"):
        return 100 * (weights * x * y).sum(axis=1) / np.sqrt((weights * x * x).sum(axis=1) * (weights * y * y).sum(axis=1))


def _as_models(predictions: np.ndarray, n: int) -> np.ndarray:
    models = np.atleast_2d(np.asarray(predictions, dtype=np.float64))  # (S, N): one row per model
    if models.ndim != 2 or models.shape[1] != n:
        raise ValueError(f"predictions must be (N,) or (S, N) with N = {n} gold scores, got {np.shape(predictions)}")
    return models


def bootstrap_deltas(first: np.ndarray, second: np.ndarray, gold: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Mean Spearman of ``second``'s models minus ``first``'s on each resample: (R,) from (R, N) indices."""
    gold = np.asarray(gold, dtype=np.float64)
    first, second = _as_models(first, len(gold)), _as_models(second, len(gold))
    groups = [_tie_groups(values) for values in (gold, *first, *second)]  # one sort per model, not per resample
    deltas = np.empty(len(indices))
    for start in range(0, len(indices), CHUNK):
        counts = resample_counts(indices[start : start + CHUNK], len(gold))  # (C, N)
        gold_ranks = _midranks(groups[0], counts)  # (C, N)
        spearman = [_weighted_pearson(_midranks(g, counts), gold_ranks, counts) for g in groups[1:]]  # S_a + S_b of (C,)
        deltas[start : start + len(counts)] = np.mean(spearman[len(first) :], axis=0) - np.mean(spearman[: len(first)], axis=0)
    return deltas


def bootstrap_p_value(deltas: np.ndarray, observed: float) -> float:
    """Two-sided p of ``observed`` against the resampled differences shifted to mean-zero."""
    deltas = np.asarray(deltas, dtype=np.float64)
    extreme = np.count_nonzero(np.abs(deltas - observed) >= abs(observed))
    return float((1 + extreme) / (len(deltas) + 1))


Task = tuple[np.ndarray, np.ndarray, np.ndarray]  # (first (S_a, N) or (N,), second (S_b, N) or (N,), gold (N,))


def paired_bootstrap_tasks(
    tasks: Mapping[str, Task], *, resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, BootstrapResult]:
    """Each task's result and, under ``"avg"``, the mean over tasks, all from one set of resamples.

    ``first`` holds the similarities of the first method's models (one row per seed), ``second`` the
    other method's. Each task's pairs are resampled on their own (one stratum a task); ``avg``'s
    statistic is the mean over tasks of the per-task difference. Deterministic given ``seed``.
    """
    if not tasks:
        raise ValueError("paired_bootstrap needs at least one task")
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError(f"need resamples >= 1 and 0 < confidence < 1, got {resamples} and {confidence}")
    rng = np.random.default_rng(seed)
    observed, resampled = {}, {}
    for name, (first, second, gold) in tasks.items():
        n = len(gold)
        observed[name] = float(bootstrap_deltas(first, second, gold, np.arange(n)[None, :])[0])  # the test set itself
        # Drawn a chunk at a time: 10,000 resamples of SICK-R's pairs would be 400 MB of indices at once.
        sizes = [min(CHUNK, resamples - start) for start in range(0, resamples, CHUNK)]
        resampled[name] = np.concatenate([
            bootstrap_deltas(first, second, gold, rng.integers(0, n, size=(size, n)))  # (size, N) indices
            for size in sizes
        ])  # fmt: skip
    observed["avg"] = float(np.mean(list(observed.values())))
    resampled["avg"] = np.mean(list(resampled.values()), axis=0)  # (R,): the mean over tasks, resample by resample
    tail = 100 * (1 - confidence) / 2
    results = {}
    for name, deltas in resampled.items():
        low, high = np.percentile(deltas, [tail, 100 - tail])
        results[name] = BootstrapResult(observed[name], bootstrap_p_value(deltas, observed[name]), float(low),
                                        float(high), resamples)  # fmt: skip
    return results


def paired_bootstrap(
    tasks: Sequence[Task], *, resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> BootstrapResult:
    """The difference in mean Spearman (×100) of two methods over one or more tasks (their mean)."""
    named = {str(i): task for i, task in enumerate(tasks)}
    return paired_bootstrap_tasks(named, resamples=resamples, seed=seed, confidence=confidence)["avg"]
