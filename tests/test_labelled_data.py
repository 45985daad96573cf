"""Labelled pairs: SentEval's STS-B, SICK and SNLI layouts, score and label columns in any format, the
targets in batches, and the test sets refused as training files by their checksum."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_encoder

from csekit.data.batches import TrainingData
from csekit.data.labelled import NLI_LABELS, SNLI_TEST_FILES, held_out_files
from csekit.data.readers import ReadStats, read_examples
from csekit.errors import CsekitError

PAIR, SCORED, NLI = ("sent0", "sent1"), ("sent0", "sent1", "score"), ("sent0", "sent1", "label")
SICK_HEADER = "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n"


def write(path: Path, text: str | bytes) -> Path:
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def read(spec, columns, **options) -> list[dict[str, str]]:
    """``read_examples`` with the score and label among ``columns`` read as targets."""
    texts = tuple(column for column in columns if column not in ("score", "label"))
    targets = tuple(column for column in columns if column in ("score", "label"))
    return list(read_examples(spec, columns=texts, targets=targets, **options))


def snli(folder: Path, premises: str, hypotheses: str, labels: str, split: str = "dev") -> str:
    folder.mkdir(exist_ok=True)
    for name, text in (("s1", premises), ("s2", hypotheses), ("labels", labels)):
        write(folder / f"{name}.{split}", text)
    return f"snli:{folder / f's1.{split}'}"


# ------------------------------------------------------------------ the layouts
def test_stsb_scores_map_onto_zero_to_one_and_extra_fields_are_ignored(tmp_path):
    path = write(tmp_path / "sts.csv", "main\tMSRvid\t2012\t1\t5.000\ta plane .\tan air plane .\n"
                                       "\n"
                                       "main\tMSRvid\t2012\t2\t0.000\ta man .\ta dog .\tsource\tmore\n"
                                       "main\tMSRvid\t2012\t3\t3.800\tx\ty\n")  # fmt: skip
    stats = ReadStats()
    rows = read(f"stsb:{path}", SCORED, stats=stats)
    assert [row["score"] for row in rows] == ["1.0", "0.0", repr(3.8 / 5)]
    assert rows[0]["sent0"] == "a plane ." and rows[1]["sent1"] == "a dog ."
    assert (stats.read, stats.empty) == (3, 1)


def test_sick_scores_labels_and_header(tmp_path):
    path = write(tmp_path / "SICK_train.txt", SICK_HEADER + "1\tA b\tC d\t1.0\tNEUTRAL\r\n2\te\tf\t5\tENTAILMENT\r\n"
                                                            "3\tg\th\t3.5\tCONTRADICTION\r\n")  # fmt: skip
    rows = read(f"sick:{path}", ("sent0", "sent1", "score", "label"))
    assert rows == [{"sent0": "A b", "sent1": "C d", "score": "0.0", "label": "neutral"},
                    {"sent0": "e", "sent1": "f", "score": "1.0", "label": "entailment"},
                    {"sent0": "g", "sent1": "h", "score": "0.625", "label": "contradiction"}]  # fmt: skip
    no_header = write(tmp_path / "no-header.txt", "1\ta\tb\t2\tNEUTRAL\n")
    with pytest.raises(CsekitError, match="SICK's header"):
        read(f"sick:{no_header}", SCORED)


def test_snli_reads_its_three_files_in_step(tmp_path):
    spec = snli(tmp_path / "SNLI", "a man .\nthe dog .\n", "a person .\na cat .\n", "entailment\ncontradiction\n")
    assert read(spec, NLI) == [{"sent0": "a man .", "sent1": "a person .", "label": "entailment"},
                               {"sent0": "the dog .", "sent1": "a cat .", "label": "contradiction"}]  # fmt: skip
    short = snli(tmp_path / "short", "a\nb\n", "c\nd\n", "neutral\n")
    with pytest.raises(CsekitError, match=r"one line per pair.*s1.dev 2, s2.dev 2, labels.dev 1"):
        read(short, NLI)
    with pytest.raises(CsekitError, match="s2.dev is missing"):
        (tmp_path / "short" / "s2.dev").unlink()
        read(short, NLI)
    with pytest.raises(CsekitError, match="name the premises file s1.SPLIT"):
        read(f"snli:{tmp_path / 'SNLI' / 'labels.dev'}", NLI)


def test_a_layout_supplies_only_its_own_columns(tmp_path):
    path = write(tmp_path / "sts.csv", "g\tf\ty\t1\t2.0\ta\tb\n")
    with pytest.raises(CsekitError, match=r"supplies sent0, sent1, score, not label"):
        read(f"stsb:{path}", NLI)
    assert read(f"stsb:{path}", PAIR) == [{"sent0": "a", "sent1": "b"}]  # unscored pairs (GTE) read it too


@pytest.mark.parametrize(
    ("layout", "name", "data", "line", "reason"),
    [
        ("stsb", "sts.csv", "g\tf\ty\t1\t2.0\ta\tb\ng\tf\ty\t2\t2.0\ta\n", 2, "expected 7 tab-separated fields"),
        ("stsb", "sts.csv", "g\tf\ty\t1\tfive\ta\tb\n", 1, "score 'five' is not a number in \\[0, 5\\]"),
        ("stsb", "sts.csv", "g\tf\ty\t1\t5.5\ta\tb\n", 1, "score '5.5' is not a number in \\[0, 5\\]"),
        ("sick", "SICK.txt", SICK_HEADER + "1\ta\tb\t0.5\tNEUTRAL\n", 2, "relatedness '0.5' is not a number in \\[1, 5\\]"),
        ("sick", "SICK.txt", SICK_HEADER + "1\ta\tb\t2\tMAYBE\n", 2, "label 'MAYBE' is not one of entailment"),
        ("sick", "SICK.txt", SICK_HEADER + "1\ta\tb\n", 2, "expected 5 tab-separated fields"),
    ],
)
def test_a_malformed_line_names_its_file_and_line(tmp_path, layout, name, data, line, reason):
    path = write(tmp_path / name, data)
    with pytest.raises(CsekitError, match=rf"{name}:{line}: {reason}") as error:
        read(f"{layout}:{path}", SCORED if layout == "stsb" else ("sent0", "sent1", "score", "label"))
    assert "\n" not in str(error.value)


def test_a_bad_snli_label_or_byte_names_the_file_it_is_in(tmp_path):
    spec = snli(tmp_path / "SNLI", "a\nb\nc\n", "d\ne\nf\n", "neutral\nunsure\nneutral\n")
    with pytest.raises(CsekitError, match=r"labels.dev:2: label 'unsure'"):
        read(spec, NLI)
    spec = snli(tmp_path / "bytes", "a\nb\nc\n", b"d\n\xff\nf\n", "neutral\nneutral\nentailment\n")
    with pytest.raises(CsekitError, match=r"s2.dev:2: not valid UTF-8"):
        read(spec, NLI)
    stats = ReadStats()  # skipped, the three files stay in step
    assert read(spec, NLI, skip_bad_lines=True, stats=stats) == [
        {"sent0": "a", "sent1": "d", "label": "neutral"}, {"sent0": "c", "sent1": "f", "label": "entailment"}]
    assert (stats.read, stats.bad) == (2, 1)


@pytest.mark.parametrize(
    ("name", "data", "line", "reason"),
    [
        ("a.csv", "sent0,sent1,score\na,b,0.5\nc,d,4.2\n", 3, r"score 4.2 is outside \[0, 1\]"),
        ("a.csv", "sent0,sent1,score\na,b,high\n", 2, "score 'high' is not a number"),
        ("a.tsv", "sent0\tsent1\tlabel\na\tb\tyes\n", 2, "label 'yes' is not one of entailment, neutral, contradiction"),
        ("a.jsonl", '{"sent0": "a", "sent1": "b", "score": -0.1}\n', 1, r"outside \[0, 1\]"),
        ("a.jsonl", '{"sent0": "a", "sent1": "b", "score": true}\n', 1, "score is not a string"),
    ],
)
def test_score_and_label_columns_are_checked_in_every_format(tmp_path, name, data, line, reason):
    columns = NLI if "label" in data else SCORED
    with pytest.raises(CsekitError, match=rf"{name}:{line}: .*{reason}"):
        read(write(tmp_path / name, data), columns)


def test_a_text_column_called_label_is_text_unless_read_as_a_target(tmp_path):
    path = write(tmp_path / "a.jsonl", json.dumps({"text": "hi", "label": "whatever", "score": 7}) + "\n")
    assert list(read_examples(path, columns=("text", "label"))) == [{"text": "hi", "label": "whatever"}]
    with pytest.raises(CsekitError, match="score is not a string"):  # a number is a target's privilege
        list(read_examples(path, columns=("text", "score")))


def test_targets_in_plain_files_and_their_canonical_form(tmp_path):
    jsonl = write(tmp_path / "a.jsonl", json.dumps({"sent0": "a", "sent1": "b", "score": 1}) + "\n")
    assert read(jsonl, SCORED) == [{"sent0": "a", "sent1": "b", "score": "1"}]
    tsv = write(tmp_path / "a.tsv", "sent0\tsent1\tlabel\na\tb\t Contradiction \n")
    assert read(tsv, NLI) == [{"sent0": "a", "sent1": "b", "label": "contradiction"}]


# ------------------------------------------------------------------ targets in batches
@pytest.mark.parametrize("streaming", [False, True])
def test_batches_carry_each_pairs_own_target(tmp_path, streaming):
    rows = [(f"first {i}", f"second {i}", i / 9, NLI_LABELS[i % 3]) for i in range(10)]
    path = write(tmp_path / "pairs.jsonl", "".join(json.dumps({"sent0": a, "sent1": b, "score": s, "label": label}) + "\n"
                                                   for a, b, s, label in rows))  # fmt: skip
    encoder = make_tiny_encoder()
    data = TrainingData(path, columns=PAIR, targets=("score", "label"), tokenize=encoder.tokenize,
                        pad_token_id=encoder.pad_token_id, streaming=streaming, text_columns=PAIR)  # fmt: skip
    for batch in data.batches(0, seed=3, batch_size=4):
        scores, labels = batch["targets"]["score"], batch["targets"]["label"]
        assert scores.dtype == torch.float32 and labels.dtype == torch.long and scores.shape == (4,)
        for text, score, label in zip(batch["text"]["sent0"], scores.tolist(), labels.tolist()):
            number = int(text.split()[1])  # the target travels with its own pair through the shuffle
            assert score == pytest.approx(number / 9) and label == number % 3


# ------------------------------------------------------------------ test sets are refused
def refusal(spec) -> str:
    encoder = make_tiny_encoder()
    with pytest.raises(CsekitError) as error:
        TrainingData(spec, columns=PAIR, targets=("score",), tokenize=encoder.tokenize, pad_token_id=0)
    return str(error.value)


def test_every_test_set_is_refused_as_training_data_by_its_checksum(data_dir, tmp_path):
    known = held_out_files()
    assert set(SNLI_TEST_FILES) <= set(known.values())
    for relative in ("STS/STSBenchmark/sts-test.csv", "SICK/SICK_test_annotated.txt", "SNLI/s1.test",
                     "SNLI/labels.test", "STS/STS12-en-test/STS.input.MSRpar.txt", "STS/STS16-en-test/STS.gs.headlines.txt"):  # fmt: skip
        message = refusal(str(data_dir / relative))
        assert f"is the test set {relative}" in message and "\n" not in message, message
    assert "is the test set STS/STSBenchmark/sts-test.csv" in refusal(f"stsb:{data_dir / 'STS/STSBenchmark/sts-test.csv'}")
    assert "SNLI/s1.test" in refusal(f"snli:{data_dir / 'SNLI/s1.test'}")
    # By content, not by name: a renamed copy is refused, a file of the same size but other bytes is not.
    copy = tmp_path / "my-training-pairs.csv"
    shutil.copy(data_dir / "STS/STSBenchmark/sts-test.csv", copy)
    assert "is the test set STS/STSBenchmark/sts-test.csv" in refusal(f"stsb:{copy}")
    size = SNLI_TEST_FILES["SNLI/labels.test"][0]
    lookalike = write(tmp_path / "lookalike.csv", "sent0,sent1,score\n" + "a,b,0.5\n" * ((size - 18) // 8))
    lookalike.write_bytes(lookalike.read_bytes() + b"\n" * (size - lookalike.stat().st_size))
    assert lookalike.stat().st_size == size
    encoder = make_tiny_encoder()
    TrainingData(lookalike, columns=PAIR, targets=("score",), tokenize=encoder.tokenize, pad_token_id=0)


def test_the_train_and_dev_splits_read_whole(data_dir):
    counts = {f"stsb:{data_dir / 'STS/STSBenchmark/sts-train.csv'}": 5749, f"stsb:{data_dir / 'STS/STSBenchmark/sts-dev.csv'}": 1500,
              f"sick:{data_dir / 'SICK/SICK_train.txt'}": 4500, f"sick:{data_dir / 'SICK/SICK_trial.txt'}": 500}  # fmt: skip
    for spec, count in counts.items():
        stats = ReadStats()
        scores = [float(row["score"]) for row in read_examples(spec, columns=PAIR, targets=("score",), stats=stats)]
        assert (stats.read, stats.bad, stats.empty) == (count, 0, 0) and min(scores) == 0.0 and max(scores) == 1.0, spec
    rows = read(f"snli:{data_dir / 'SNLI/s1.dev'}", NLI)
    assert len(rows) == 9842 and {row["label"] for row in rows} == set(NLI_LABELS)


def test_csekit_train_refuses_a_test_set_in_one_line_before_anything_loads(data_dir, tmp_path, capsys):
    from conftest import write_recipe

    from csekit.cli.main import main

    model = tmp_path / "tiny"  # never loaded: the recipe is refused first
    recipe = write_recipe(tmp_path, model, objective="cosent", pooler="mean", mlp_only_train=False,
                          train_files=[f"stsb:{data_dir / 'STS/STSBenchmark/sts-train.csv'}",
                                       f"sick:{data_dir / 'SICK/SICK_test_annotated.txt'}"])  # fmt: skip
    assert main(["train", str(recipe)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "is the test set SICK/SICK_test_annotated.txt" in error, error
    assert not (tmp_path / "run").exists()
