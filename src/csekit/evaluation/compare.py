"""Methods as groups of evaluated models (one per seed): mean ± std per metric, and one method
against another with the tests of :mod:`csekit.evaluation.statistics`.

- STS tasks: the paired bootstrap over test pairs (each method's models resampled on the same pairs);
  ``sts/avg`` resamples every STS task and averages, as the headline does.
- Every metric: the paired t-test over seeds when both methods ran the same seeds (a model's seed is
  the ``seed`` of the ``config.yaml`` that ``csekit train`` wrote beside or above it), else Welch's
  t-test when each method has two models or more, else none.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from csekit.evaluation import flat_metrics, shared_tables
from csekit.evaluation.base import Encoder, Evaluator
from csekit.evaluation.statistics import mean_std, paired_bootstrap_tasks, paired_t_test, welch_t_test


@dataclass
class EvaluatedModel:
    """One model's metrics (``family/metric``) and, when STS ran, each STS task's (similarity (N,), gold (N,))."""

    model: str
    metrics: dict[str, float]
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    seed: int | None = None
    pooler: str | None = None


def evaluate_model(path: str, encoder: Encoder, evaluators: Mapping[str, Evaluator], *, pooler: str,
                   batch_size: int = 128) -> EvaluatedModel:  # fmt: skip
    """Every family's metrics of one model (one encoding pass), its STS predictions and its training seed."""
    tables = shared_tables(encoder, evaluators, batch_size=batch_size)
    results = {family: evaluator.score(tables[family]) for family, evaluator in evaluators.items()}
    predictions = evaluators["sts"].predictions(tables["sts"]) if "sts" in evaluators else {}
    return EvaluatedModel(path, flat_metrics(results), predictions, run_seed(path), pooler)


def run_seed(model: str | os.PathLike) -> int | None:
    """The training seed of a model saved by ``csekit train`` (RUN/best -> RUN/config.yaml), else None."""
    path = Path(model)
    for folder in (path, path.parent):
        config = folder / "config.yaml"
        if config.is_file():
            try:
                seed = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("seed")
            except (yaml.YAMLError, AttributeError):
                return None
            return seed if isinstance(seed, int) else None
    return None


def summarize(models: list[EvaluatedModel]) -> dict:
    """``{"n", "mean": {metric: ...}, "std": {metric: ...}}`` over the metrics every model has."""
    keys = [key for key in models[0].metrics if all(key in m.metrics for m in models)]
    stats = {key: mean_std([m.metrics[key] for m in models]) for key in keys}
    return {"n": len(models), "mean": {k: v[0] for k, v in stats.items()}, "std": {k: v[1] for k, v in stats.items()}}


def shared_seeds(first: list[EvaluatedModel], second: list[EvaluatedModel]) -> list[int] | None:
    """The seeds, sorted, when both methods ran exactly the same distinct ones (>= 2); else None."""
    seeds_a, seeds_b = [m.seed for m in first], [m.seed for m in second]
    if None in seeds_a or None in seeds_b or len(set(seeds_a)) != len(seeds_a) or sorted(seeds_a) != sorted(seeds_b):
        return None
    return sorted(seeds_a) if len(seeds_a) >= 2 else None


def compare(
    baseline: list[EvaluatedModel],
    other: list[EvaluatedModel],
    *,
    metrics: list[str],
    sts_tasks: list[str] = (),
    resamples: int = 1000,
    seed: int = 0,
) -> dict:
    """``other`` minus ``baseline``: ``{"bootstrap": {task: ...}, "t_test": {...} | None}``, JSON-ready."""
    tasks = [task for task in sts_tasks if all(task in m.predictions for m in (*baseline, *other))]
    per_task = {task: _stacked(baseline, other, task) for task in tasks}
    results = paired_bootstrap_tasks(per_task, resamples=resamples, seed=seed) if per_task else {}
    bootstrap = {f"sts/{name}": asdict(result) for name, result in results.items()}  # tasks and avg
    return {"bootstrap": bootstrap, "t_test": _t_tests(baseline, other, metrics)}


def _stacked(first: list[EvaluatedModel], second: list[EvaluatedModel], task: str):
    """(S_a, N) and (S_b, N) similarities and the (N,) gold of ``task``; every model saw the same pairs."""
    gold = first[0].predictions[task][1]
    for model in (*first, *second):
        if not np.array_equal(model.predictions[task][1], gold):
            raise ValueError(f"{model.model}: {task} was scored on other pairs than {first[0].model}")
    return (np.stack([m.predictions[task][0] for m in first]), np.stack([m.predictions[task][0] for m in second]),
            gold)  # fmt: skip


def _t_tests(baseline: list[EvaluatedModel], other: list[EvaluatedModel], metrics: list[str]) -> dict | None:
    seeds = shared_seeds(baseline, other)
    if seeds is None and (len(baseline) < 2 or len(other) < 2):
        return None
    metrics = [key for key in metrics if all(key in m.metrics for m in (*baseline, *other))]
    if seeds is not None:  # paired: line the runs up by seed
        by_seed_a = {m.seed: m.metrics for m in baseline}
        by_seed_b = {m.seed: m.metrics for m in other}
        tests = {key: paired_t_test([by_seed_a[s][key] for s in seeds], [by_seed_b[s][key] for s in seeds])
                 for key in metrics}  # fmt: skip
    else:
        tests = {key: welch_t_test([m.metrics[key] for m in baseline], [m.metrics[key] for m in other])
                 for key in metrics}  # fmt: skip
    return {"kind": "paired" if seeds is not None else "welch", "seeds": seeds,
            "metrics": {key: asdict(result) for key, result in tests.items()}}  # fmt: skip
