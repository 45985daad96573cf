"""Choose ConSERT's or CLEAR's augmentations on STS-B dev only: train the CPU recipe once per candidate.

    python benchmarks/augmentation_pairs.py --recipe recipes/consert-cpu.yaml --json benchmarks/results/consert-pairs.json
    python benchmarks/augmentation_pairs.py --recipe recipes/clear-cpu.yaml --json benchmarks/results/clear-pairs.json

A candidate is the recipe's ``options.augmentations`` list, written ``a+b``. For ConSERT it is the pair
of views (one augmentation each); by default every unordered pair, the same augmentation twice
included, of the five augmentations the paper compares for unsupervised training (Sec. 5, its heatmap:
none, token shuffle, token cutoff, feature cutoff, dropout; the adversarial attack needs supervision
there): 15 runs. For CLEAR it is the composition applied to both views; by default each of the four
augmentations alone and five two-augmentation combinations (substitution or a deletion first,
reordering last; deletion twice and substitution after deletion left out): 9 runs. ``--pairs`` picks candidates. Each run trains ``--steps`` steps with one seed
(not one of the ladder's) and reports its best STS-B dev Spearman x100 (evaluated every
``--eval-steps`` and at the end): the candidate to compare on the ladder is the best one here, chosen
without looking at any test set.

Prints the candidates sorted by dev score (and, for ConSERT, the symmetric matrix the paper draws).
``--json`` is rewritten after every run, and candidates already in it (same setting) are not trained again.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

from csekit.training.config import TrainConfig
from csekit.training.trainer import train

CONSERT = ("none", "token_shuffle", "token_cutoff", "feature_cutoff", "dropout")
CLEAR = ("substitution", "word_deletion", "span_deletion", "reordering", "substitution+word_deletion",
         "substitution+span_deletion", "substitution+reordering", "word_deletion+reordering",
         "span_deletion+reordering")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", required=True, help="a ConSERT or CLEAR recipe")
    parser.add_argument("--pairs", nargs="+", help="candidates such as token_shuffle+feature_cutoff")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for every run")
    parser.add_argument("--runs-dir", default="runs/augmentation-pairs")
    parser.add_argument("--json")
    args = parser.parse_args()

    objective = TrainConfig.from_yaml(args.recipe).objective
    if args.pairs:
        pairs = [tuple(pair.split("+")) for pair in args.pairs]
    elif objective == "consert":
        pairs = list(itertools.combinations_with_replacement(CONSERT, 2))
    elif objective == "clear":
        pairs = [tuple(pair.split("+")) for pair in CLEAR]
    else:
        parser.error(f"{args.recipe} trains {objective}; name the candidates with --pairs")
    setting = {"recipe": args.recipe, "steps": args.steps, "eval_steps": args.eval_steps, "seed": args.seed,
               "overrides": args.overrides}  # fmt: skip
    runs: dict[str, dict] = {}
    if args.json and Path(args.json).is_file():
        saved = json.loads(Path(args.json).read_text())
        if saved.get("setting") == setting:
            runs = saved["runs"]

    for pair in pairs:
        key = "+".join(pair)
        if key in runs:
            continue
        output = Path(args.runs_dir) / f"{objective}-{key}"
        overrides = [*args.overrides, f"options.augmentations=[{', '.join(pair)}]", f"max_steps={args.steps}",
                     f"eval_steps={args.eval_steps}", f"seed={args.seed}", f"output_dir={output}"]  # fmt: skip
        config = TrainConfig.from_yaml(args.recipe, overrides)
        start = time.perf_counter()
        result = train(config)
        minutes = (time.perf_counter() - start) / 60
        runs[key] = {"best_dev": result.best_metric, "best_step": result.best_step, "minutes": minutes}
        print(f"{key}: STS-B dev {result.best_metric:.2f} (step {result.best_step}), {minutes:.1f} min", flush=True)
        if args.json:
            _write_json(args.json, setting, runs)

    chosen = {"+".join(pair) for pair in pairs}
    ranked = sorted(((key, run) for key, run in runs.items() if key in chosen), key=lambda item: -item[1]["best_dev"])
    print(f"\n{objective}: STS-B dev Spearman x100, best over evaluations; {args.steps} steps, seed {args.seed}\n")
    print("| augmentations | STS-B dev | best step |")
    print("| --- | ---: | ---: |")
    for key, run in ranked:
        print(f"| {key.replace('+', ' + ')} | {run['best_dev']:.2f} | {run['best_step']} |")
    if ranked:
        print(f"\nbest on dev: {ranked[0][0]}")
    if objective != "consert":
        return
    names = list(dict.fromkeys(name for pair in pairs for name in pair))
    print("\n| | " + " | ".join(names) + " |")
    print("| --- |" + " ---: |" * len(names))
    for row in names:
        cells = [runs.get(f"{row}+{col}", runs.get(f"{col}+{row}")) for col in names]
        print(f"| {row} | " + " | ".join(f"{cell['best_dev']:.2f}" if cell else "" for cell in cells) + " |")


def _write_json(path: str, setting: dict, runs: dict) -> None:
    temporary = Path(path).with_suffix(".tmp")
    temporary.write_text(json.dumps({"setting": setting, "runs": runs}, indent=1) + "\n")
    temporary.replace(path)


if __name__ == "__main__":
    main()
