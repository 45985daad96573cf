"""Every bad input through the CLI: exit 2, one line that says what is wrong, no traceback, and every file
that was there before is left as it was (the data-loss cases included). Tiny models, 2-step runs.

Each case prepares a scene in a fresh folder, runs one command, and is checked against a snapshot of every
file of the scene taken just before it ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import asset, make_tiny_encoder, write_recipe

from csekit.cli.main import main


@dataclass
class Scene:
    root: Path
    model: Path  # a tiny saved model
    recipe: Path  # a 2-step recipe training it into root/run
    run: Path  # a finished run of that recipe (with a checkpoint), where the case wants one


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A tiny model and one finished 2-step run, made once and copied into each case's scene."""
    root = tmp_path_factory.mktemp("bad-input-template")
    make_tiny_encoder(hidden_dropout_prob=0.1).save(root / "tiny")
    recipe = write_recipe(root, root / "tiny", max_steps=2, save_steps=2)
    assert main(["train", str(recipe)]) == 0
    return root


def _scene(template: Path, folder: Path) -> Scene:
    shutil.copytree(template, folder, dirs_exist_ok=True)
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    recipe.update({"model": str(folder / "tiny"), "train_files": [str(folder / "train.txt")],
                   "output_dir": str(folder / "run")})  # fmt: skip
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return Scene(folder, folder / "tiny", folder / "recipe.yaml", folder / "run")


def _snapshot(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()}  # fmt: skip


def _fresh_run(scene: Scene) -> None:
    shutil.rmtree(scene.run)


def _damage(name: str, how: str) -> Callable[[Scene], None]:
    def damage(scene: Scene) -> None:
        path = scene.run / "checkpoint" / name
        data = path.read_bytes()
        if how == "truncate":
            path.write_bytes(data[: len(data) // 2])
        elif how == "flip":
            path.write_bytes(data[:-8] + bytes(255 - b for b in data[-8:]))
        else:
            path.unlink()

    return damage


def _model_without(*names: str) -> Callable[[Scene], None]:
    def strip(scene: Scene) -> None:
        for name in names:
            for path in scene.model.glob(name):
                shutil.rmtree(path) if path.is_dir() else path.unlink()

    return strip


def _truncated_weights(scene: Scene) -> None:
    path = scene.model / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])


def _module_path_outside(scene: Scene) -> None:
    modules = json.loads((scene.model / "modules.json").read_text())
    modules[1]["path"] = "../../elsewhere"
    (scene.model / "modules.json").write_text(json.dumps(modules))


def _foreign_folder(scene: Scene) -> None:
    (scene.root / "mine").mkdir()
    (scene.root / "mine" / "notes.txt").write_text("not csekit's")


def _live_lock(scene: Scene) -> None:
    process = subprocess.Popen(["sleep", "60"])
    scene.process = process  # killed after the case
    (scene.run / ".lock").write_text(json.dumps({"pid": process.pid, "host": os.uname().nodename, "since": 0}))


def _many_bad_lines(scene: Scene) -> None:
    data = scene.root / "train.txt"
    data.write_bytes(data.read_bytes() + b"bad \xff\n")


def _recipe_text(text: str) -> Callable[[Scene], None]:
    def write(scene: Scene) -> None:
        scene.recipe.write_text(text)

    return write


def _file(name: str, text: str) -> Callable[[Scene], None]:
    def write(scene: Scene) -> None:
        (scene.root / name).write_text(text)

    return write


def _earlier_embeddings(scene: Scene) -> None:
    assert main(["encode", str(scene.model), str(scene.root / "train.txt"), "--output", str(scene.root / "out.npy")]) == 0


def _unwritable() -> str:
    return "/proc/csekit-out" if os.geteuid() == 0 else "/csekit-out"  # root writes anywhere but /proc


ENCODE = ["encode", "{model}", "{root}/train.txt"]
TRAIN, EVAL = ["train", "{recipe}"], ["eval", "{model}", "--tasks", "stsb", "--mode", "dev", "--data-dir", "{data}"]
#: id -> (prepare the scene, the command, what the one line must say)
# fmt: off
CASES: dict[str, tuple[Callable[[Scene], None] | None, list[str], str]] = {
    # --- data losses: nothing of the run may go
    "postprocess output holding its input": (None, ["postprocess", "{run}/best", "--method", "ditto", "--head", "0",
                                                    "--output", "{run}"], "holds the input model"),
    "postprocess over a foreign folder": (_foreign_folder, ["postprocess", "{model}", "--method", "ditto", "--head", "0",
                                                            "--output", "{root}/mine"], "files csekit did not write"),
    "fresh train into a finished run": (None, TRAIN, "holds a training run"),
    "refused setting into a finished run": (None, [*TRAIN, "--set", "precision=fp16"], "precision must be one of"),
    # --- silently wrong results before
    "gradient_accumulation 0": (_fresh_run, [*TRAIN, "--set", "gradient_accumulation=0"], "gradient_accumulation must be >= 1"),
    "max_steps 0": (_fresh_run, [*TRAIN, "--set", "max_steps=0"], "max_steps must be >= 1 or null"),
    "max_steps -5": (_fresh_run, [*TRAIN, "--set", "max_steps=-5"], "max_steps must be >= 1 or null"),
    "model without tokenizer files": (_model_without("tokenizer*", "vocab.txt", "special_tokens_map.json"),
                                      EVAL, "has no tokenizer files"),
    "resume with another batch size": (None, [*TRAIN, "--resume", "--set", "batch_size=4"], "batch_size 8 -> 4"),
    "resume with another learning rate": (None, [*TRAIN, "--resume", "--set", "learning_rate=0.01"], "learning_rate 0.001 -> 0.01"),
    "two trainings in one folder": (_live_lock, [*TRAIN, "--resume", "--set", "max_steps=4"], "is in use by another training"),
    "checkpoint bytes altered": (_damage("weights.safetensors", "flip"), [*TRAIN, "--resume"], "was altered after it was written"),
    "skip-bad-lines over a broken file": (_many_bad_lines, [*TRAIN, "--overwrite", "--skip-bad-lines"], "more than the 1% max_bad_share"),
    # --- tracebacks before
    "negative learning rate": (_fresh_run, [*TRAIN, "--set", "learning_rate=-0.001"], "learning_rate must be > 0"),
    "batch size 0": (_fresh_run, [*TRAIN, "--set", "batch_size=0"], "batch_size must be >= 1"),
    "unknown pooler": (_fresh_run, [*TRAIN, "--set", "pooler=avg"], "unknown pooler 'avg'"),
    "empty model folder": (_model_without("*"), EVAL, "has no config.json"),
    "truncated model file": (_truncated_weights, EVAL, "cannot load model"),
    "truncated checkpoint file": (_damage("optimizer.pt", "truncate"), [*TRAIN, "--resume"], "is truncated"),
    "corrupt state.json": (_damage("state.json", "flip"), [*TRAIN, "--resume"], "state.json was altered"),
    "missing optimizer file": (_damage("optimizer.pt", "delete"), [*TRAIN, "--resume"], "optimizer.pt is missing"),
    "resume with another objective": (None, [*TRAIN, "--resume", "--set", "objective=dclr"], "objective 'simcse' -> 'dclr'"),
    "output_dir a file": (None, [*TRAIN, "--set", "output_dir={recipe}"], "is a file; give a folder"),
    "output_dir not writable": (None, [*TRAIN, "--set", f"output_dir={_unwritable()}"], "is not writable"),
    "--json unwritable": (None, [*EVAL, "--json", f"{_unwritable()}/eval.json"], "is not writable"),
    "--json a folder": (None, [*EVAL, "--json", "{root}"], "is a folder; give a file name"),
    "eval --batch-size 0": (None, [*EVAL, "--batch-size", "0"], "--batch-size: must be at least 1, not 0"),
    "modules.json path outside the folder": (_module_path_outside, EVAL, "outside the model folder"),
    "resume and overwrite": (None, [*TRAIN, "--resume", "--overwrite"], "give one of them"),
    "report output a file": (None, ["report", "{run}", "--output", "{recipe}"], "is a file; give a folder"),
    "postprocess output a file": (None, ["postprocess", "{model}", "--method", "ditto", "--head", "0",
                                         "--output", "{recipe}"], "it is a file"),
    "mlm on a checkpoint without a head": (_fresh_run, [*TRAIN, "--set", "wrappers.mlm.weight=0.1"],
                                           "has no pretrained masked-LM head"),
    # --- cases that behaved before: they stay one line
    "unknown recipe key": (_fresh_run, [*TRAIN, "--set", "learning_rat=0.1"], "unknown key(s) learning_rat"),
    "wrong type": (_fresh_run, [*TRAIN, "--set", "batch_size=big"], "batch_size must be int"),
    "missing recipe": (None, ["train", "{root}/missing.yaml"], "does not exist"),
    "no recipe": (None, ["train"], "needs a recipe"),
    "moved key": (_fresh_run, [*TRAIN, "--set", "temperature=0.1"], "temperature moved to options.temperature"),
    "unknown option": (_fresh_run, [*TRAIN, "--set", "options.dup_rate=0.3"], "has no option(s) dup_rate"),
    "unknown task": (None, ["eval", "{model}", "--tasks", "sts99", "--data-dir", "{root}"], "unknown task 'sts99'"),
    "yearly task in dev mode": (None, ["eval", "{model}", "--tasks", "sts12", "--mode", "dev", "--data-dir",
                                       "{root}"], "only a test set"),
    "missing data folder": (None, ["eval", "{model}", "--data-dir", "{root}/no-data"], "csekit data fetch"),
    "missing model": (None, ["eval", "{root}/no/model", "--data-dir", "{data}"], "does not exist"),
    "unknown command": (None, ["predict"], "invalid choice: 'predict'"),
    "not a run folder": (None, ["report", "{root}/tiny"], "not a training run folder"),
    "resume without a checkpoint": (_fresh_run, [*TRAIN, "--resume"], "no checkpoint to resume from"),
    "whitening without a fitting file": (None, ["postprocess", "{model}", "--method", "whitening", "--output",
                                                "{root}/out"], "whitening needs --fit-on"),
    "whitening fitted on a missing file": (None, ["postprocess", "{model}", "--method", "whitening", "--fit-on",
                                                  "{root}/none.txt", "--output", "{root}/out"], "does not exist"),
    "whitening to more dimensions than the model has": (None, ["postprocess", "{model}", "--method", "whitening",
                                                               "--fit-on", "{root}/train.txt", "--dim", "1000",
                                                               "--output", "{root}/out"], "whitening dimension 1000 is outside 1..32"),
    "ditto head out of range": (None, ["postprocess", "{model}", "--method", "ditto", "--head", "99",
                                       "--output", "{root}/out"], "head"),
    "unknown postprocess method": (None, ["postprocess", "{model}", "--method", "pca", "--output", "{root}/out"],
                                   "invalid choice: 'pca'"),
    "report into a foreign folder": (_foreign_folder, ["report", "{run}", "--output", "{root}/mine"],
                                     "files csekit did not write"),
    "report of a missing run": (None, ["report", "{root}/none"], "does not exist"),
    "fresh train into a foreign folder": (_foreign_folder, [*TRAIN, "--set", "output_dir={root}/mine"],
                                          "holds no csekit run"),
    "resume in a foreign folder": (_foreign_folder, [*TRAIN, "--resume", "--set", "output_dir={root}/mine"],
                                   "no checkpoint to resume from"),
    "malformed training line": (_many_bad_lines, [*TRAIN, "--overwrite"], "train.txt:49"),
    "missing training file": (_fresh_run, [*TRAIN, "--set", "train_files=[{root}/none.txt]"], "does not exist"),
    "training file of unknown type": (_fresh_run, [*TRAIN, "--set", "train_files=[{recipe}]"],
                                      "unknown training file type '.yaml'"),
    "unknown objective": (_fresh_run, [*TRAIN, "--set", "objective=simcsee"], "unknown objective 'simcsee'"),
    "unknown precision": (_fresh_run, [*TRAIN, "--set", "precision=fp8"], "precision must be one of"),
    "warmup_ratio 1.5": (_fresh_run, [*TRAIN, "--set", "warmup_ratio=1.5"], "warmup_ratio must be in [0, 1)"),
    "max_length 1": (_fresh_run, [*TRAIN, "--set", "max_length=1"], "max_length must be >= 2"),
    "unknown eval task in a recipe": (_fresh_run, [*TRAIN, "--set", "eval_steps=1", "--set", "eval_tasks=sts99"],
                                      "unknown task 'sts99'"),
    "eval_metric of another family": (_fresh_run, [*TRAIN, "--set", "eval_steps=1", "--set",
                                                   "eval_metric=transfer/avg"], "is not a metric of eval_tasks"),
    "--set without a value": (_fresh_run, [*TRAIN, "--set", "batch_size"], "key=value"),
    "recipe not a mapping": (_recipe_text("- a\n- b\n"), TRAIN, "mapping"),
    "recipe not YAML": (_recipe_text("model: [\n"), TRAIN, "recipe.yaml"),
    "eval with an unknown pooler": (None, [*EVAL, "--pooler", "avg"], "invalid choice: 'avg' (choose from 'cls'"),
    "eval in an unknown mode": (None, [*EVAL, "--mode", "val"], "invalid choice: 'val'"),
    "eval group without paths": (None, ["eval", "--group", "simcse", "--data-dir", "{root}"], "NAME=PATH"),
    # --- encode
    "encode over a file csekit did not write": (_file("out.npy", "mine"), [*ENCODE, "--output", "{root}/out.npy"],
                                                "was not written by csekit encode"),
    "encode over earlier embeddings": (_earlier_embeddings, [*ENCODE, "--output", "{root}/out.npy"],
                                       "--overwrite replaces them"),
    "encode to an unknown format": (None, [*ENCODE, "--output", "{root}/out.csv"], "unknown format '.csv'"),
    "encode a missing input": (None, ["encode", "{model}", "{root}/none.txt", "--output", "{root}/out.npy"],
                               "does not exist"),
    "encode a field the input lacks": (_file("c.jsonl", '{"body": "a text"}\n'),
                                       ["encode", "{model}", "{root}/c.jsonl", "--output", "{root}/out.npy"],
                                       "c.jsonl:1: missing key(s) text"),
    "encode with duplicate ids": (_file("c.csv", "id,text\n1,a\n1,b\n"), ["encode", "{model}", "{root}/c.csv",
                                  "--id-column", "id", "--output", "{root}/out.npy"], "c.csv:3: id '1' occurs twice"),
    "encode --dim beyond the model": (None, [*ENCODE, "--output", "{root}/out.npy", "--dim", "64"], "outside 1..32"),
    "encode binary of 12 dimensions": (None, [*ENCODE, "--output", "{root}/out.npy", "--precision", "binary",
                                              "--dim", "12"], "a multiple of 8"),
    "encode with a token budget below the max length": (None, [*ENCODE, "--output", "{root}/out.npy",
                                                               "--max-tokens", "16"], "give at least 64"),
    "encode in an unknown precision": (None, [*ENCODE, "--output", "{root}/out.npy", "--precision", "int4"],
                                       "invalid choice: 'int4'"),
    "encode on an unknown backend": (None, [*ENCODE, "--output", "{root}/out.npy", "--backend", "tensorrt"],
                                     "invalid choice: 'tensorrt'"),
    # --- index and search
    "index of a file csekit did not write": (None, ["index", "{root}/train.txt", "--output", "{root}/index"],
                                             "it was not written by csekit encode"),
    "index over a foreign folder": (_foreign_folder, ["index", "{root}/out.npy", "--output", "{root}/mine"],
                                    "is not a csekit index"),
    "index setting of another kind": (None, ["index", "{root}/out.npy", "--output", "{root}/index", "--m", "8"],
                                      "a flat index has no setting(s) m"),
    "ivfpq over too few vectors": (_earlier_embeddings, ["index", "{root}/out.npy", "--output", "{root}/index",
                                                         "--kind", "ivfpq"], "needs at least 39936 vectors"),
    "search a folder that is no index": (None, ["search", "{root}/tiny", "a query"], "is not a csekit index"),
    "search -k 0": (None, ["search", "{root}/tiny", "a query", "-k", "0"], "-k: must be at least 1, not 0"),
    # --- csekit serve: refused before it listens
    "serve a missing model": (None, ["serve", "{root}/no/model"], "does not exist"),
    "serve with a token budget below the model length": (None, ["serve", "{model}", "--max-batch-tokens", "63"],
                                                         "token budget 63 is smaller than the model's longest input"),
    "serve on port 70000": (None, ["serve", "{model}", "--port", "70000"], "a port is at most 65535, not 70000"),
    "serve with an empty API key": (None, ["serve", "{model}", "--api-key", " "], "--api-key is empty"),
    "serve with a negative grace period": (None, ["serve", "{model}", "--graceful-timeout", "-1"],
                                           "--graceful-timeout: must be at least 0"),
    "serve with no inputs allowed": (None, ["serve", "{model}", "--max-inputs", "0"], "--max-inputs: must be at least 1"),
}
# fmt: on


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_and_loses_nothing(case, template, tmp_path, capsys):
    prepare, argv, message = CASES[case]
    scene = _scene(template, tmp_path / "scene")
    if prepare is not None:
        prepare(scene)
    before = _snapshot(scene.root)
    capsys.readouterr()
    names = {"recipe": scene.recipe, "model": scene.model, "run": scene.run, "root": scene.root}
    if any("{data}" in arg for arg in argv):
        names["data"] = asset("senteval")  # SentEval's data, or a skip naming it
    try:
        try:
            code = main([arg.format(**names) for arg in argv])
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code
    finally:
        if hasattr(scene, "process"):
            scene.process.kill()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("csekit:")]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1 and lines[0].startswith("csekit: error:"), err
    assert message in lines[0], lines[0]
    after = _snapshot(scene.root)
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    assert not changed, f"{case} changed or removed {changed}"
