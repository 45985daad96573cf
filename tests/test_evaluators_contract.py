"""One suite over every registered evaluator: the contract of evaluation/base.py, with a tiny encoder."""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil

import pytest
from conftest import make_tiny_encoder

import csekit.evaluation
from csekit import CsekitError
from csekit.evaluation import EVALUATORS, EvaluationSettings, Evaluator, build_evaluators, evaluate_all, split_tasks
from csekit.evaluation.record import EvaluationRecord


class CountingEncoder:
    """A tiny encoder that counts the texts it is asked to embed."""

    def __init__(self):
        self.model = make_tiny_encoder("mean").eval()
        self.calls: list[int] = []

    def encode(self, texts, *, batch_size=128):
        self.calls.append(len(texts))
        return self.model.encode(texts, batch_size=batch_size)


@pytest.fixture(scope="module")
def settings(data_dir) -> EvaluationSettings:
    return EvaluationSettings(data_dir=data_dir, mode="dev", transfer_mode="fasttest", limit=200)


def _family_tasks(family: str) -> str:
    """A quick task selection of each family: one transfer task, the STS dev sets, the rest whole."""
    return {"transfer": "mrpc"}.get(family, family)


def test_registry_holds_every_evaluator_defined_in_the_package():
    defined = set()
    for module_info in pkgutil.walk_packages(csekit.evaluation.__path__, prefix="csekit.evaluation."):
        module = importlib.import_module(module_info.name)
        defined |= {cls for cls in vars(module).values() if inspect.isclass(cls) and issubclass(cls, Evaluator)
                    and cls is not Evaluator and cls.__module__ == module.__name__}  # fmt: skip
    assert defined == set(EVALUATORS.values())
    assert all(EVALUATORS[cls.family] is cls for cls in defined)


@pytest.mark.parametrize("family", list(EVALUATORS))
def test_evaluator_scores_its_sentences_and_prints_its_table(family, settings):
    evaluator = build_evaluators(_family_tasks(family), settings)[family]
    assert evaluator.sentences and len(set(evaluator.sentences)) == len(evaluator.sentences)
    model = CountingEncoder()
    metrics = evaluator.evaluate(model)
    assert model.calls == [len(evaluator.sentences)]
    assert evaluator.primary_metric in metrics and all(math.isfinite(value) for value in metrics.values())
    assert all(key in metrics for key, _, _ in evaluator.summary_rows())
    assert evaluator.format_table(metrics).strip()
    # score() is a pure function of the embeddings: the same table gives the same metrics.
    table = model.model.encode(evaluator.sentences)
    assert evaluator.score(table) == evaluator.score(table.copy())
    # Model selection honours the direction of the metric.
    value = metrics[evaluator.primary_metric]
    assert evaluator.improves(evaluator.primary_metric, value, None)
    better = value + 1 if evaluator.greater_is_better else value - 1
    assert evaluator.improves(evaluator.primary_metric, better, value)
    assert not evaluator.improves(evaluator.primary_metric, value, better)


def test_evaluate_all_encodes_each_distinct_sentence_once_and_namespaces_the_metrics(settings):
    evaluators = build_evaluators("sts,mrpc,align_uniform,rank", settings)
    model = CountingEncoder()
    results = evaluate_all(model, evaluators)
    distinct = {text for evaluator in evaluators.values() for text in evaluator.sentences}
    assert model.calls == [len(distinct)]  # STS-B dev is shared by three families: one pass
    for family, evaluator in evaluators.items():  # the same metrics as each evaluating alone (other batches: rounding)
        assert results[family] == pytest.approx(evaluator.evaluate(CountingEncoder()), rel=1e-6, abs=1e-9)
    record = EvaluationRecord("tiny", "mean", results)
    flat = record.flat()
    assert flat["sts/avg"] != flat["transfer/avg"]  # both families have an avg: neither overwrites the other
    assert len(flat) == sum(len(metrics) for metrics in results.values())


def test_tasks_select_families_and_bad_names_are_one_line_errors():
    test = EvaluationSettings(mode="test")
    assert split_tasks("mr,sts12,rank,sts", test) == {"sts": ["sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr"],
                                                      "transfer": ["mr"], "rank": ["rank"]}  # fmt: skip
    assert split_tasks("sts", EvaluationSettings(mode="dev")) == {"sts": ["stsb", "sickr"]}
    with pytest.raises(CsekitError, match="unknown task 'stsbb'; choose from sts"):
        split_tasks("stsbb", test)


def test_records_round_trip_and_records_without_a_schema_are_read(tmp_path):
    record = EvaluationRecord("m", "cls", {"sts": {"stsb": 80.0, "avg": 80.0}, "transfer": {"mr": 70.0, "avg": 70.0}},
                              {"tasks": "stsb,mr"}, 1.5)  # fmt: skip
    record.write(tmp_path / "eval.json")
    assert EvaluationRecord.read(tmp_path / "eval.json") == record
    old = tmp_path / "old.json"
    old.write_text('{"model": "m", "pooler": "cls", "metrics": {"stsb": 80.0, "avg": 80.0, "mr": 70.0, '
                   '"mr/dev": 71.0, "transfer/avg": 70.0, "align": 0.2, "uniform": -2.0}}', encoding="utf-8")  # fmt: skip
    assert EvaluationRecord.read(old).results == {"sts": {"stsb": 80.0, "avg": 80.0},
                                                  "transfer": {"mr": 70.0, "mr/dev": 71.0, "avg": 70.0},
                                                  "align_uniform": {"align": 0.2, "uniform": -2.0}}  # fmt: skip
