"""The local ladder: train recipes from the raw BERT-mini on 2 CPU cores over several seeds, then score
each run's best checkpoint (chosen on STS-B dev) on the seven STS test sets.

    python benchmarks/ladder.py --recipes recipes/simcse-cpu.yaml recipes/simcse-sup-cpu.yaml \
        --seeds 1 2 3 --baseline benchmarks/results/poolers-bert-mini-mlm.json \
        --json benchmarks/results/simcse-ladder.json

Prints one row per recipe: STS test average (mean ± std over seeds), each task's mean, the best
STS-B dev score, and training sentences per second. ``--baseline`` adds the untrained model's best
pooler (from benchmarks/poolers.py) as the row to beat. Test sets are only scored, never used to choose.

``--json`` is rewritten after every run, and runs already in it (same recipe, seed and overrides) are
not trained again: an interrupted ladder continues where it stopped, a killed run from its last
checkpoint (its sent/s then covers the resumed part only, and is left out if nothing was left to
train). Runs of recipes not named this time stay in the file. ``--include`` adds the rows of earlier ladders (e.g. a SimCSE baseline trained
with the same budget, or a recipe trained with other ``--set`` options, labelled:
``--include "best pair=consert-best.json"``) to the table. ``--evaluate NAME=MODEL`` scores a trained model
as it is, with the same evaluation and no training (a distillation teacher), as a row of its own, kept in
the JSON like the runs. ``--no-train`` prints the table of the runs the JSON holds for the recipes and
seeds named, training nothing (recipes run over different seeds, in one table).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import traceback
from pathlib import Path

from csekit.evaluation.sts import TASKS, TITLES, STSEvaluator
from csekit.models import load_encoder
from csekit.training.config import TrainConfig
from csekit.training.trainer import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every recipe")
    parser.add_argument("--runs-dir", default="runs/ladder")
    parser.add_argument("--baseline", help="JSON written by benchmarks/poolers.py")
    parser.add_argument("--json")
    parser.add_argument("--include", nargs="*", default=[], metavar="[LABEL=]JSON",
                        help="earlier ladders to show first; LABEL marks their rows, e.g. other options")  # fmt: skip
    parser.add_argument("--evaluate", nargs="*", default=[], metavar="NAME=MODEL",
                        help="models scored as they are (no training), e.g. a distillation teacher")  # fmt: skip
    parser.add_argument("--no-train", action="store_true", help="only print the runs the JSON already holds")
    args = parser.parse_args()

    evaluator = None
    rows = {}
    included = {}
    for earlier in args.include:
        label, _, path = earlier.rpartition("=")
        runs = json.loads(Path(path).read_text())["runs"]
        included.update({f"{name} ({label})" if label else name: seeds for name, seeds in runs.items()})
    done = {}
    if args.json and Path(args.json).is_file():
        saved = json.loads(Path(args.json).read_text())
        if saved.get("overrides") == args.overrides:
            done = saved["runs"]
    for entry in args.evaluate:
        name, _, model = entry.partition("=")
        if done.get(name):
            rows[name] = done[name]
            continue
        start = time.perf_counter()
        evaluator = evaluator or STSEvaluator(TASKS, data_dir=TrainConfig.from_yaml(args.recipes[0]).data_dir)
        metrics = evaluator.evaluate(load_encoder(model))
        rows[name] = [{"seed": None, "model": model, "best_dev": None, "best_step": None, "steps": 0,
                       "examples_per_s": None, "minutes": (time.perf_counter() - start) / 60,
                       "sts": {task: metrics[task] for task in (*TASKS, "avg")}}]  # fmt: skip
        print(f"{name}: STS avg {metrics['avg']:.2f} (evaluated as it is)", flush=True)
    for recipe in args.recipes:
        name = Path(recipe).stem
        for seed in args.seeds:
            previous = [run for run in done.get(name, []) if run["seed"] == seed]
            if previous:
                rows.setdefault(name, []).append(previous[0])
                continue
            if args.no_train:
                continue
            output = Path(args.runs_dir) / f"{name}-seed{seed}"
            config = TrainConfig.from_yaml(recipe, [*args.overrides, f"seed={seed}", f"output_dir={output}"])
            start = time.perf_counter()
            resume = (output / "checkpoint" / "state.json").is_file()  # a killed ladder: go on from there
            try:
                result = train(config, resume=resume)
            except Exception:  # one broken recipe must not cost the other runs of a long ladder
                traceback.print_exc()
                print(f"{name} seed {seed}: FAILED (not recorded; fix and rerun to resume)", flush=True)
                continue
            minutes = (time.perf_counter() - start) / 60
            evaluator = evaluator or STSEvaluator(TASKS, data_dir=config.data_dir)
            metrics = evaluator.evaluate(load_encoder(str(output / "best")))
            # The run's eval.json, as `csekit eval RUN/best --json RUN/eval.json` writes it (csekit report reads it).
            record = {"model": str(output / "best"), "mode": "test", "metrics": metrics}
            (output / "eval.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            run = {"seed": seed, "best_dev": result.best_metric, "best_step": result.best_step, "steps": result.steps,
                   "examples_per_s": result.examples_per_second or None, "minutes": minutes,
                   "sts": {task: metrics[task] for task in (*TASKS, "avg")}}  # fmt: skip
            rows.setdefault(name, []).append(run)
            print(f"{name} seed {seed}: STS avg {metrics['avg']:.2f}, dev {result.best_metric:.2f} "
                  f"(step {result.best_step}), {minutes:.1f} min", flush=True)  # fmt: skip
            if args.json:
                _write_json(args.json, args.seeds, args.overrides, _merged(done, rows))

    print("\nSTS test, Spearman x100 (STS12-16 'all'), mean over seeds " + ", ".join(map(str, args.seeds)) + "\n")
    print("| run | " + " | ".join(TITLES[t] for t in TASKS) + " | avg (mean ± std) | STS-B dev | sent/s |")
    print("| --- |" + " ---: |" * (len(TASKS) + 3))
    if args.baseline:
        baseline = json.loads(Path(args.baseline).read_text())["results"]
        pooler, metrics = max(baseline.items(), key=lambda item: item[1]["avg"])
        print(f"| untrained ({pooler}) | " + " | ".join(f"{metrics[t]:.2f}" for t in TASKS) + f" | {metrics['avg']:.2f} | | |")
    for name, runs in (included | rows).items():
        means = [statistics.mean(r["sts"][t] for r in runs) for t in TASKS]
        averages = [r["sts"]["avg"] for r in runs]
        spread = statistics.stdev(averages) if len(averages) > 1 else 0.0
        devs = [r["best_dev"] for r in runs if r["best_dev"] is not None]  # none for a model scored as it is
        dev = f"{statistics.mean(devs):.2f}" if devs else ""
        speeds = [r["examples_per_s"] for r in runs if r["examples_per_s"]]  # None: resumed after its last step
        speed = f"{statistics.median(speeds):.1f}" if speeds else ("" if not devs else "nan")
        average = f"{statistics.mean(averages):.2f}" + (f" ± {spread:.2f}" if devs else "")  # no seeds: no spread
        print(f"| {name} | " + " | ".join(f"{m:.2f}" for m in means) + f" | {average} | {dev} | {speed} |")
    if args.json:
        _write_json(args.json, args.seeds, args.overrides, _merged(done, rows))


def _merged(done: dict, rows: dict) -> dict:
    """The runs of the file and of this ladder, by recipe and seed: a ladder over other seeds keeps the file's."""
    merged = {name: list(runs) for name, runs in done.items()}
    for name, runs in rows.items():
        seeds = {run["seed"] for run in runs}
        merged[name] = sorted([run for run in merged.get(name, []) if run["seed"] not in seeds] + runs,
                              key=lambda run: run["seed"])  # fmt: skip
    return merged


def _write_json(path: str, seeds: list[int], overrides: list[str], runs: dict) -> None:
    temporary = Path(path).with_suffix(".tmp")
    temporary.write_text(json.dumps({"seeds": seeds, "overrides": overrides, "runs": runs}, indent=1) + "\n")
    temporary.replace(path)


if __name__ == "__main__":
    main()
