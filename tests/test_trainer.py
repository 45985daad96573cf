"""The training loop end to end on a tiny model: CLI, outputs, and a killed run resumed exactly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import (
    SENTENCES,
    assert_trains_like_the_plain_run,
    final_weights,
    make_tiny_encoder,
    train_single_and_two_ranks,
    write_recipe,
)
from safetensors.torch import load_file

from csekit.atomic import replace_dir
from csekit.cli.main import main
from csekit.training import checkpoint as checkpoint_module


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny"
    make_tiny_encoder(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).save(path)
    return path


def test_cli_train_writes_models_config_and_metrics(tmp_path, tiny_model, capsys):
    recipe = write_recipe(tmp_path, tiny_model)
    assert main(["train", str(recipe), "--set", "max_steps=4"]) == 0
    run = tmp_path / "run"
    for name in ("best/modules.json", "final/modules.json", "config.yaml", "metrics.jsonl", "checkpoint/state.json"):
        assert (run / name).is_file(), name
    assert yaml.safe_load((run / "config.yaml").read_text())["max_steps"] == 4  # --set reached the saved config
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["train/loss"] > 0 for r in records)
    # mlp_only_train: the saved model has no Dense module, and the trainer printed where it went.
    assert "Dense" not in (run / "final" / "modules.json").read_text()
    assert "4 steps" in capsys.readouterr().out


def test_training_changes_weights_and_is_deterministic(tmp_path, tiny_model):
    runs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        assert main(["train", str(write_recipe(folder, tiny_model))]) == 0
        runs.append(final_weights(folder / "run"))
    start = load_file(tiny_model / "model.safetensors")
    key = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(runs[0][key], start[key])
    for name in runs[0]:
        assert torch.equal(runs[0][name], runs[1][name]), name


def test_gradient_accumulation_and_cache_run(tmp_path, tiny_model):
    recipe = write_recipe(tmp_path, tiny_model, gradient_accumulation=2, grad_cache_chunk=4, max_steps=2)
    assert main(["train", str(recipe)]) == 0


STEPS = 150  # long enough that a kill or Ctrl-C lands mid-way


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_model) -> dict[str, torch.Tensor]:
    """The final weights of a run that nothing stopped."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    assert main(["train", str(write_recipe(folder, tiny_model, max_steps=STEPS, save_steps=10, logging_steps=50))]) == 0
    return final_weights(folder / "run")


def _start_and_wait(recipe: Path, run: Path, at_step: int) -> subprocess.Popen:
    """Start ``csekit train recipe`` in a process and return once its metrics log reached ``at_step``."""
    command = [sys.executable, "-m", "csekit.cli.main", "train", str(recipe)]
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log, deadline = run / "metrics.jsonl", time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if log.is_file() and log.read_text().count("\n") >= at_step:
            break
        time.sleep(0.02)
    return process


def _logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_killed_run_resumes_to_identical_weights(tmp_path, tiny_model, uninterrupted):
    recipe = write_recipe(tmp_path, tiny_model, max_steps=STEPS, save_steps=10, logging_steps=1)
    process = _start_and_wait(recipe, tmp_path / "run", at_step=25)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    stopped_at = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["train_state"]["step"]
    assert 0 < stopped_at < STEPS and not (tmp_path / "run" / "final").exists()

    assert main(["train", str(recipe), "--resume"]) == 0
    resumed = final_weights(tmp_path / "run")
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name
    assert _logged_steps(tmp_path / "run") == list(range(1, STEPS + 1))  # the steps after the checkpoint once


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_saves_at_the_step_boundary_and_resumes_to_identical_weights(tmp_path, tiny_model, uninterrupted,
                                                                             signal_number):  # fmt: skip
    # No periodic checkpoints: the one to resume from is the one the signal made.
    recipe = write_recipe(tmp_path, tiny_model, max_steps=STEPS, save_steps=0, logging_steps=1)
    process = _start_and_wait(recipe, tmp_path / "run", at_step=20)
    process.send_signal(signal_number)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.startswith("csekit:")]
    assert len(lines) == 1 and "Traceback" not in err and "the checkpoint is saved" in lines[0], err
    stopped_at = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["train_state"]["step"]
    assert f"stopped at step {stopped_at} of {STEPS}" in lines[0] and _logged_steps(tmp_path / "run")[-1] == stopped_at
    assert not (tmp_path / "run" / ".lock").exists()

    assert main(["train", str(recipe), "--resume"]) == 0
    resumed = final_weights(tmp_path / "run")
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name
    assert _logged_steps(tmp_path / "run") == list(range(1, STEPS + 1))


class _Killed(BaseException):
    """Stands for SIGKILL: nothing of csekit catches it."""


def test_a_save_killed_between_its_renames_is_undone_on_resume(tmp_path, tiny_model, monkeypatch, capsys):
    """replace_dir moves the old checkpoint aside, then the new one in: a kill between the two renames leaves
    ``.checkpoint.old`` and the finished staging folder, and no ``checkpoint``."""
    reference = tmp_path / "reference"
    reference.mkdir()
    assert main(["train", str(write_recipe(reference, tiny_model, max_steps=6, save_steps=2))]) == 0
    recipe = write_recipe(tmp_path, tiny_model, max_steps=6, save_steps=2)
    saves = []

    def killed_at_the_second_save(source: Path, target: Path) -> None:
        saves.append(target)
        if len(saves) < 2:
            return replace_dir(source, target)
        os.replace(target, target.with_name(f".{target.name}.old"))
        raise _Killed

    monkeypatch.setattr(checkpoint_module, "replace_dir", killed_at_the_second_save)
    with pytest.raises(_Killed):
        main(["train", str(recipe)])
    monkeypatch.undo()
    run = tmp_path / "run"
    assert not (run / "checkpoint").exists() and (run / ".checkpoint.old").is_dir()
    assert len([path for path in run.iterdir() if path.name.startswith(".checkpoint.")]) == 2  # old + staging
    (run / ".lock").unlink(missing_ok=True)

    capsys.readouterr()
    assert main(["train", str(recipe), "--resume"]) == 0
    assert "the previous one is back" in capsys.readouterr().err
    assert sorted(path.name for path in run.iterdir() if path.name.startswith(".")) == [".csekit-run.json"]
    expected, resumed = final_weights(reference / "run"), final_weights(run)
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), name
    assert _logged_steps(run) == [1, 2, 3, 4, 5, 6]


def test_a_lock_whose_process_is_gone_is_taken_over_and_said_so(tmp_path, tiny_model, capsys):
    recipe = write_recipe(tmp_path, tiny_model, max_steps=2)
    assert main(["train", str(recipe)]) == 0
    finished = subprocess.Popen(["true"])
    finished.wait()
    lock = {"pid": finished.pid, "host": socket.gethostname(), "since": 0}
    (tmp_path / "run" / ".lock").write_text(json.dumps(lock))
    capsys.readouterr()
    assert main(["train", str(recipe), "--resume", "--set", "max_steps=4"]) == 0
    assert f"removed a stale lock of process {finished.pid}" in capsys.readouterr().err
    assert not (tmp_path / "run" / ".lock").exists() and _logged_steps(tmp_path / "run")[-1] == 4


def test_overwrite_replaces_the_run_outputs_only(tmp_path, tiny_model, capsys):
    recipe = write_recipe(tmp_path, tiny_model, max_steps=2)
    assert main(["train", str(recipe)]) == 0
    run = tmp_path / "run"
    (run / "notes.txt").write_text("the user's own notes")
    before = final_weights(run)
    capsys.readouterr()
    assert main(["train", str(recipe), "--overwrite", "--set", "max_steps=4", "--set", "seed=8"]) == 0
    assert "--overwrite: replacing best, final, checkpoint, metrics.jsonl, config.yaml" in capsys.readouterr().err
    assert (run / "notes.txt").read_text() == "the user's own notes"
    assert _logged_steps(run) == [1, 2, 3, 4]
    assert any(not torch.equal(before[name], tensor) for name, tensor in final_weights(run).items())


def test_bad_recipes_fail_with_one_line(tmp_path, tiny_model, capsys):
    recipe = write_recipe(tmp_path, tiny_model, learning_rat=1e-3)
    assert main(["train", str(recipe)]) == 2
    assert "unknown key(s) learning_rat" in capsys.readouterr().err
    recipe = write_recipe(tmp_path, tiny_model)
    assert main(["train", str(recipe), "--set", "batch_size=big"]) == 2
    assert "batch_size must be int" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", str(recipe), "--resume", "--set", f"output_dir={tmp_path / 'fresh'}"]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err


@pytest.mark.parametrize("options", [{}, {"gradient_accumulation": 2}, {"grad_cache_chunk": 2}],
                         ids=["one-micro-batch", "accumulated", "gradient-cache"])  # fmt: skip
def test_two_processes_train_like_one_process_with_the_whole_batch(tmp_path, options):
    """torchrun, 2 gloo ranks x 4 examples == 1 process x 8 examples (negatives gathered across ranks); the
    gradient all-reduce overlaps the last micro-batch's backward, or follows the gradient cache's chunks."""
    one, two, losses = train_single_and_two_ranks(tmp_path, max_steps=3, pooler="mean", **options)
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_malformed_training_line_names_file_and_line_unless_skipped(tmp_path, tiny_model, capsys):
    recipe = write_recipe(tmp_path, tiny_model, max_steps=1)
    data = tmp_path / "train.txt"
    data.write_bytes(data.read_bytes() + b"\n\nbad \xff byte\n" + b"more text .\n" * 8)
    assert main(["train", str(recipe)]) == 2
    error = capsys.readouterr().err.strip()
    assert f"{data}:{len(SENTENCES) + 3}:" in error and len(error.splitlines()) == 1
    # 1 bad line in 57 is more than the 1% a run skips by default: a broken file, not a stray line.
    assert main(["train", str(recipe), "--skip-bad-lines"]) == 2
    assert "1 of 57 lines" in capsys.readouterr().err
    assert main(["train", str(recipe), "--skip-bad-lines", "--set", "max_bad_share=0.05"]) == 0
    assert "2 empty skipped, 1 bad skipped" in capsys.readouterr().err


def test_compare_sts_prints_the_start_and_trained_columns(tmp_path, tiny_model, capsys, data_dir):
    recipe = write_recipe(tmp_path, tiny_model, max_steps=2, pooler="cls", data_dir=str(data_dir))
    assert main(["train", str(recipe), "--compare-sts"]) == 0
    out = capsys.readouterr().out
    assert "start (cls)" in out and "start (mean)" in out and "trained" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.split()[:1] in (["avg"], ["STS-B"])}
    assert len(rows["avg"]) == 3 and all(-100 <= float(value) <= 100 for value in rows["avg"])


@pytest.mark.parametrize(("overrides", "message"), [
    # a key that named a constructor parameter used to crash with "got multiple values for keyword argument"
    (["options.max_length=8"], "objective 'simcse' has no option(s) max_length"),
    (["objective=esimcse", "options.batch_size=8"], "objective 'esimcse' has no option(s) batch_size"),
    # options of another method used to be dropped without a word
    (["options.hard_negative_weight=1.0"], "objective 'simcse' has no option(s) hard_negative_weight"),
    (["pooler=avg"], "unknown pooler 'avg'"),  # used to end in a ValueError traceback
    # an MLM term from a checkpoint without an MLM head used to train a randomly initialised head
    (["wrappers.mlm.weight=0.1"], "has no pretrained masked-LM head"),
])  # fmt: skip
def test_bad_method_settings_are_one_line_errors_and_write_nothing(tmp_path, tiny_model, capsys, overrides, message):
    recipe = write_recipe(tmp_path, tiny_model)
    args = [arg for override in overrides for arg in ("--set", override)]
    assert main(["train", str(recipe), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("csekit: error:") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run" / "final").exists()


def test_the_temperature_option_reaches_the_objective(tmp_path, tiny_model):
    recipe = write_recipe(tmp_path, tiny_model, max_steps=1)
    assert main(["train", str(recipe), "--set", "options.temperature=0.1"]) == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["options"] == {"temperature": 0.1}


def test_best_checkpoint_selection_honours_a_lower_is_better_metric(tmp_path, tiny_model, data_dir):
    recipe = write_recipe(tmp_path, tiny_model, max_steps=4, eval_steps=1, save_steps=0, data_dir=str(data_dir),
                          eval_tasks="align_uniform")  # fmt: skip
    assert main(["train", str(recipe)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    dev = [(row["step"], row["dev/align_uniform/uniform"], row["dev/best"]) for row in rows if "dev/best" in row]
    assert [best for _, _, best in dev] == [min(value for _, value, _ in dev[: i + 1]) for i in range(len(dev))]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["eval_metric"] == "align_uniform/uniform"


def test_a_compiled_backbone_trains_like_the_eager_one(tmp_path):
    """compile: true (inductor) gives the eager run's weights and losses, under the same saved names (compiled
    in place). Dropout off: compiled dropout draws its masks from another generator, not other math."""
    assert_trains_like_the_plain_run(tmp_path, compile=True)
