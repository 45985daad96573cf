"""ConSERT's choice of augmentation pair, on STS-B dev only: train the CPU recipe once per pair.

    python benchmarks/consert_pairs.py --json benchmarks/results/consert-pairs.json

By default every unordered pair (the same augmentation twice included) of the five augmentations the
paper compares for unsupervised training (Sec. 5, its heatmap: none, token shuffle, token cutoff,
feature cutoff, dropout; the adversarial attack needs supervision there) is trained for ``--steps``
steps from recipes/consert-cpu.yaml with one seed: 15 runs. ``--names`` narrows the augmentations,
``--pairs a+b c+d`` picks pairs. Each run reports its best STS-B dev Spearman x100 (evaluated every
``--eval-steps`` and at the end): the pair to put in the recipe is the best one here, chosen without
looking at any test set.

Prints the pairs sorted by dev score and the symmetric matrix the paper draws. ``--json`` is rewritten
after every run, and pairs already in it (same steps, seed and overrides) are not trained again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from csekit.training.config import TrainConfig
from csekit.training.trainer import train

UNSUPERVISED = ("none", "token_shuffle", "token_cutoff", "feature_cutoff", "dropout")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/consert-cpu.yaml")
    parser.add_argument("--names", nargs="+", default=list(UNSUPERVISED), help="augmentations to pair")
    parser.add_argument("--pairs", nargs="+", help="explicit pairs such as token_shuffle+feature_cutoff")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every run")
    parser.add_argument("--runs-dir", default="runs/consert-pairs")
    parser.add_argument("--json")
    args = parser.parse_args()

    pairs = [tuple(pair.split("+")) for pair in args.pairs] if args.pairs else list(
        itertools.combinations_with_replacement(args.names, 2))  # fmt: skip
    setting = {"recipe": args.recipe, "steps": args.steps, "eval_steps": args.eval_steps, "seed": args.seed,
               "overrides": args.overrides}  # fmt: skip
    runs: dict[str, dict] = {}
    if args.json and Path(args.json).is_file():
        saved = json.loads(Path(args.json).read_text())
        if saved.get("setting") == setting:
            runs = saved["runs"]

    for first, second in pairs:
        key = f"{first}+{second}"
        if key in runs:
            continue
        output = Path(args.runs_dir) / key
        overrides = [*args.overrides, f"options.augmentations=[{first}, {second}]", f"max_steps={args.steps}",
                     f"eval_steps={args.eval_steps}", f"seed={args.seed}", f"output_dir={output}"]  # fmt: skip
        config = TrainConfig.from_yaml(args.recipe, overrides)
        start = time.perf_counter()
        result = train(config)
        minutes = (time.perf_counter() - start) / 60
        runs[key] = {"best_dev": result.best_metric, "best_step": result.best_step, "minutes": minutes}
        print(f"{key}: STS-B dev {result.best_metric:.2f} (step {result.best_step}), {minutes:.1f} min", flush=True)
        if args.json:
            _write_json(args.json, setting, runs)

    chosen = {f"{a}+{b}" for a, b in pairs}
    ranked = sorted(((key, run) for key, run in runs.items() if key in chosen), key=lambda item: -item[1]["best_dev"])
    print(f"\nSTS-B dev Spearman x100, best over evaluations; {args.steps} steps, seed {args.seed}\n")
    print("| view 1 | view 2 | STS-B dev | best step |")
    print("| --- | --- | ---: | ---: |")
    for key, run in ranked:
        first, second = key.split("+")
        print(f"| {first} | {second} | {run['best_dev']:.2f} | {run['best_step']} |")
    names = list(dict.fromkeys(name for pair in pairs for name in pair))
    print("\n| | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for row in names:
        cells = [runs.get(f"{row}+{col}", runs.get(f"{col}+{row}")) for col in names]
        print(f"| {row} | " + " | ".join(f"{cell['best_dev']:.2f}" if cell else "" for cell in cells) + " |")
    if ranked:
        print(f"\nbest pair on dev: {ranked[0][0]}")


def _write_json(path: str, setting: dict, runs: dict) -> None:
    temporary = Path(path).with_suffix(".tmp")
    temporary.write_text(json.dumps({"setting": setting, "runs": runs}, indent=1) + "\n")
    temporary.replace(path)


if __name__ == "__main__":
    main()
