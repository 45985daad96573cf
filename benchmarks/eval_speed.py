"""Time csekit's STS evaluation against the plain sentence-transformers loop a user would write.

Both methods run end to end in one process on the same data (read with csekit's readers, so both
score exactly the same pairs), and both include loading the model:

- csekit: ``load_encoder`` + ``STSEvaluator(tasks, mode="test")`` + ``evaluate``. Each distinct sentence
  is encoded once, in length-sorted batches of 128.
- plain: ``SentenceTransformer(model)``, then for every subset ``encode(first sentences)`` and
  ``encode(second sentences)`` (as SentEval does: no deduplication; sentence-transformers' default
  batch size, 32), cosine, ``scipy.stats.spearmanr``; STS12-16 pool their subsets (SentEval's "all").

The seven-task averages of the two must agree: any difference comes from float32 noise between
batchings, which only matters where cosines tie (identical sentences: exactly 1.0 in csekit, 1 ± 1e-7
in the plain loop), and is far below the two decimals papers report.

    python benchmarks/eval_speed.py                       # the full run (minutes on a laptop CPU)
    python benchmarks/eval_speed.py --tasks sts13 --limit-pairs 200   # a smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from machine import machine
from scipy.stats import spearmanr
from sentence_transformers import SentenceTransformer

from csekit import load_encoder
from csekit.evaluation import sts
from csekit.evaluation.sts import TITLES, STSEvaluator, parse_tasks

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "senteval" / "downstream"
#: How far apart the two methods' seven-task averages may be (×100 scale); see the module docstring.
AGREEMENT = 2e-4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", default=str(DEFAULT_MODEL), help="sentence-transformers folder (default: %(default)s)"
    )
    parser.add_argument("--data-dir", default=os.environ.get("CSEKIT_DATA", str(DEFAULT_DATA)),
                        help="SentEval downstream/ folder (default: $CSEKIT_DATA, else %(default)s)")  # fmt: skip
    parser.add_argument("--tasks", default="sts", help="'sts' (the seven) or a comma list")
    parser.add_argument("--limit-pairs", type=int, default=None,
                        help="keep the first N pairs of each subset: for checking the script, not for numbers")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="runs of each method; the median is reported")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ methods
def run_csekit(model: str, tasks: list[str], data_dir: str, device: str) -> dict:
    start = time.perf_counter()
    encoder = load_encoder(model).to(device)
    evaluator = STSEvaluator(tasks, mode="test", data_dir=data_dir)
    metrics = evaluator.evaluate(encoder)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "sentences": len(evaluator.sentences),
            "scores": {task: metrics[task] for task in tasks}, "avg": metrics["avg"]}  # fmt: skip


def run_plain(model: str, tasks: list[str], data_dir: str, device: str) -> dict:
    start = time.perf_counter()
    st_model = SentenceTransformer(model, device=device)
    scores, sentences = {}, 0
    for task in tasks:
        similarities, golds = [], []
        for subset in sts.load_task(Path(data_dir), task, "test"):  # csekit's reader: the same pairs
            first = st_model.encode(subset.first, convert_to_numpy=True)  # (N, H), batch size 32
            second = st_model.encode(subset.second, convert_to_numpy=True)
            sentences += len(subset.first) + len(subset.second)
            first, second = first.astype(np.float64), second.astype(np.float64)
            norms = np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1)
            similarities.append((first * second).sum(axis=1) / norms)
            golds.append(subset.gold)
        # One subset for STS-B and SICK-R; STS12-16 pool all subsets' pairs, as SentEval's "all".
        scores[task] = 100 * float(spearmanr(np.concatenate(similarities), np.concatenate(golds))[0])
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "sentences": sentences,
        "scores": scores,
        "avg": float(np.mean(list(scores.values()))),
    }


def warm_up(model: str, device: str) -> None:
    """Load and run both models once, untimed: lazy imports and thread pools start before the clock."""
    texts = ["a man is playing a guitar .", "a woman is slicing an onion ."]
    load_encoder(model).to(device).encode(texts)
    SentenceTransformer(model, device=device).encode(texts)


def limit_pairs(limit: int) -> None:
    """Make every reader keep the first ``limit`` scored pairs of each subset (both methods read via load_task)."""
    full_load_task = sts.load_task

    def limited(data_dir, task, mode="test", *, verify=True):
        return [
            sts.ScoredPairs(s.name, s.first[:limit], s.second[:limit], s.gold[:limit])
            for s in full_load_task(data_dir, task, mode, verify=verify)
        ]

    sts.load_task = limited  # STSEvaluator and run_plain both look the function up in the module


# ------------------------------------------------------------------------------------------ report
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tasks = parse_tasks(args.tasks)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.limit_pairs is not None:
        limit_pairs(args.limit_pairs)

    warm_up(args.model, device)
    runs: dict[str, list[dict]] = {"csekit": [], "plain": []}
    methods = {"csekit": run_csekit, "plain": run_plain}
    for repeat in range(args.repeats):
        # Alternate the order, so neither method always gets the warm caches.
        order = ["csekit", "plain"] if repeat % 2 == 0 else ["plain", "csekit"]
        for name in order:
            result = methods[name](args.model, tasks, args.data_dir, device)
            runs[name].append(result)
            print(f"repeat {repeat + 1}/{args.repeats} {name}: {result['seconds']:.1f} s", file=sys.stderr)

    summary = {name: {**results[-1], "seconds": statistics.median(r["seconds"] for r in results),
                      "all_seconds": [r["seconds"] for r in results]}
               for name, results in runs.items()}  # fmt: skip
    ratio = summary["plain"]["seconds"] / summary["csekit"]["seconds"]
    difference = abs(summary["csekit"]["avg"] - summary["plain"]["avg"])
    info = machine()

    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, torch threads {info['torch_threads']}, device {device}"
          + (f" ({info['gpu']})" if "gpu" in info else ""))  # fmt: skip
    print(f"model: {args.model}; tasks: {','.join(tasks)}; repeats: {args.repeats}"
          + (f"; first {args.limit_pairs} pairs of each subset" if args.limit_pairs else ""))  # fmt: skip
    if args.limit_pairs:
        # A few hundred sentences of mixed lengths fill one or two of csekit's 128-sentence batches, padded
        # to the longest; on the full data length-sorted batches hold similar lengths. Check, don't quote.
        print("note: --limit-pairs runs check the script; their timings are not representative")
    print()
    print("| method | wall seconds (median) | sentences encoded | STS avg |")
    print("| --- | ---: | ---: | ---: |")
    labels = {"csekit": "csekit (load_encoder + STSEvaluator.evaluate)",
              "plain": "plain (SentenceTransformer.encode per pair side + scipy)"}  # fmt: skip
    for name in ("csekit", "plain"):
        result = summary[name]
        print(f"| {labels[name]} | {result['seconds']:.1f} | {result['sentences']} | {result['avg']:.4f} |")
    print(f"\nratio plain/csekit: {ratio:.2f}x")
    print("\n| task | csekit | plain | difference |")
    print("| --- | ---: | ---: | ---: |")
    for task in tasks:
        a, b = summary["csekit"]["scores"][task], summary["plain"]["scores"][task]
        print(f"| {TITLES[task]} | {a:.4f} | {b:.4f} | {abs(a - b):.1e} |")
    agree = difference <= AGREEMENT
    print(
        f"\naverages agree: {'yes' if agree else 'NO'} (|difference| {difference:.1e}, tolerance {AGREEMENT:.0e})"
    )

    if args.json_path:
        record = {"machine": info, "device": device, "model": os.path.relpath(args.model) if os.path.exists(args.model) else args.model, "tasks": tasks, "repeats": args.repeats,
                  "limit_pairs": args.limit_pairs, "methods": summary, "ratio_plain_over_csekit": ratio,
                  "avg_difference": difference, "agree": agree}  # fmt: skip
        Path(args.json_path).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
