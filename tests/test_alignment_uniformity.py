"""Alignment and uniformity (Wang & Isola 2020): naive float64 loops, chunking, known values, the evaluator."""

from __future__ import annotations

import math

import numpy as np
import pytest

from csekit import CsekitError
from csekit.evaluation.alignment_uniformity import (
    AlignmentUniformityEvaluator,
    alignment,
    normalize_rows,
    uniformity,
)
from csekit.evaluation.sts import load_task


def _naive_alignment(x: np.ndarray, y: np.ndarray, alpha: float) -> float:
    return sum(math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v))) ** alpha for u, v in zip(x, y)) / len(x)


def _naive_uniformity(x: np.ndarray, t: float) -> float:
    terms = [math.exp(-t * sum((a - b) ** 2 for a, b in zip(x[i], x[j])))
             for i in range(len(x)) for j in range(i + 1, len(x))]  # fmt: skip
    return math.log(sum(terms) / len(terms))


@pytest.mark.parametrize("alpha", [2, 1, 3])
def test_alignment_equals_naive_loop(alpha):
    rng = np.random.default_rng(alpha)
    x, y = normalize_rows(rng.standard_normal((40, 7))), normalize_rows(rng.standard_normal((40, 7)))
    assert alignment(x, y, alpha) == pytest.approx(_naive_alignment(x, y, alpha), rel=1e-12)


def test_alignment_of_identical_pairs_is_zero_and_shapes_are_checked():
    x = normalize_rows(np.random.default_rng(0).standard_normal((10, 5)))
    assert alignment(x, x) == 0.0
    assert alignment(np.array([[1.0, 0.0]]), np.array([[-1.0, 0.0]])) == pytest.approx(4.0)  # antipodal: |2|^2
    with pytest.raises(ValueError, match="one shape"):
        alignment(x, x[:5])


@pytest.mark.parametrize("t", [2, 0.5, 7])
def test_uniformity_equals_naive_loop(t):
    x = normalize_rows(np.random.default_rng(3).standard_normal((45, 6)))
    assert uniformity(x, t) == pytest.approx(_naive_uniformity(x, t), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("chunk_size", [1, 7, 44, 45, 1000])
def test_chunked_uniformity_equals_unchunked(chunk_size):
    x = normalize_rows(np.random.default_rng(4).standard_normal((45, 16)).astype(np.float32))
    assert uniformity(x, chunk_size=chunk_size) == pytest.approx(uniformity(x, chunk_size=10**6), abs=1e-12)


def test_uniformity_known_values():
    assert uniformity(np.array([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0, abs=1e-12)  # log exp(-2 * 4)
    assert uniformity(np.array([[0.6, 0.8]] * 5)) == pytest.approx(0.0, abs=1e-12)  # collapsed: log 1
    # A large t underflows exp() pair by pair (exp(-2000) == 0.0); the running log-sum-exp does not.
    # Pairs: two at squared distance 2, one at 4 -> log((2 e^-2000 + e^-4000) / 3) = -2000 + log(2/3).
    quarter_circle = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert uniformity(quarter_circle, t=1000) == pytest.approx(-2000 + math.log(2 / 3), abs=1e-9)
    with pytest.raises(ValueError, match="N >= 2"):
        uniformity(np.ones((1, 3)))


def test_normalize_rows_keeps_zero_rows():
    rows = normalize_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0]])


def test_evaluator_uses_stsb_dev_pairs_above_four_and_distinct_sentences(data_dir):
    evaluator = AlignmentUniformityEvaluator(data_dir=data_dir)
    (pairs,) = load_task(data_dir, "stsb", "dev")
    assert len(evaluator.positive_pairs) == int((pairs.gold > 4).sum())  # "higher than 4": strictly
    assert evaluator.sentences == sorted({*pairs.first, *pairs.second})
    seen = []

    class Random:
        def encode(self, texts, *, batch_size=64):
            seen.append(list(texts))
            return np.random.default_rng(0).standard_normal((len(texts), 8)).astype(np.float32) * 5

    metrics = evaluator.evaluate(Random())
    assert len(seen) == 1 and seen[0] == evaluator.sentences
    table = normalize_rows(Random().encode(evaluator.sentences))
    row = {text: i for i, text in enumerate(evaluator.sentences)}
    first = table[[row[a] for a, _ in evaluator.positive_pairs]]
    second = table[[row[b] for _, b in evaluator.positive_pairs]]
    assert metrics["align"] == pytest.approx(alignment(first, second), rel=1e-12)
    assert metrics["uniform"] == pytest.approx(uniformity(table), rel=1e-12)
    assert metrics["align/pairs"] == len(evaluator.positive_pairs)
    assert metrics["uniform/sentences"] == len(evaluator.sentences)
    assert evaluator.primary_metric == "uniform" and evaluator.greater_is_better is False
    # Random directions in 8-D: alignment near 2 (orthogonal on average), uniformity well below 0.
    assert 1.5 < metrics["align"] < 2.5 and metrics["uniform"] < -2


def test_evaluator_refuses_unknown_split(tmp_path):
    with pytest.raises(CsekitError, match="split"):
        AlignmentUniformityEvaluator(split="train", data_dir=tmp_path)
