"""STS evaluation: readers, the checksum manifest, SentEval's aggregates, and an independent recomputation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr

from csekit import CsekitError, load_encoder
from csekit.data.senteval import manifest, resolve_data_dir, verify_files
from csekit.evaluation.sts import (
    EXPECTED_PAIRS,
    TASKS,
    YEARLY_SUBSETS,
    STSEvaluator,
    cosine_rows,
    parse_tasks,
    read_split_file,
    read_sts_subset,
)


def _write(path: Path, lines: list[str], *, newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(newline.join(lines).encode("utf-8") + newline.encode())
    return path


# =========================================================================================== readers
def test_sts_subset_reads_pairs_and_normalises_whitespace(tmp_path):
    inputs = _write(tmp_path / "STS.input.x.txt", ["a  man\tis  here ", "two dogs\trun"])
    gold = _write(tmp_path / "STS.gs.x.txt", ["4.2", "1"])
    pairs = read_sts_subset(inputs, gold, name="x")
    assert pairs.name == "x"
    # SentEval splits on whitespace and SimCSE's batcher joins with single spaces.
    assert pairs.first == ["a man", "two dogs"]
    assert pairs.second == ["is here", "run"]
    np.testing.assert_array_equal(pairs.gold, [4.2, 1.0])
    assert pairs.gold.dtype == np.float64


def test_sts_line_without_a_tab_names_file_and_line(tmp_path):
    inputs = _write(tmp_path / "STS.input.x.txt", ["a\tb", "no tab on this line", "c\td"])
    gold = _write(tmp_path / "STS.gs.x.txt", ["1", "2", "3"])
    with pytest.raises(CsekitError, match=rf"{inputs}:2: expected 2 tab-separated"):
        read_sts_subset(inputs, gold)


def test_sts_line_with_three_fields_is_refused(tmp_path):
    inputs = _write(tmp_path / "STS.input.x.txt", ["a\tb\tc"])
    gold = _write(tmp_path / "STS.gs.x.txt", ["1"])
    with pytest.raises(CsekitError, match=rf"{inputs}:1:"):
        read_sts_subset(inputs, gold)


def test_truncated_gold_file_names_both_files(tmp_path):
    inputs = _write(tmp_path / "STS.input.x.txt", ["a\tb", "c\td", "e\tf"])
    gold = _write(tmp_path / "STS.gs.x.txt", ["1", "2"])
    with pytest.raises(CsekitError, match="truncated") as caught:
        read_sts_subset(inputs, gold)
    assert str(inputs) in str(caught.value) and str(gold) in str(caught.value)


def test_blank_gold_scores_are_skipped(tmp_path):
    inputs = _write(tmp_path / "STS.input.x.txt", ["a\tb", "c\td", "e\tf", "g\th"])
    gold = _write(tmp_path / "STS.gs.x.txt", ["1", "", "  ", "4"])
    pairs = read_sts_subset(inputs, gold)
    assert pairs.first == ["a", "g"] and pairs.second == ["b", "h"]
    np.testing.assert_array_equal(pairs.gold, [1.0, 4.0])


def test_non_numeric_gold_score_names_file_and_line(tmp_path):
    inputs = _write(tmp_path / "STS.input.x.txt", ["a\tb", "c\td"])
    gold = _write(tmp_path / "STS.gs.x.txt", ["1", "high"])
    with pytest.raises(CsekitError, match=rf"{gold}:2: gold score 'high' is not a number"):
        read_sts_subset(inputs, gold)


def test_stsb_reader_takes_columns_and_ignores_extra_fields(tmp_path):
    # Some STS-B rows carry 9 fields (source notes after the sentences): columns 4-6 still hold the data.
    path = _write(tmp_path / "sts-test.csv", [
        "main-captions\tMSRvid\t2012test\t0001\t5.000\tA  man is here.\tA man is there.",
        "main-news\theadlines\t2015\t0002\t1.5\tfirst one\tsecond one\tsource-a\tsource-b",
    ])  # fmt: skip
    pairs = read_split_file(path, "stsb")
    assert pairs.first == ["A man is here.", "first one"]
    assert pairs.second == ["A man is there.", "second one"]
    np.testing.assert_array_equal(pairs.gold, [5.0, 1.5])


def test_stsb_row_with_too_few_fields_names_file_and_line(tmp_path):
    path = _write(tmp_path / "sts-test.csv", [
        "g\tf\ty\t1\t5.0\ta\tb",
        "g\tf\ty\t2\t5.0\tonly one sentence",
    ])  # fmt: skip
    with pytest.raises(CsekitError, match=rf"{path}:2: expected at least 7"):
        read_split_file(path, "stsb")


def test_stsb_non_numeric_score_names_file_and_line(tmp_path):
    path = _write(tmp_path / "sts-test.csv", ["g\tf\ty\t1\tn/a\ta\tb"])
    with pytest.raises(CsekitError, match=rf"{path}:1: gold score"):
        read_split_file(path, "stsb")


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_sick_reader_skips_header_and_handles_crlf(tmp_path, newline):
    # The header's score column is the word "relatedness_score": reading it as data would fail.
    path = _write(tmp_path / "SICK_test_annotated.txt", [
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment",
        "1\tA boy is  running\tA kid runs\t4.5\tENTAILMENT",
        "2\tA cat sleeps\tA dog barks\t1.2\tNEUTRAL",
    ], newline=newline)  # fmt: skip
    pairs = read_split_file(path, "sickr")
    assert pairs.first == ["A boy is running", "A cat sleeps"]
    assert pairs.second == ["A kid runs", "A dog barks"]
    np.testing.assert_array_equal(pairs.gold, [4.5, 1.2])


def test_sick_row_with_too_few_fields_names_file_and_line(tmp_path):
    path = _write(tmp_path / "SICK_test_annotated.txt", [
        "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment",
        "1\tA boy\tA kid\t4.5\tENTAILMENT",
        "2\tA cat sleeps",
    ])  # fmt: skip
    with pytest.raises(CsekitError, match=rf"{path}:3: expected at least 4"):
        read_split_file(path, "sickr")


def test_non_utf8_file_is_a_clear_error(tmp_path):
    inputs = tmp_path / "STS.input.x.txt"
    inputs.write_bytes(b"caf\xe9\tb\n")
    gold = _write(tmp_path / "STS.gs.x.txt", ["1"])
    with pytest.raises(CsekitError, match="not UTF-8"):
        read_sts_subset(inputs, gold)


def test_real_data_has_the_published_pair_counts(data_dir):
    # The counts in shared/README.md, taken from the datasets' own descriptions.
    evaluator = STSEvaluator(TASKS, data_dir=data_dir)
    counts = {task: sum(len(s.gold) for s in subsets) for task, subsets in evaluator.data.items()}
    assert counts == {"sts12": 3108, "sts13": 1500, "sts14": 3750, "sts15": 3000, "sts16": 1186,
                      "stsb": 1379, "sickr": 4927}  # fmt: skip
    dev = STSEvaluator("stsb,sickr", mode="dev", data_dir=data_dir)
    assert {task: len(subsets[0].gold) for task, subsets in dev.data.items()} == {"stsb": 1500, "sickr": 500}
    assert set(EXPECTED_PAIRS) >= {(task, "test") for task in TASKS}


# ========================================================================================== manifest
SOME_FILES = [
    "STS/STS13-en-test/STS.input.FNWN.txt",
    "STS/STS13-en-test/STS.gs.FNWN.txt",
    "SICK/SICK_trial.txt",
]


def _copy_files(data_dir: Path, target: Path, relative_paths: list[str]) -> Path:
    for relative in relative_paths:
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / relative, target / relative)
    return target


def test_verify_files_accepts_intact_copies(data_dir, tmp_path):
    copy = _copy_files(data_dir, tmp_path / "downstream", SOME_FILES)
    verify_files(copy, SOME_FILES)  # raises if anything is off


def test_verify_files_names_a_missing_file_and_how_to_get_data(data_dir, tmp_path):
    copy = _copy_files(data_dir, tmp_path / "downstream", SOME_FILES[1:])
    with pytest.raises(CsekitError) as caught:
        verify_files(copy, SOME_FILES)
    message = str(caught.value)
    assert str(copy / SOME_FILES[0]) in message
    assert "csekit data fetch" in message and "--data-dir" in message


def test_verify_files_refuses_a_truncated_copy(data_dir, tmp_path):
    copy = _copy_files(data_dir, tmp_path / "downstream", SOME_FILES)
    altered = copy / SOME_FILES[0]
    lines = altered.read_text(encoding="utf-8").splitlines(keepends=True)
    altered.write_text("".join(lines[:-1]), encoding="utf-8")
    with pytest.raises(CsekitError, match="altered or truncated") as caught:
        verify_files(copy, SOME_FILES)
    assert str(altered) in str(caught.value)


def test_verify_files_refuses_a_same_size_edit(data_dir, tmp_path):
    # The size check alone would pass: only the sha256 catches a one-character change.
    copy = _copy_files(data_dir, tmp_path / "downstream", SOME_FILES)
    altered = copy / SOME_FILES[1]
    text = altered.read_bytes()
    altered.write_bytes(text[:-2] + (b"9" if text[-2:-1] != b"9" else b"8") + text[-1:])
    assert altered.stat().st_size == manifest()[SOME_FILES[1]]["bytes"]
    with pytest.raises(CsekitError, match="altered or truncated"):
        verify_files(copy, SOME_FILES)


def test_evaluator_refuses_altered_data_before_reading_it(data_dir, tmp_path):
    sts13 = [path for path in manifest() if path.startswith("STS/STS13-en-test/")]
    copy = _copy_files(data_dir, tmp_path / "downstream", sts13)
    STSEvaluator("sts13", data_dir=copy)  # the intact copy loads
    target = copy / "STS/STS13-en-test/STS.gs.OnWN.txt"
    target.write_text(target.read_text(encoding="utf-8").replace("\n", "\n\n", 1), encoding="utf-8")
    with pytest.raises(CsekitError, match="altered or truncated"):
        STSEvaluator("sts13", data_dir=copy)


def test_resolve_data_dir_with_missing_folder_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere" / "downstream"
    with pytest.raises(CsekitError) as caught:
        resolve_data_dir(missing)
    message = str(caught.value)
    assert str(missing) in message and "does not exist" in message and "csekit data fetch" in message
    assert "\n" not in message


def test_resolve_data_dir_reads_the_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("CSEKIT_DATA", str(tmp_path))
    assert resolve_data_dir() == tmp_path
    assert resolve_data_dir(tmp_path / ".") == tmp_path  # an explicit argument wins
    monkeypatch.setenv("CSEKIT_DATA", str(tmp_path / "missing"))
    with pytest.raises(CsekitError, match="does not exist"):
        resolve_data_dir()


# ========================================================================================= aggregates
def _senteval_read_subset(folder: Path, subset: str) -> tuple[list[str], list[str], list[float]]:
    """SentEval's STSEval.loadFile, minus the sort by length (order does not change a correlation)."""
    lines = (folder / f"STS.input.{subset}.txt").read_text(encoding="utf-8").splitlines()
    sent1, sent2 = zip(*[line.split("\t") for line in lines])
    raw_scores = (folder / f"STS.gs.{subset}.txt").read_text(encoding="utf-8").splitlines()
    keep = [i for i, score in enumerate(raw_scores) if score != ""]
    # SimCSE's batcher: " ".join(words) of SentEval's s.split().
    return ([" ".join(sent1[i].split()) for i in keep], [" ".join(sent2[i].split()) for i in keep],
            [float(raw_scores[i]) for i in keep])  # fmt: skip


def _senteval_run(folder: Path, subsets: tuple[str, ...], embed) -> dict:
    """SentEval's STSEval.run: per-subset correlations, pooled "all", plain and pair-weighted means.

    SentEval computes cosines in float32 numpy; here they are float64, the precision csekit uses, so
    the comparison can be exact rather than loose.
    """

    def cosine(u: np.ndarray, v: np.ndarray) -> float:
        with np.errstate(invalid="ignore"):  # a zero vector: 0/0, which nan_to_num makes 0
            return np.nan_to_num(np.dot(u, v) / np.sqrt(np.dot(u, u) * np.dot(v, v)))

    results, all_sys, all_gold = {}, [], []
    for subset in subsets:
        first, second, gold = _senteval_read_subset(folder, subset)
        sys_scores = [cosine(embed(a), embed(b)) for a, b in zip(first, second)]
        all_sys.extend(sys_scores)
        all_gold.extend(gold)
        results[subset] = {"pearson": pearsonr(sys_scores, gold)[0], "spearman": spearmanr(sys_scores, gold)[0],
                           "nsamples": len(sys_scores)}  # fmt: skip
    weights = [results[s]["nsamples"] for s in subsets]
    pearsons = np.array([results[s]["pearson"] for s in subsets])
    spearmans = np.array([results[s]["spearman"] for s in subsets])
    results["all"] = {
        "pearson": {"all": pearsonr(all_sys, all_gold)[0], "mean": np.average(pearsons),
                    "wmean": np.average(pearsons, weights=weights)},
        "spearman": {"all": spearmanr(all_sys, all_gold)[0], "mean": np.average(spearmans),
                     "wmean": np.average(spearmans, weights=weights)},
        "nsamples": sum(weights),
    }  # fmt: skip
    return results


def test_aggregates_match_senteval_reference_on_real_data(data_dir):
    evaluator = STSEvaluator("sts12,sts16", data_dir=data_dir)
    rng = np.random.default_rng(0)
    table = rng.standard_normal((len(evaluator.sentences), 16)).astype(np.float32)
    table[0] = 0.0  # a zero embedding: both sides must score its pairs as cosine 0 (nan_to_num)
    row = {text: i for i, text in enumerate(evaluator.sentences)}
    metrics = evaluator.score(table)

    def embed(text: str) -> np.ndarray:
        return table[row[text]].astype(np.float64)

    for task in ("sts12", "sts16"):
        folder, subsets = YEARLY_SUBSETS[task]
        reference = _senteval_run(data_dir / folder, subsets, embed)
        everything = reference["all"]
        expected = {
            task: 100 * everything["spearman"]["all"],
            f"{task}/pearson": 100 * everything["pearson"]["all"],
            f"{task}/spearman_mean": 100 * everything["spearman"]["mean"],
            f"{task}/spearman_wmean": 100 * everything["spearman"]["wmean"],
            f"{task}/pearson_mean": 100 * everything["pearson"]["mean"],
            f"{task}/pearson_wmean": 100 * everything["pearson"]["wmean"],
            f"{task}/pairs": everything["nsamples"],
        }
        for subset in subsets:
            expected[f"{task}/{subset}/spearman"] = 100 * reference[subset]["spearman"]
            expected[f"{task}/{subset}/pearson"] = 100 * reference[subset]["pearson"]
        for key, value in expected.items():
            assert metrics[key] == pytest.approx(value, abs=1e-9), key
    # The plain, pooled and weighted aggregates are different numbers: a mix-up cannot pass.
    assert len({round(metrics[k], 6) for k in ("sts12", "sts12/spearman_mean", "sts12/spearman_wmean")}) == 3
    assert metrics["avg"] == pytest.approx((metrics["sts12"] + metrics["sts16"]) / 2, abs=1e-12)


def test_single_file_tasks_score_plain_spearman_and_pearson(data_dir):
    evaluator = STSEvaluator("stsb", mode="dev", data_dir=data_dir)
    rng = np.random.default_rng(1)
    table = rng.standard_normal((len(evaluator.sentences), 8)).astype(np.float32)
    metrics = evaluator.score(table)
    lines = (data_dir / "STS/STSBenchmark/sts-dev.csv").read_text(encoding="utf-8").splitlines()
    rows = [line.strip().split("\t") for line in lines]  # SentEval's STSBenchmarkEval.loadFile
    row = {text: i for i, text in enumerate(evaluator.sentences)}
    first = table[[row[" ".join(r[5].split())] for r in rows]]
    second = table[[row[" ".join(r[6].split())] for r in rows]]
    gold = [float(r[4]) for r in rows]
    cosines = [float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in
               zip(first.astype(np.float64), second.astype(np.float64))]  # fmt: skip
    assert metrics["stsb"] == pytest.approx(100 * spearmanr(cosines, gold)[0], abs=1e-9)
    assert metrics["stsb/pearson"] == pytest.approx(100 * pearsonr(cosines, gold)[0], abs=1e-9)
    assert metrics["stsb/pairs"] == 1500
    assert metrics["avg"] == metrics["stsb"]


def test_cosine_rows_scores_a_zero_vector_as_zero():
    first = np.array([[1.0, 0.0], [0.0, 0.0], [3.0, 4.0]], dtype=np.float32)
    second = np.array([[1.0, 1.0], [1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    np.testing.assert_allclose(cosine_rows(first, second), [2**-0.5, 0.0, 1.0], atol=1e-12)


@pytest.mark.parametrize("width", [16, 384, 768])
def test_cosine_of_identical_rows_is_exactly_one(width):
    # Pairs of identical sentences share one embedding row; they must tie at exactly 1.0, as with
    # SentEval's u.v / sqrt(u.u * v.v), or float noise decides their Spearman ranks.
    table = np.random.default_rng(width).standard_normal((2000, width)).astype(np.float32)
    rows = np.random.default_rng(1).integers(0, len(table), 5000)
    assert (cosine_rows(table[rows], table[rows]) == 1.0).all()


def test_each_distinct_sentence_is_encoded_once(data_dir):
    evaluator = STSEvaluator("sts13,stsb", data_dir=data_dir)
    seen: list[list[str]] = []

    class Recorder:
        def encode(self, texts, *, batch_size=64):
            seen.append(list(texts))
            return np.random.default_rng(0).standard_normal((len(texts), 4)).astype(np.float32)

    evaluator.evaluate(Recorder())
    assert len(seen) == 1
    texts = seen[0]
    assert len(texts) == len(set(texts))
    pair_sides = {t for subsets in evaluator.data.values() for s in subsets for t in (*s.first, *s.second)}
    assert set(texts) == pair_sides


# ============================================================== independent path: MiniLM end to end
# A slice of two real tasks (all three STS13 subsets, so the pooled "all" aggregate is exercised, and
# SICK-R with its header): enough pairs to give stable correlations, few enough to encode in seconds.
SLICE_LINES = 40
SLICED_FILES = [f"STS/STS13-en-test/STS.{kind}.{subset}.txt" for subset in YEARLY_SUBSETS["sts13"][1]
                for kind in ("input", "gs")] + ["SICK/SICK_test_annotated.txt"]  # fmt: skip


def _slice_data(data_dir: Path, target: Path) -> Path:
    """The first SLICE_LINES data lines of each file (SICK keeps its header)."""
    for relative in SLICED_FILES:
        keep = SLICE_LINES + (1 if relative.startswith("SICK/") else 0)
        lines = (data_dir / relative).read_text(encoding="utf-8").splitlines(keepends=True)[:keep]
        (target / relative).parent.mkdir(parents=True, exist_ok=True)
        (target / relative).write_text("".join(lines), encoding="utf-8")
    return target


def test_minilm_scores_equal_an_independent_sentence_transformers_computation(data_dir, tmp_path, minilm):
    from sentence_transformers import SentenceTransformer

    sliced = _slice_data(data_dir, tmp_path / "downstream")
    # csekit's public path; verify=False because a slice cannot match the full files' checksums.
    evaluator = STSEvaluator("sts13,sickr", data_dir=sliced, verify=False)
    metrics = evaluator.evaluate(load_encoder(str(minilm)))

    # The plain path: stock sentence-transformers on every pair side, raw files parsed here.
    model = SentenceTransformer(str(minilm), device="cpu")

    def cosines(first: list[str], second: list[str]) -> np.ndarray:
        a = model.encode(first, convert_to_numpy=True).astype(np.float64)
        b = model.encode(second, convert_to_numpy=True).astype(np.float64)
        return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    folder, subsets = YEARLY_SUBSETS["sts13"]
    pooled_cosines, pooled_gold = [], []
    for subset in subsets:
        first, second, gold = _senteval_read_subset(sliced / folder, subset)
        similarity = cosines(first, second)
        pooled_cosines.append(similarity)
        pooled_gold.extend(gold)
        assert metrics[f"sts13/{subset}/spearman"] == pytest.approx(
            100 * spearmanr(similarity, gold)[0], abs=1e-6
        )
    pooled = np.concatenate(pooled_cosines)
    expected = {
        "sts13": 100 * spearmanr(pooled, pooled_gold)[0],
        "sts13/pearson": 100 * pearsonr(pooled, pooled_gold)[0],
    }

    sick = [
        line.strip().split("\t")
        for line in (sliced / "SICK/SICK_test_annotated.txt").read_text().splitlines()[1:]
    ]
    similarity = cosines([" ".join(r[1].split()) for r in sick], [" ".join(r[2].split()) for r in sick])
    gold = [float(r[3]) for r in sick]
    expected.update(
        {"sickr": 100 * spearmanr(similarity, gold)[0], "sickr/pearson": 100 * pearsonr(similarity, gold)[0]}
    )
    expected["avg"] = (expected["sts13"] + expected["sickr"]) / 2

    assert metrics["sts13/pairs"] == len(pooled) and metrics["sickr/pairs"] == SLICE_LINES
    for key, value in expected.items():
        # Spearman depends only on the order of the cosines, which both paths agree on exactly here.
        # Pearson sees the float32 embeddings' last bits, which differ with the batch composition
        # (csekit: 128 deduplicated, length-sorted sentences; sentence-transformers: 32 per pair side);
        # that moves it by ~1e-8 (×100: ~1e-6), so it gets 1e-5.
        tolerance = 1e-5 if key.endswith("pearson") else 1e-6
        assert metrics[key] == pytest.approx(value, abs=tolerance), key
    assert metrics["sts13"] > 50 and metrics["sickr"] > 50, "a trained model: correlations far from chance"


# ========================================================================================= task names
def test_sts_expands_to_the_seven_tasks_in_order():
    assert parse_tasks("sts") == ["sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr"]
    assert parse_tasks("STSB, sts12,stsb") == ["stsb", "sts12"]  # case, spaces and repeats
    assert parse_tasks(["sickr", "sts"]) == ["sickr", "sts12", "sts13", "sts14", "sts15", "sts16", "stsb"]


@pytest.mark.parametrize("spec", ["sts17", "stsb,sick", "mr", "", " , "])
def test_unknown_or_empty_task_names_raise(spec):
    with pytest.raises(CsekitError):
        parse_tasks(spec)


def test_dev_mode_with_a_test_only_task_raises(tmp_path):
    with pytest.raises(CsekitError, match="sts12 has only a test set"):
        STSEvaluator("sts12", mode="dev", data_dir=tmp_path)


def test_unknown_mode_raises(tmp_path):
    with pytest.raises(CsekitError, match="mode"):
        STSEvaluator("stsb", mode="train", data_dir=tmp_path)
