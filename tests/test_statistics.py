"""Statistics for comparing encoders: each function against a naive reference and known cases, the STS
per-pair predictions, and ``csekit eval`` over several models."""

from __future__ import annotations

import json
import statistics as pystats

import numpy as np
import pytest
import yaml
from conftest import make_tiny_encoder
from scipy import stats
from scipy.stats import spearmanr

from csekit.cli.main import main
from csekit.evaluation.compare import EvaluatedModel, compare, run_seed, shared_seeds
from csekit.evaluation.statistics import (
    bootstrap_deltas,
    bootstrap_p_value,
    mean_std,
    paired_bootstrap,
    paired_t_test,
    spearman_rows,
    welch_t_test,
)


def _task(n: int = 60, *, noise: tuple[float, float] = (0.3, 0.3), seed: int = 0):
    """Gold scores and two models' similarities: gold plus noise of the given sizes."""
    rng = np.random.default_rng(seed)
    gold = rng.uniform(0, 5, n).round(1)  # rounded: ties, as in STS gold scores
    return gold + noise[0] * rng.normal(size=n), gold + noise[1] * rng.normal(size=n), gold


# =============================================================================== seeds
def test_mean_std_is_the_sample_deviation():
    values = [56.1, 57.3, 55.9]
    mean, std = mean_std(values)
    assert mean == pytest.approx(pystats.mean(values)) and std == pytest.approx(pystats.stdev(values))
    assert np.isnan(mean_std([3.0])[1])  # one run: no spread to report


def test_paired_t_test_matches_the_formula_and_scipy():
    a, b = [55.0, 56.5, 57.0, 54.8], [56.0, 58.0, 57.5, 56.9]
    d = np.subtract(b, a)
    t = d.mean() / (d.std(ddof=1) / np.sqrt(len(d)))
    result = paired_t_test(a, b)
    assert result.t == pytest.approx(t) and result.p_value == pytest.approx(2 * stats.t.sf(abs(t), len(d) - 1))
    assert result.p_value == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert result.delta == pytest.approx(d.mean()) and result.kind == "paired"


def test_paired_t_test_known_cases():
    assert paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]).p_value == 1.0  # identical runs: no difference
    shifted = paired_t_test([1.0, 2.0, 3.0], [2.0, 3.0, 4.0])  # every seed +1: t infinite
    assert shifted.p_value == 0.0 and shifted.t == np.inf and shifted.delta == 1.0
    with pytest.raises(ValueError):
        paired_t_test([1.0], [2.0])


def test_welch_t_test_matches_the_formula():
    a, b = [55.0, 56.5, 57.0], [58.0, 59.5, 58.1, 60.2]
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    t = (np.mean(b) - np.mean(a)) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch–Satterthwaite
    result = welch_t_test(a, b)
    assert result.t == pytest.approx(t) and result.p_value == pytest.approx(2 * stats.t.sf(abs(t), df))
    assert welch_t_test([1.0, 1.0], [1.0, 1.0]).p_value == 1.0


# =============================================================================== bootstrap
def test_spearman_rows_matches_scipy_with_ties():
    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 5, size=(4, 30)).astype(float), rng.integers(0, 5, size=(4, 30)).astype(float)
    expected = [100 * spearmanr(xi, yi)[0] for xi, yi in zip(x, y)]
    np.testing.assert_allclose(spearman_rows(x, y), expected, rtol=1e-12)


def test_bootstrap_deltas_match_a_loop_over_resamples():
    first, second, gold = _task()
    first_models = np.stack([first, first + 0.1 * np.sin(np.arange(len(gold)))])  # two seeds of method A
    second = second.round(1)  # ties in a model's scores too, besides the copies a resample draws
    indices = np.random.default_rng(3).integers(0, len(gold), size=(25, len(gold)))
    naive = []
    for rows in indices:  # one resample at a time, scipy's Spearman, mean over the method's models
        a = np.mean([spearmanr(model[rows], gold[rows])[0] for model in first_models])
        naive.append(100 * (spearmanr(second[rows], gold[rows])[0] - a))
    np.testing.assert_allclose(bootstrap_deltas(first_models, second, gold, indices), naive, rtol=1e-10)


def test_resample_counts_count_the_draws():
    from csekit.evaluation.statistics import resample_counts

    counts = resample_counts(np.array([[0, 0, 2], [1, 2, 2]]), 3)
    np.testing.assert_array_equal(counts, [[2, 0, 1], [0, 1, 2]])


def test_bootstrap_p_value_counts_the_shifted_tail():
    deltas = np.array([0.5, 1.0, 1.5, 2.0, 3.5, 0.1])
    # distances from 1.5: 1, 0.5, 0, 0.5, 2, 1.4 -> one of six is >= 1.5; the observed sample counts once
    assert bootstrap_p_value(deltas, 1.5) == pytest.approx(2 / 7)


def test_identical_models_have_no_difference():
    first, _, gold = _task()
    result = paired_bootstrap([(first, first.copy(), gold)], resamples=200, seed=0)
    assert result.delta == 0 and result.low == result.high == 0 and result.p_value == 1.0


def test_clearly_different_models_get_the_smallest_p():
    good, bad, gold = _task(200, noise=(0.2, 3.0))
    result = paired_bootstrap([(bad, good, gold)], resamples=300, seed=0)
    observed = 100 * (spearmanr(good, gold)[0] - spearmanr(bad, gold)[0])
    assert result.delta == pytest.approx(observed) and result.delta > 20
    assert result.p_value == pytest.approx(1 / 301)  # no resample crosses zero
    assert result.low < result.delta < result.high and result.low > 0


def test_similar_models_are_not_significant():
    first, second, gold = _task(200, noise=(0.5, 0.5))  # same noise level: any difference is chance
    assert paired_bootstrap([(first, second, gold)], resamples=300, seed=0).p_value > 0.05


def test_per_task_results_share_the_resamples_of_the_average():
    from csekit.evaluation.statistics import paired_bootstrap_tasks

    one, two = _task(seed=1), _task(80, seed=2)
    results = paired_bootstrap_tasks({"one": one, "two": two}, resamples=100, seed=5)
    assert set(results) == {"one", "two", "avg"}
    assert results["avg"] == paired_bootstrap([one, two], resamples=100, seed=5)
    assert results["avg"].delta == pytest.approx((results["one"].delta + results["two"].delta) / 2)


def test_bootstrap_is_deterministic_given_a_seed_and_averages_tasks():
    one, two = _task(seed=1), _task(80, seed=2)
    a = paired_bootstrap([one, two], resamples=100, seed=5)
    assert a == paired_bootstrap([one, two], resamples=100, seed=5)
    assert a != paired_bootstrap([one, two], resamples=100, seed=6)
    # The observed statistic is the mean over tasks of each task's difference.
    per_task = [100 * (spearmanr(s, g)[0] - spearmanr(f, g)[0]) for f, s, g in (one, two)]
    assert a.delta == pytest.approx(np.mean(per_task))


# =============================================================================== groups
def test_run_seed_reads_the_run_config(tmp_path):
    (tmp_path / "run" / "best").mkdir(parents=True)
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"seed": 3}), encoding="utf-8")
    assert run_seed(tmp_path / "run" / "best") == 3 and run_seed(tmp_path / "elsewhere") is None


def test_compare_pairs_seeds_or_falls_back_to_welch():
    def models(values, seeds):
        return [EvaluatedModel(f"m{s}", {"avg": v}, seed=s) for v, s in zip(values, seeds)]

    a, b = models([55.0, 56.0, 57.0], [1, 2, 3]), models([58.0, 56.5, 60.0], [3, 1, 2])
    assert shared_seeds(a, b) == [1, 2, 3]
    paired = compare(a, b, metrics=["avg"])["t_test"]
    # Lined up by seed: (55, 56.5), (56, 60), (57, 58).
    assert paired["kind"] == "paired" and paired["metrics"]["avg"]["p_value"] == pytest.approx(
        paired_t_test([55, 56, 57], [56.5, 60, 58]).p_value)  # fmt: skip
    welch = compare(a, models([58.0, 56.5, 60.0], [4, 5, 6]), metrics=["avg"])["t_test"]
    assert welch["kind"] == "welch"
    assert compare(a[:1], b[:1], metrics=["avg"])["t_test"] is None


def test_sts_predictions_reproduce_the_headline(data_dir):
    from csekit.evaluation.sts import STSEvaluator

    evaluator = STSEvaluator("sts13,stsb", data_dir=data_dir)
    table = make_tiny_encoder("mean").encode(evaluator.sentences, batch_size=256)  # (S, H)
    metrics, predictions = evaluator.score(table), evaluator.predictions(table)
    for task in ("sts13", "stsb"):
        similarity, gold = predictions[task]
        assert len(gold) == metrics[f"{task}/pairs"]
        assert 100 * spearmanr(similarity, gold)[0] == pytest.approx(metrics[task], abs=1e-9)


def test_eval_groups_prints_mean_std_and_a_comparison(data_dir, tmp_path, capsys):
    paths = {}
    for name, seed in (("a1", 1), ("a2", 2), ("b1", 1), ("b2", 2)):
        run = tmp_path / name
        make_tiny_encoder("mean", seed=seed if name[0] == "a" else 10 + seed).save(run / "best")
        (run / "config.yaml").write_text(yaml.safe_dump({"seed": seed}), encoding="utf-8")
        paths[name] = str(run / "best")
    out = tmp_path / "groups.json"
    code = main(["eval", "--group", f"a={paths['a1']},{paths['a2']}", "--group", f"b={paths['b1']},{paths['b2']}",
                 "--tasks", "sts13", "--data-dir", str(data_dir), "--resamples", "50", "--json", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "a (n=2)" in printed and "b (n=2)" in printed and "paired t-test over seeds 1, 2" in printed
    record = json.loads(out.read_text(encoding="utf-8"))
    group_a = record["groups"]["a"]
    values = [m["metrics"]["sts/sts13"] for m in group_a["models"]]
    assert group_a["mean"]["sts/sts13"] == pytest.approx(np.mean(values))
    assert group_a["std"]["sts/sts13"] == pytest.approx(np.std(values, ddof=1))
    (comparison,) = record["comparisons"]
    assert comparison["baseline"] == "a" and comparison["other"] == "b"
    assert comparison["bootstrap"]["sts/sts13"]["delta"] == pytest.approx(
        record["groups"]["b"]["mean"]["sts/sts13"] - group_a["mean"]["sts/sts13"])  # fmt: skip
    assert comparison["t_test"]["kind"] == "paired" and "sts/sts13" in comparison["t_test"]["metrics"]


def test_eval_several_models_without_groups(data_dir, tmp_path, capsys):
    folders = []
    for seed in (1, 2):
        make_tiny_encoder("mean", seed=seed).save(tmp_path / str(seed))
        folders.append(str(tmp_path / str(seed)))
    assert main(["eval", *folders, "--tasks", "stsb", "--mode", "dev", "--data-dir", str(data_dir)]) == 0
    assert "all (n=2)" in capsys.readouterr().out


def test_bad_group_is_a_one_line_error(tmp_path, capsys):
    assert main(["eval", "--group", "nopaths"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("csekit: error:") and "NAME=PATH" in err and err.count("\n") == 1
    assert main(["eval", str(tmp_path), "--group", f"a={tmp_path}"]) == 2
    assert "not both" in capsys.readouterr().err
