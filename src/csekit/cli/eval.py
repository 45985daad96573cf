"""``csekit eval MODEL``: the tables of every evaluator family asked for, printed and optionally as JSON.

Several models, or ``--group`` per method, go to :mod:`csekit.cli.eval_groups` (mean ± std, comparisons).
The evaluators, their tables and the record schema are the library's (:mod:`csekit.evaluation`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from csekit.atomic import check_writable
from csekit.cli.arguments import positive_int
from csekit.cli.eval_groups import parse_groups, run_groups
from csekit.distributed import resolve_device
from csekit.evaluation import EVALUATORS, EvaluationSettings, build_evaluators, evaluate_all
from csekit.evaluation.record import EvaluationRecord
from csekit.evaluation.transfer import MODES as TRANSFER_MODES
from csekit.models import POOLERS, load_encoder


def add_parser(commands: argparse._SubParsersAction, name: str) -> None:
    parser = commands.add_parser(
        name, help="evaluate a model: " + ", ".join(EVALUATORS)
    )
    parser.add_argument(
        "models", nargs="*", metavar="MODEL",
        help="sentence-transformers folder, Hugging Face model folder, or hub id; several: mean ± std over them",
    )  # fmt: skip
    parser.add_argument(
        "--group", action="append", default=[], metavar="NAME=PATH,PATH,...",
        help="a method as its models (one per seed); repeat to compare methods with the first one",
    )  # fmt: skip
    families = "; ".join(f"'{family}' (all) or {','.join(cls.tasks_known)}" if cls.tasks_known else family
                         for family, cls in EVALUATORS.items())  # fmt: skip
    parser.add_argument("--tasks", default="sts", help=f"comma list mixing {families}")
    parser.add_argument(
        "--pooler", choices=list(POOLERS), help="override the model's pooler (default: saved one, or cls)"
    )
    parser.add_argument(
        "--mode", choices=["test", "dev"], default="test", help="STS only; dev: STS-B dev and SICK-R trial"
    )
    parser.add_argument(
        "--transfer-mode",
        choices=list(TRANSFER_MODES),
        default="test",
        help="SentEval classifier settings as in SimCSE's evaluation.py (fasttest: 5 folds, RMSprop)",
    )
    parser.add_argument("--data-dir", help="SentEval downstream/ folder (default: $CSEKIT_DATA)")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--json", dest="json_path", help="also write the metrics to this JSON file")
    parser.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples (comparisons)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the paired bootstrap")
    parser.set_defaults(run=run)


def settings_of(args: argparse.Namespace) -> EvaluationSettings:
    return EvaluationSettings(data_dir=args.data_dir, batch_size=args.batch_size, mode=args.mode,
                              transfer_mode=args.transfer_mode)  # fmt: skip


def run(args: argparse.Namespace) -> int:
    groups = parse_groups(args.models, args.group)
    if args.json_path:
        check_writable(Path(args.json_path))  # before the minutes of encoding, not after
    evaluators = build_evaluators(args.tasks, settings_of(args))  # reads and verifies the data before the model loads
    if len(groups) > 1 or len(next(iter(groups.values()))) > 1:
        return run_groups(args, groups, evaluators)
    (model,) = next(iter(groups.values()))
    encoder = load_encoder(model, pooler=args.pooler).to(resolve_device(args.device))
    start = time.perf_counter()
    results = evaluate_all(encoder, evaluators, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    setting = f"mode {args.mode}" + (f"  transfer {args.transfer_mode}" if "transfer" in evaluators else "")
    print(f"model {model}  pooler {encoder.pooler.name}  {setting}  ({seconds:.1f} s)")
    print("\n\n".join(evaluator.format_table(results[family]) for family, evaluator in evaluators.items()))
    if args.json_path:
        settings = {"tasks": args.tasks, "mode": args.mode, "transfer_mode": args.transfer_mode}
        EvaluationRecord(model, encoder.pooler.name, results, settings, seconds).write(args.json_path)
    return 0
