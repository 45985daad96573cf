"""STS against embedding width and depth: Matryoshka, 2D Matryoshka and Starbucks against plain training.

    python benchmarks/matryoshka.py --set pooler=mean --seeds 1 2 3 --json benchmarks/results/matryoshka.json

Trains each recipe (default: cosent-cpu.yaml and the same recipe under each wrapper) from the raw BERT-mini
for each seed (``--set`` overrides every recipe's keys alike: ``pooler=mean``), as benchmarks/ladder.py does (best checkpoint on STS-B dev, full width, last layer), then
scores that checkpoint on the seven STS test sets at every (layers kept, width): one encoding pass per depth
(the backbone cut to k layers, as ``load_encoder(path, layers=k)`` loads it), every width read off that one
table (cosine ignores the norm, so a cut prefix needs no renormalising here). A run whose folder already
has ``best/`` is scored, not trained again; ``--json`` is rewritten after every run, so an interrupted
benchmark continues where it stopped. Test sets are only scored, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from machine import describe, machine

from csekit.evaluation.sts import TASKS, STSEvaluator
from csekit.models import load_encoder
from csekit.training.config import TrainConfig
from csekit.training.trainer import train

RECIPES = ["recipes/cosent-cpu.yaml", "recipes/matryoshka-cpu.yaml", "recipes/matryoshka2d-cpu.yaml",
           "recipes/starbucks-cpu.yaml"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--depth-seeds", nargs="+", type=int, default=None,
                        help="seeds of the recipes that train shallower layers (default: --seeds)")  # fmt: skip
    parser.add_argument("--dims", nargs="+", type=int, default=[256, 128, 64, 32, 16])
    parser.add_argument("--layers", nargs="+", type=int, default=[4, 3, 2, 1], help="depths to score (layers kept)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every recipe")
    parser.add_argument("--runs-dir", default="runs/matryoshka")
    parser.add_argument("--json", default="benchmarks/results/matryoshka.json")
    args = parser.parse_args()

    saved = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {}
    runs: dict[str, dict[str, dict]] = saved.get("runs", {}) if saved.get("overrides", []) == args.overrides else {}
    evaluator = None
    depth_seeds = args.seeds if args.depth_seeds is None else args.depth_seeds
    for seed in args.seeds:  # seeds outermost: every method has seed 1 before any has seed 2
        for recipe in args.recipes:
            name = Path(recipe).stem
            trains_depth = bool(TrainConfig.from_yaml(recipe).wrappers.keys() & {"matryoshka2d", "starbucks"})
            if str(seed) in runs.get(name, {}) or (trains_depth and seed not in depth_seeds):
                continue
            tag = "".join(f"-{override.split('=', 1)[-1]}" for override in args.overrides)  # runs of other overrides apart
            output = Path(args.runs_dir) / f"{name}{tag}-seed{seed}"
            config = TrainConfig.from_yaml(recipe, [*args.overrides, f"seed={seed}", f"output_dir={output}"])
            start = time.perf_counter()
            result = None
            if not (output / "best").is_dir():
                result = train(config, resume=(output / "checkpoint" / "state.json").is_file())
            minutes = (time.perf_counter() - start) / 60
            evaluator = evaluator or STSEvaluator(TASKS, data_dir=config.data_dir)
            scores = score_widths_and_depths(evaluator, output / "best", args.layers, args.dims)
            runs.setdefault(name, {})[str(seed)] = {
                "best_dev": result.best_metric if result else None, "best_step": result.best_step if result else None,
                "train_minutes": round(minutes, 2) if result else None, "sts_avg": scores}  # fmt: skip
            full = scores[str(max(args.layers))][str(max(args.dims))]
            print(f"{name} seed {seed}: STS avg {full:.2f} at full size, {minutes:.1f} min", flush=True)
            write(args.json, {"machine": machine(), "overrides": args.overrides, "dims": args.dims, "layers": args.layers,
                              "runs": runs})  # fmt: skip
    print(table(runs, args.dims, args.layers))


def score_widths_and_depths(evaluator: STSEvaluator, model: Path, layers: list[int], dims: list[int]) -> dict:
    """{layers kept: {width: seven-task STS average}} from one encoding pass per depth."""
    scores = {}
    for depth in layers:
        encoder = load_encoder(str(model), layers=depth)
        table = encoder.encode(evaluator.sentences, batch_size=128)  # (S, H)
        scores[str(depth)] = {str(dim): evaluator.score(table[:, :dim])["avg"] for dim in dims}  # (S, dim) each
    return scores


def mean_std(values: list[float]) -> str:
    spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{spread}"


def table(runs: dict, dims: list[int], layers: list[int]) -> str:
    """Two markdown tables: STS against width at full depth, then at every (layers kept, width); a column
    per recipe, mean ± std over its seeds."""
    names = list(runs)
    header = " | ".join(f"{name} (n={len(runs[name])})" for name in names)

    def cells(depth: int, dim: int) -> str:
        return " | ".join(mean_std([run["sts_avg"][str(depth)][str(dim)] for run in runs[name].values()]) for name in names)

    full = max(layers)
    lines = [f"STS against width, all {full} layers", "", f"| dim | {header} |", "| ---: |" + " ---: |" * len(names)]
    lines += [f"| {dim} | {cells(full, dim)} |" for dim in dims]
    lines += ["", "STS at (layers kept, width)", "", f"| layers | dim | {header} |", "| ---: | ---: |" + " ---: |" * len(names)]
    lines += [f"| {depth} | {dim} | {cells(depth, dim)} |" for depth in layers for dim in dims]
    return "\n".join(lines)


def write(path: str, record: dict) -> None:
    temporary = Path(path).with_suffix(".tmp")
    temporary.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    temporary.replace(path)


if __name__ == "__main__":
    print(describe(machine()))
    main()
