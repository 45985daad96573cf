"""Effective rank, numerical rank and anisotropy: known matrices, a naive loop, the evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from csekit import CsekitError
from csekit.evaluation.representation import (
    RepresentationEvaluator,
    anisotropy,
    effective_rank,
    numerical_rank,
    singular_values,
)
from csekit.evaluation.sts import load_task


def test_rank_of_a_known_low_rank_matrix():
    rng = np.random.default_rng(0)
    low_rank = (rng.standard_normal((60, 3)) @ rng.standard_normal((3, 20))).astype(np.float32)  # rank 3
    assert numerical_rank(low_rank, center=False) == 3
    centered = low_rank - low_rank.mean(axis=0)  # still rank 3, and centering again changes nothing
    assert numerical_rank(centered) == 3
    assert numerical_rank(low_rank + 5.0) == 3  # a shared offset is one more direction uncentered, none centered
    assert numerical_rank(low_rank + 5.0, center=False) == 4
    assert numerical_rank(rng.standard_normal((60, 20))) == 20
    assert numerical_rank(low_rank, tol=1e9) == 0


def test_effective_rank_known_values():
    assert effective_rank(np.eye(7), center=False) == pytest.approx(7.0, rel=1e-12)
    assert effective_rank(3.5 * np.eye(7), center=False) == pytest.approx(7.0, rel=1e-12)  # scale-free
    assert effective_rank(np.outer(np.arange(1.0, 9.0), np.ones(4)), center=False) == pytest.approx(1.0)
    assert effective_rank(np.zeros((5, 3))) == 0.0
    # Roy & Vetterli: exp of the entropy of s / sum(s), here two singular values 3 and 1.
    diag = np.diag([3.0, 1.0])
    p = np.array([0.75, 0.25])
    assert effective_rank(diag, center=False) == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-12)
    np.testing.assert_allclose(singular_values(diag, center=False), [3.0, 1.0])


def test_anisotropy_known_values_and_naive_loop():
    v = np.array([0.3, -1.2, 2.0])
    assert anisotropy(np.tile(v, (6, 1))) == pytest.approx(1.0, abs=1e-12)
    assert anisotropy(np.eye(4)) == pytest.approx(0.0, abs=1e-12)
    assert anisotropy(np.array([[1.0, 2.0], [-2.0, -4.0]])) == pytest.approx(-1.0, abs=1e-12)
    x = np.random.default_rng(1).standard_normal((30, 5)) + 0.7
    x[4] = 0.0  # a zero embedding has cosine 0 with everything
    cosines = [0.0 if not (x[i].any() and x[j].any()) else
               x[i] @ x[j] / np.linalg.norm(x[i]) / np.linalg.norm(x[j])
               for i in range(30) for j in range(30) if i != j]  # fmt: skip
    assert anisotropy(x) == pytest.approx(np.mean(cosines), abs=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        anisotropy(np.ones((1, 3)))


def test_evaluator_on_stsb_dev_sentences(data_dir):
    evaluator = RepresentationEvaluator(data_dir=data_dir)
    (pairs,) = load_task(data_dir, "stsb", "dev")
    assert evaluator.sentences == sorted({*pairs.first, *pairs.second})

    class LowRank:
        def encode(self, texts, *, batch_size=64):
            rng = np.random.default_rng(0)
            return (rng.standard_normal((len(texts), 5)) @ rng.standard_normal((5, 32)) + 3.0).astype(np.float32)

    metrics = evaluator.evaluate(LowRank())
    assert set(metrics) == {"effective_rank", "rank", "anisotropy", "sentences"}
    assert metrics["rank"] == 5 and 1 < metrics["effective_rank"] <= 5
    assert metrics["sentences"] == len(evaluator.sentences)
    assert metrics["anisotropy"] > 0.3  # the shared offset makes every pair point the same way
    assert evaluator.primary_metric == "effective_rank"


def test_evaluator_on_given_sentences():
    evaluator = RepresentationEvaluator(["b", "a", "b", "c"])
    assert evaluator.sentences == ["a", "b", "c"]
    metrics = evaluator.score(np.eye(3, dtype=np.float32))
    assert metrics["anisotropy"] == pytest.approx(0.0, abs=1e-12) and metrics["rank"] == 2  # centered
    with pytest.raises(CsekitError, match="at least 2"):
        RepresentationEvaluator(["only", "only"])
