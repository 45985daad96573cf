"""What a report shows about one training run, read from its folder (and computed on request).

A run folder, as ``csekit train`` writes it: ``config.yaml``, ``metrics.jsonl`` (``train/*`` and
``dev/*`` per logged step), ``best/``, ``final/``. Evaluation results are reused when saved:

- ``RUN/eval.json``: the evaluation record ``csekit eval RUN/best --json RUN/eval.json`` writes (STS,
  transfer, ...: :mod:`csekit.evaluation.record`);
- ``RUN/align_uniform.json``: alignment and uniformity (STS-B dev) of the starting model, best/ and final/.

With ``compute=True`` what is missing is computed (STS test on best/; alignment and uniformity of
each model that loads) and saved there, so the next report reuses it. The similarity heat map of a
few fixed sentences is always computed from best/: six sentences cost nothing.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from csekit.atomic import write_text
from csekit.errors import CsekitError
from csekit.evaluation.record import EvaluationRecord

#: Three paraphrase pairs: a good encoder shows three bright 2x2 blocks on the diagonal.
HEATMAP_SENTENCES = (
    "A man is playing a guitar.",
    "A person plays an instrument.",
    "A woman is slicing an onion.",
    "Someone is cutting vegetables.",
    "The stock market fell sharply today.",
    "Share prices dropped this afternoon.",
)
EVAL_FILE, ALIGN_UNIFORM_FILE = "eval.json", "align_uniform.json"


@dataclass
class Point:
    """Alignment and uniformity of one model of the run (``label``: start, best or final)."""

    label: str
    step: int
    align: float
    uniform: float


@dataclass
class RunData:
    name: str
    path: Path
    config: dict
    log: list[dict]  # metrics.jsonl rows, in order
    results: dict[str, float] = field(default_factory=dict)  # saved or computed eval metrics, family/metric
    points: list[Point] = field(default_factory=list)
    similarity: np.ndarray | None = None  # (K, K) cosines of HEATMAP_SENTENCES under best/
    notes: list[str] = field(default_factory=list)

    @property
    def last_step(self) -> int:
        return max((row["step"] for row in self.log), default=self.config.get("max_steps") or 0)

    @property
    def dev_key(self) -> str:
        """The metrics.jsonl key of the score that selected best/ (``dev/avg`` in logs of earlier runs)."""
        metric = self.config.get("eval_metric")
        return f"dev/{metric}" if metric and any(f"dev/{metric}" in row for row in self.log) else "dev/avg"

    @property
    def best_dev(self) -> float | None:
        """The best dev score logged: the trainer's running best (its metric's direction), else the highest."""
        bests = [row["dev/best"] for row in self.log if "dev/best" in row]
        scores = [row[self.dev_key] for row in self.log if self.dev_key in row]
        return bests[-1] if bests else (max(scores) if scores else None)

    @property
    def best_step(self) -> int | None:
        """The first step whose dev score equals the best one logged; the last step without dev scores."""
        best = self.best_dev
        if best is None:
            return self.last_step if self.log else None
        return next(row["step"] for row in self.log if row.get(self.dev_key) == best)


def read_log(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise CsekitError(f"{path}:{number}: not a JSON line ({error.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("step"), int):
            raise CsekitError(f"{path}:{number}: expected an object with an integer 'step'")
        rows.append(row)
    return rows


def collect_run(
    run_dir: str | os.PathLike,
    *,
    name: str | None = None,
    compute: bool = False,
    tasks: str = "sts",
    data_dir: str | None = None,
    batch_size: int = 128,
) -> RunData:
    path = Path(run_dir)
    if not path.exists():
        raise CsekitError(f"run folder {path} does not exist")
    if not path.is_dir() or not any((path / part).exists() for part in ("config.yaml", "metrics.jsonl", "best")):
        raise CsekitError(f"{path} is not a training run folder (no config.yaml, metrics.jsonl or best/)")
    config = {}
    if (path / "config.yaml").is_file():
        try:
            config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise CsekitError(f"{path / 'config.yaml'}: not valid YAML: {error}") from None
    log = read_log(path / "metrics.jsonl") if (path / "metrics.jsonl").is_file() else []
    run = RunData(name or path.name, path, config if isinstance(config, dict) else {}, log)
    if not log:
        run.notes.append("no metrics.jsonl: no training curves")
    back = next((later for earlier, later in itertools.pairwise(log) if later["step"] < earlier["step"]), None)
    if back is not None:
        run.notes.append(f"metrics.jsonl goes back to step {back['step']} after a later step: it holds rows of more than "
                         "one run (written before runs locked their folders); the curves mix them")  # fmt: skip
    run.results = EvaluationRecord.read(path / EVAL_FILE).flat() if (path / EVAL_FILE).is_file() else {}
    run.points = [Point(**point) for point in (_read_json(path / ALIGN_UNIFORM_FILE) or {}).get("points", [])]
    best = _model_folder(path)
    if compute:
        _compute_missing(run, best, tasks=tasks, data_dir=data_dir, batch_size=batch_size)
    elif not run.results:
        run.notes.append(f"no saved evaluation: run `csekit report --compute` or "
                         f"`csekit eval {best or path / 'best'} --json {path / EVAL_FILE}`")  # fmt: skip
    if best is not None:
        from csekit.models import load_encoder

        embeddings = load_encoder(str(best)).encode(list(HEATMAP_SENTENCES), normalize=True)  # (K, H), unit rows
        run.similarity = embeddings.astype(np.float64) @ embeddings.T.astype(np.float64)  # (K, K) cosines
    return run


def _compute_missing(run: RunData, best: Path | None, *, tasks: str, data_dir: str | None, batch_size: int) -> None:
    from csekit.evaluation.alignment_uniformity import AlignmentUniformityEvaluator
    from csekit.evaluation.sts import STSEvaluator

    if best is None:
        run.notes.append("no best/ or final/ model: nothing to evaluate")
        return
    sts = STSEvaluator(tasks, mode="test", data_dir=data_dir, batch_size=batch_size)
    if any(f"sts/{task}" not in run.results for task in sts.tasks):
        from csekit.models import load_encoder

        model = load_encoder(str(best))
        record = EvaluationRecord(str(best), model.pooler.name, {"sts": sts.evaluate(model)},
                                  {"tasks": tasks, "mode": "test"})  # fmt: skip
        record.write(run.path / EVAL_FILE)
        run.results.update(record.flat())
    have = {point.label for point in run.points}
    wanted = [label for label in ("start", "best", "final") if label not in have]
    if wanted:
        evaluator = AlignmentUniformityEvaluator(data_dir=data_dir, batch_size=batch_size)
        steps = {"start": 0, "best": run.best_step or run.last_step, "final": run.last_step}
        for label in wanted:
            model = _load_for_point(run, label)
            if model is not None:
                metrics = evaluator.evaluate(model)
                run.points.append(Point(label, steps[label], metrics["align"], metrics["uniform"]))
        run.points.sort(key=lambda point: (point.step, ("start", "best", "final").index(point.label)))
        payload = {"split": "dev", "points": [asdict(point) for point in run.points]}
        write_text(run.path / ALIGN_UNIFORM_FILE, json.dumps(payload, indent=2) + "\n")


def _load_for_point(run: RunData, label: str):
    """best/ or final/ as saved; the starting model as the recipe trained it (pooler; head only if kept)."""
    from csekit.models import load_encoder

    if label != "start":
        folder = run.path / label
        return load_encoder(str(folder)) if folder.is_dir() else None
    start = run.config.get("model")
    if not start:
        return None
    try:
        model = load_encoder(str(start), pooler=run.config.get("pooler"))
    except (CsekitError, OSError, ValueError) as error:
        run.notes.append(f"starting model {start!r} did not load ({error}); alignment/uniformity shown without it")
        return None
    model.head_at_inference = not run.config.get("mlp_only_train", False)
    return model


def _model_folder(path: Path) -> Path | None:
    return next((path / part for part in ("best", "final") if (path / part / "modules.json").is_file()), None)


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CsekitError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    return value if isinstance(value, dict) else None
