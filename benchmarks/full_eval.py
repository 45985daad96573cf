"""The full evaluation of one model, part by part, with the wall time of each part.

Parts: the seven STS tasks (test sets, SentEval's "all" for STS12-16), the seven SentEval transfer
tasks in SimCSE's ``test`` setting (10 folds, Adam; minutes to hours on a CPU), alignment and
uniformity, and effective rank / anisotropy (both on STS-B dev). Each part runs on its own, encoding
its own sentences, so its time is what a user waits for it alone; ``csekit eval`` shares encodings
between parts and is faster than the sum. Transfer tasks are timed one by one.

    python benchmarks/full_eval.py                                     # all-MiniLM-L6-v2, everything
    python benchmarks/full_eval.py --model runs/simcse/best --transfer-mode fasttest
    python benchmarks/full_eval.py --model ../shared/models/bert-mini-mlm --sts-tasks stsb \\
        --transfer-tasks mr --limit 200 --output /tmp/smoke       # a check of the script, not numbers

Writes ``benchmarks/results/full-eval-<model>.json`` and ``.md`` unless ``--output`` names another stem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from machine import machine

from csekit import load_encoder
from csekit.evaluation.alignment_uniformity import AlignmentUniformityEvaluator
from csekit.evaluation.representation import RepresentationEvaluator
from csekit.evaluation.sts import TITLES, STSEvaluator, parse_tasks
from csekit.evaluation.transfer import MODES, TransferEvaluator, parse_transfer_tasks
from csekit.evaluation.transfer import TITLES as TRANSFER_TITLES

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO.parent / "shared" / "models" / "all-MiniLM-L6-v2"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "senteval" / "downstream"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder or hub id (default: %(default)s)")
    parser.add_argument("--pooler", default=None, help="override the model's pooler")
    parser.add_argument("--data-dir", default=os.environ.get("CSEKIT_DATA", str(DEFAULT_DATA)),
                        help="SentEval downstream/ folder (default: $CSEKIT_DATA, else %(default)s)")  # fmt: skip
    parser.add_argument("--sts-tasks", default="sts", help="'sts' (the seven), a comma list, or 'none'")
    parser.add_argument("--transfer-tasks", default="transfer", help="'transfer' (the seven), a comma list, or 'none'")
    parser.add_argument("--transfer-mode", choices=list(MODES), default="test", help="SimCSE's SentEval setting")
    parser.add_argument("--limit", type=int, default=None,
                        help="transfer: keep a seeded subset of N examples a split (checks the script; not SentEval's numbers)")  # fmt: skip
    parser.add_argument("--skip", default="", help="comma list of parts to leave out: align_uniform, rank")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the transfer probes (default 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--output", default=None, help="stem of the .json/.md results (default: benchmarks/results/full-eval-<model>)")
    return parser.parse_args(argv)


def timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def _done(row: dict) -> dict:
    print(f"{row['part']}: {row['headline']} ({row['seconds']:.1f} s)", file=sys.stderr, flush=True)
    return row


def run_parts(args: argparse.Namespace, encoder, device: str) -> list[dict]:
    """One row per part: name, seconds, metrics, headline."""
    common = {"data_dir": args.data_dir, "batch_size": args.batch_size}
    rows = []
    if args.sts_tasks != "none":
        tasks = parse_tasks(args.sts_tasks)
        metrics, seconds = timed(lambda: STSEvaluator(tasks, mode="test", **common).evaluate(encoder))
        rows.append(_done({"part": "sts", "seconds": seconds, "metrics": metrics, "headline": f"avg {metrics['avg']:.2f}"}))
    if args.transfer_tasks != "none":
        options = {"mode": args.transfer_mode, "limit": args.limit, "device": device, "threads": args.threads or 1}
        for task in parse_transfer_tasks(args.transfer_tasks):
            metrics, seconds = timed(lambda t=task: TransferEvaluator([t], **options, **common).evaluate(encoder))
            rows.append(_done({"part": f"transfer/{task}", "seconds": seconds, "metrics": metrics,
                         "headline": f"acc {metrics[task]:.2f}"}))  # fmt: skip
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    if "align_uniform" not in skip:
        metrics, seconds = timed(lambda: AlignmentUniformityEvaluator(**common).evaluate(encoder))
        rows.append(_done({"part": "align_uniform", "seconds": seconds, "metrics": metrics,
                     "headline": f"align {metrics['align']:.4f}, uniform {metrics['uniform']:.4f}"}))  # fmt: skip
    if "rank" not in skip:
        metrics, seconds = timed(lambda: RepresentationEvaluator(**common).evaluate(encoder))
        rows.append(_done({"part": "rank", "seconds": seconds, "metrics": metrics,
                     "headline": f"eff. rank {metrics['effective_rank']:.1f}, anisotropy {metrics['anisotropy']:.4f}"}))  # fmt: skip
    return rows


def markdown(record: dict) -> str:
    lines = [f"model: {record['model']} (pooler {record['pooler']}); device {record['device']}; "
             f"machine: {record['machine']['cpu']}, {record['machine']['cores']} cores",
             f"transfer mode {record['transfer_mode']}" + (f", first {record['limit']} examples a split "
                                                            "(a script check, not SentEval's numbers)" if record["limit"] else ""),
             "", "| part | wall seconds | result |", "| --- | ---: | --- |",
             f"| load model | {record['load_seconds']:.1f} | |"]  # fmt: skip
    for row in record["parts"]:
        lines.append(f"| {row['part']} | {row['seconds']:.1f} | {row['headline']} |")
    lines.append(f"| **total** | **{record['total_seconds']:.1f}** | |")
    parts = {row["part"]: row["metrics"] for row in record["parts"]}
    if "sts" in parts:
        tasks = [task for task in TITLES if task in parts["sts"]]
        lines += ["", "| " + " | ".join(TITLES[t] for t in tasks) + " | avg |", "|" + " ---: |" * (len(tasks) + 1),
                  "| " + " | ".join(f"{parts['sts'][t]:.2f}" for t in tasks) + f" | {parts['sts']['avg']:.2f} |"]  # fmt: skip
    transfer = {key.split("/")[1]: metrics for key, metrics in parts.items() if key.startswith("transfer/")}
    if transfer:
        scores = [metrics[task] for task, metrics in transfer.items()]
        lines += ["", "| " + " | ".join(TRANSFER_TITLES[t] for t in transfer) + " | avg |",
                  "|" + " ---: |" * (len(transfer) + 1),
                  "| " + " | ".join(f"{s:.2f}" for s in scores) + f" | {sum(scores) / len(scores):.2f} |"]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder, load_seconds = timed(lambda: load_encoder(args.model, pooler=args.pooler).to(device))
    parts = run_parts(args, encoder, device)
    shown = os.path.relpath(args.model) if os.path.exists(args.model) else args.model  # no paths of this machine
    record = {"model": shown, "pooler": encoder.pooler.name, "device": device, "machine": machine(),
              "transfer_mode": args.transfer_mode, "limit": args.limit, "load_seconds": load_seconds,
              "total_seconds": load_seconds + sum(row["seconds"] for row in parts), "parts": parts}  # fmt: skip
    text = markdown(record)
    print(text)
    stem = Path(args.output) if args.output else REPO / "benchmarks" / "results" / f"full-eval-{Path(args.model).name}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    stem.with_suffix(".md").write_text(text, encoding="utf-8")
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
