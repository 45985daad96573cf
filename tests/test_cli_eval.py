"""``csekit eval`` smoke runs on a tiny random encoder (its one-line errors are in test_bad_input.py)."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny_encoder

from csekit.cli.main import main


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("cli") / "tiny"
    make_tiny_encoder("mean").save(folder)
    return str(folder)


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.startswith("csekit: error:")
    assert captured.err.count("\n") == 1, captured.err
    return captured.err


def test_eval_prints_table_and_writes_json(tiny_model, data_dir, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code = main(["eval", tiny_model, "--tasks", "sts13", "--data-dir", str(data_dir), "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "pooler mean" in printed and "mode test" in printed
    lines = printed.splitlines()
    assert any(line.split()[:1] == ["STS13"] for line in lines)
    assert lines[-1].split()[0] == "avg"

    record = json.loads(out.read_text(encoding="utf-8"))
    assert {"schema", "model", "pooler", "settings", "seconds", "results"} <= set(record)
    assert record["model"] == tiny_model and record["pooler"] == "mean" and record["settings"]["mode"] == "test"
    metrics = record["results"]["sts"]
    assert {
        "sts13",
        "sts13/pearson",
        "sts13/spearman_mean",
        "sts13/spearman_wmean",
        "sts13/pairs",
        "avg",
    } <= set(metrics)
    assert {f"sts13/{subset}/spearman" for subset in ("FNWN", "headlines", "OnWN")} <= set(metrics)
    assert metrics["sts13/pairs"] == 1500
    assert metrics["avg"] == metrics["sts13"]
    assert -100 <= metrics["sts13"] <= 100
    # The printed headline is the JSON's, rounded.
    assert f"{metrics['avg']:.2f}" in lines[-1]


def test_eval_dev_mode_runs_stsb_and_sickr(tiny_model, data_dir, tmp_path, capsys):
    out = tmp_path / "dev.json"
    assert main(["eval", tiny_model, "--mode", "dev", "--data-dir", str(data_dir), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mode dev" in printed
    rows = [line.split()[0] for line in printed.splitlines()[3:]]
    assert rows == ["STS-B", "SICK-R", "avg"]
    metrics = json.loads(out.read_text(encoding="utf-8"))["results"]["sts"]
    assert metrics["stsb/pairs"] == 1500 and metrics["sickr/pairs"] == 500  # dev and trial, not test


def test_eval_pooler_override(tiny_model, data_dir, capsys):
    assert main(["eval", tiny_model, "--tasks", "stsb", "--mode", "dev", "--pooler", "max",
                 "--data-dir", str(data_dir)]) == 0  # fmt: skip
    assert "pooler max" in capsys.readouterr().out


def test_repeated_eval_of_a_pretrained_checkpoint_is_bit_identical(bert_mini, data_dir, tmp_path):
    """BERT-mini has no trained pooler head: the one csekit draws for its default cls pooler is seeded."""
    records = []
    for name in ("first", "second"):
        out = tmp_path / f"{name}.json"
        assert main(["eval", str(bert_mini), "--tasks", "stsb", "--mode", "dev", "--data-dir", str(data_dir),
                     "--json", str(out)]) == 0  # fmt: skip
        records.append(json.loads(out.read_text())["results"])
    assert records[0] == records[1]


# ===================================================== transfer, alignment/uniformity, rank families
@pytest.fixture
def one_thread():
    # A tiny encoder gains nothing from intra-op threads; on a busy 2-core machine they cost ~10x.
    from csekit.evaluation.transfer import torch_threads

    with torch_threads(1):
        yield


def test_split_tasks_groups_names_by_family():
    from csekit.evaluation import EvaluationSettings, split_tasks

    assert split_tasks("rank,mr,sts13,transfer,align_uniform", EvaluationSettings()) == {
        "sts": ["sts13"], "transfer": ["mr", "cr", "subj", "mpqa", "sst2", "trec", "mrpc"],
        "align_uniform": ["align_uniform"], "rank": ["rank"],
    }  # fmt: skip
    assert split_tasks("sts,trec", EvaluationSettings(mode="dev")) == {"sts": ["stsb", "sickr"], "transfer": ["trec"]}


@pytest.mark.usefixtures("one_thread")
def test_eval_align_uniform_and_rank_tables(tiny_model, data_dir, tmp_path, capsys):
    out = tmp_path / "space.json"
    assert main(["eval", tiny_model, "--tasks", "rank,align_uniform", "--data-dir", str(data_dir),
                 "--json", str(out)]) == 0  # fmt: skip
    tables = capsys.readouterr().out.split("\n\n")
    assert len(tables) == 2  # one per family, in the fixed family order
    assert tables[0].splitlines()[2].split()[0] == "align" and tables[1].splitlines()[-1].split()[0] == "anisotropy"
    results = json.loads(out.read_text(encoding="utf-8"))["results"]
    metrics = {**results["align_uniform"], **results["rank"]}
    assert {"align", "uniform", "effective_rank", "rank", "anisotropy"} <= set(metrics)
    assert metrics["align"] >= 0 and metrics["uniform"] <= 0 and 1 <= metrics["effective_rank"] <= 32


@pytest.mark.usefixtures("one_thread")
def test_eval_mixes_sts_and_a_subsampled_transfer_task(tiny_model, data_dir, tmp_path, capsys, monkeypatch):
    import dataclasses

    import csekit.cli.eval as eval_command

    # The full TREC protocol is minutes of CPU; 80 examples a split exercise the same path in a second.
    settings_of = eval_command.settings_of
    monkeypatch.setattr(eval_command, "settings_of", lambda args: dataclasses.replace(settings_of(args), limit=80))
    out = tmp_path / "mixed.json"
    assert main(["eval", tiny_model, "--tasks", "sickr,trec", "--mode", "dev", "--transfer-mode", "fasttest",
                 "--data-dir", str(data_dir), "--json", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "transfer fasttest" in printed.splitlines()[0]
    sts_table, transfer_table = printed.split("\n\n")
    assert [line.split()[0] for line in sts_table.splitlines()[3:]] == ["SICK-R", "avg"]
    assert [line.split()[0] for line in transfer_table.splitlines()[2:]] == ["TREC", "avg"]
    record = json.loads(out.read_text(encoding="utf-8"))
    sts, transfer = record["results"]["sts"], record["results"]["transfer"]
    assert record["settings"]["transfer_mode"] == "fasttest"
    assert sts["avg"] == sts["sickr"] and transfer["avg"] == transfer["trec"]
    assert {"trec/dev"} <= set(transfer) and 0 <= transfer["trec"] <= 100


def test_unknown_task_error_names_the_families(tiny_model, tmp_path, capsys):
    assert main(["eval", tiny_model, "--tasks", "mr,sst5", "--data-dir", str(tmp_path)]) == 2
    err = _one_line_error(capsys)
    assert "'sst5'" in err and "transfer" in err and "align_uniform" in err
