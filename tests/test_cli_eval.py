"""``csekit eval`` smoke runs on a tiny random encoder, and its one-line errors."""

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
    assert {"model", "pooler", "mode", "seconds", "metrics"} <= set(record)
    assert record["model"] == tiny_model and record["pooler"] == "mean" and record["mode"] == "test"
    metrics = record["metrics"]
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
    metrics = json.loads(out.read_text(encoding="utf-8"))["metrics"]
    assert metrics["stsb/pairs"] == 1500 and metrics["sickr/pairs"] == 500  # dev and trial, not test


def test_eval_pooler_override(tiny_model, data_dir, capsys):
    assert main(["eval", tiny_model, "--tasks", "stsb", "--mode", "dev", "--pooler", "max",
                 "--data-dir", str(data_dir)]) == 0  # fmt: skip
    assert "pooler max" in capsys.readouterr().out


def test_missing_data_dir_is_a_one_line_error(tiny_model, tmp_path, capsys):
    missing = tmp_path / "no-data"
    assert main(["eval", tiny_model, "--tasks", "sts13", "--data-dir", str(missing)]) == 2
    err = _one_line_error(capsys)
    assert str(missing) in err and "csekit data fetch" in err


def test_missing_model_is_a_one_line_error(data_dir, tmp_path, capsys):
    missing = str(tmp_path / "no" / "model")
    assert main(["eval", missing, "--tasks", "stsb", "--mode", "dev", "--data-dir", str(data_dir)]) == 2
    assert missing in _one_line_error(capsys)


def test_unknown_task_is_a_one_line_error(tiny_model, data_dir, capsys):
    assert main(["eval", tiny_model, "--tasks", "sts13,sts99", "--data-dir", str(data_dir)]) == 2
    assert "sts99" in _one_line_error(capsys)


def test_dev_mode_with_a_yearly_task_is_a_one_line_error(tiny_model, data_dir, capsys):
    assert main(["eval", tiny_model, "--tasks", "sts12", "--mode", "dev", "--data-dir", str(data_dir)]) == 2
    assert "only a test set" in _one_line_error(capsys)
