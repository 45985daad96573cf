"""Evaluation: one registry of evaluator families, one encoding pass shared by all of them.

    evaluators = build_evaluators("sts,align_uniform", EvaluationSettings(data_dir=...))
    results = evaluate_all(model, evaluators)        # {"sts": {...}, "align_uniform": {...}}
    by_width = evaluate_prefixes(model, evaluators, [256, 64])   # {256: results, 64: results}, one pass
    flat_metrics(results)["sts/avg"]

A new family is a file with an :class:`~csekit.evaluation.base.Evaluator` subclass and a line in
:data:`EVALUATORS` (``tests/test_evaluators_contract.py`` runs the contract over every one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from csekit.errors import CsekitError
from csekit.evaluation.alignment_uniformity import AlignmentUniformityEvaluator
from csekit.evaluation.base import Encoder, EvaluationSettings, Evaluator
from csekit.evaluation.representation import RepresentationEvaluator
from csekit.evaluation.sts import STSEvaluator
from csekit.evaluation.transfer import TransferEvaluator

#: Family name -> evaluator class, in the order their tables print.
EVALUATORS: dict[str, type[Evaluator]] = {
    "sts": STSEvaluator,
    "transfer": TransferEvaluator,
    "align_uniform": AlignmentUniformityEvaluator,
    "rank": RepresentationEvaluator,
}


def split_tasks(spec: str, settings: EvaluationSettings) -> dict[str, list[str]]:
    """Family -> its task names, from a comma list of family names and task names (``sts,mr,rank``)."""
    owner = {task: family for family, cls in EVALUATORS.items() for task in (family, *cls.tasks_known)}
    families: dict[str, list[str]] = {}
    for name in (n.strip().lower() for n in spec.split(",") if n.strip()):
        if name not in owner:
            raise CsekitError(f"unknown task {name!r}; choose from " + "; ".join(
                f"{family} ({', '.join(cls.tasks_known)})" if cls.tasks_known else family
                for family, cls in EVALUATORS.items()))  # fmt: skip
        tasks = families.setdefault(owner[name], [])
        tasks += [task for task in EVALUATORS[owner[name]].expand(name, settings) if task not in tasks]
    if not families:
        raise CsekitError("no task given")
    return {family: families[family] for family in EVALUATORS if family in families}


def build_evaluators(spec: str, settings: EvaluationSettings) -> dict[str, Evaluator]:
    """The evaluators of ``spec`` (see :func:`split_tasks`); each reads and verifies its data now."""
    return {family: EVALUATORS[family].from_settings(tasks, settings)
            for family, tasks in split_tasks(spec, settings).items()}  # fmt: skip


def evaluate_all(model: Encoder, evaluators: Mapping[str, Evaluator], *, batch_size: int = 128) -> dict[str, dict]:
    """Each family's metrics, encoding every distinct sentence once for all of them.

    align_uniform, rank and STS-B share most sentences, so one pass serves them all.
    """
    tables = shared_tables(model, evaluators, batch_size=batch_size)
    return {family: evaluator.score(tables[family]) for family, evaluator in evaluators.items()}


def evaluate_prefixes(model: Encoder, evaluators: Mapping[str, Evaluator], dims: Sequence[int], *,
                      batch_size: int = 128) -> dict[int, dict[str, dict]]:  # fmt: skip
    """Width -> each family's metrics on the first ``width`` numbers of each embedding, from ONE encoding
    pass (a Matryoshka model's prefixes; renormalised where the model normalises its rows)."""
    tables = shared_tables(model, evaluators, batch_size=batch_size)
    results = {}
    for dim in dims:
        prefixes = {family: table[:, :dim] for family, table in tables.items()}  # (S, dim) each
        if getattr(model, "normalize", False):
            prefixes = {family: _unit_rows(prefix) for family, prefix in prefixes.items()}
        results[dim] = {family: evaluator.score(prefixes[family]) for family, evaluator in evaluators.items()}
    return results


def _unit_rows(table: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(table, axis=1, keepdims=True)  # (S, 1)
    return table / np.maximum(norms, 1e-12)


def shared_tables(model: Encoder, evaluators: Mapping[str, Evaluator], *, batch_size: int = 128) -> dict:
    """Family -> embeddings of its evaluator's ``sentences`` (row i: sentence i), from one encoding pass."""
    texts = sorted({text for evaluator in evaluators.values() for text in evaluator.sentences})
    table = model.encode(texts, batch_size=batch_size)  # (S, H)
    row = {text: i for i, text in enumerate(texts)}
    return {family: table[[row[text] for text in e.sentences]] for family, e in evaluators.items()}


def flat_metrics(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{family: {metric: value}}`` -> ``{"family/metric": value}``: no family overwrites another's keys."""
    return {f"{family}/{key}": value for family, metrics in results.items() for key, value in metrics.items()}


__all__ = ["EVALUATORS", "EvaluationSettings", "Evaluator", "build_evaluators", "evaluate_all", "evaluate_prefixes",
           "flat_metrics", "shared_tables", "split_tasks"]  # fmt: skip
