"""``csekit eval MODEL``: the STS table of a model, printed and optionally written as JSON."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from csekit.evaluation.sts import TITLES, YEARLY_SUBSETS, STSEvaluator
from csekit.models import POOLERS, load_encoder


def add_parser(commands: argparse._SubParsersAction, name: str) -> None:
    parser = commands.add_parser(name, help="evaluate a model on STS12-16, STS-B and SICK-R")
    parser.add_argument("model", help="sentence-transformers folder, Hugging Face model folder, or hub id")
    parser.add_argument("--tasks", default="sts", help="'sts' (all seven) or a comma list: sts12,...,sts16,stsb,sickr")
    parser.add_argument("--pooler", choices=list(POOLERS), help="override the model's pooler (default: saved one, or cls)")
    parser.add_argument("--mode", choices=["test", "dev"], default="test", help="dev: STS-B dev and SICK-R trial")
    parser.add_argument("--data-dir", help="SentEval downstream/ folder (default: $CSEKIT_DATA)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--json", dest="json_path", help="also write the metrics to this JSON file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    tasks = args.tasks if args.mode == "test" or args.tasks != "sts" else "stsb,sickr"
    evaluator = STSEvaluator(tasks, mode=args.mode, data_dir=args.data_dir, batch_size=args.batch_size)
    encoder = load_encoder(args.model, pooler=args.pooler).to(_device(args.device))
    start = time.perf_counter()
    metrics = evaluator.evaluate(encoder)
    seconds = time.perf_counter() - start
    print(f"model {args.model}  pooler {encoder.pooler}  mode {args.mode}  ({seconds:.1f} s)")
    print(format_table(metrics, evaluator.tasks))
    if args.json_path:
        record = {"model": args.model, "pooler": encoder.pooler, "mode": args.mode, "seconds": seconds, "metrics": metrics}
        Path(args.json_path).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


def format_table(metrics: dict[str, float], tasks: list[str]) -> str:
    """Tasks × metrics (Spearman first: the number SimCSE's tables report), then the average."""
    header = f"{'task':<8} {'spearman':>9} {'pearson':>8} {'sp.mean':>8} {'sp.wmean':>9} {'pairs':>6}"
    rows = [header, "-" * len(header)]
    for task in tasks:
        yearly = task in YEARLY_SUBSETS
        mean = f"{metrics[f'{task}/spearman_mean']:8.2f}" if yearly else f"{'':8}"
        wmean = f"{metrics[f'{task}/spearman_wmean']:9.2f}" if yearly else f"{'':9}"
        rows.append(
            f"{TITLES[task]:<8} {metrics[task]:9.2f} {metrics[f'{task}/pearson']:8.2f} {mean} {wmean} "
            f"{int(metrics[f'{task}/pairs']):6d}"
        )
    rows.append(f"{'avg':<8} {metrics['avg']:9.2f}")
    return "\n".join(rows)


def _device(name: str | None):
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
