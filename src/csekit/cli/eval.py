"""``csekit eval MODEL``: STS, transfer and embedding-space tables of a model, printed and optionally as JSON.

Several models, or ``--group`` per method, go to :mod:`csekit.cli.eval_groups` (mean ± std, comparisons).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from csekit.errors import CsekitError
from csekit.evaluation.alignment_uniformity import AlignmentUniformityEvaluator
from csekit.evaluation.representation import RepresentationEvaluator
from csekit.evaluation.sts import TASKS as STS_TASKS
from csekit.evaluation.sts import TITLES, YEARLY_SUBSETS, STSEvaluator
from csekit.evaluation.transfer import MODES as TRANSFER_MODES
from csekit.evaluation.transfer import TITLES as TRANSFER_TITLES
from csekit.evaluation.transfer import TRANSFER_TASKS, TransferEvaluator
from csekit.models import POOLERS, load_encoder

#: Evaluator families, in the order their tables print; each task name belongs to one.
FAMILIES = ("sts", "transfer", "align_uniform", "rank")


def add_parser(commands: argparse._SubParsersAction, name: str) -> None:
    parser = commands.add_parser(
        name, help="evaluate a model: STS, SentEval transfer, alignment/uniformity, rank"
    )
    parser.add_argument(
        "models", nargs="*", metavar="MODEL",
        help="sentence-transformers folder, Hugging Face model folder, or hub id; several: mean ± std over them",
    )  # fmt: skip
    parser.add_argument(
        "--group", action="append", default=[], metavar="NAME=PATH,PATH,...",
        help="a method as its models (one per seed); repeat to compare methods with the first one",
    )  # fmt: skip
    parser.add_argument(
        "--tasks", default="sts",
        help="comma list mixing 'sts' (all seven) or sts12,...,sts16,stsb,sickr; 'transfer' (all seven) or "
             "mr,cr,subj,mpqa,sst2,trec,mrpc; align_uniform; rank",
    )  # fmt: skip
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
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--json", dest="json_path", help="also write the metrics to this JSON file")
    parser.add_argument("--resamples", type=int, default=1000, help="paired bootstrap resamples (comparisons)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the paired bootstrap")
    parser.set_defaults(run=run)


def split_tasks(spec: str, *, mode: str = "test") -> dict[str, list[str]]:
    """Family -> its task names, from ``--tasks``; in dev mode 'sts' means STS-B dev and SICK-R trial."""
    families: dict[str, list[str]] = {}
    for name in (n.strip().lower() for n in spec.split(",") if n.strip()):
        if name == "sts" or name in STS_TASKS:
            family, names = "sts", (["stsb", "sickr"] if name == "sts" and mode == "dev" else [name])
        elif name == "transfer" or name in TRANSFER_TASKS:
            family, names = "transfer", [name]
        elif name in ("align_uniform", "rank"):
            family, names = name, [name]
        else:
            raise CsekitError(
                f"unknown task {name!r}; choose sts, {', '.join(STS_TASKS)}, transfer, "
                f"{', '.join(TRANSFER_TASKS)}, align_uniform or rank"
            )
        families.setdefault(family, []).extend(names)
    if not families:
        raise CsekitError("no task given")
    return {family: families[family] for family in FAMILIES if family in families}


def build_evaluators(args: argparse.Namespace) -> dict:
    common = {"data_dir": args.data_dir, "batch_size": args.batch_size}
    build = {
        "sts": lambda tasks: STSEvaluator(tasks, mode=args.mode, **common),
        "transfer": lambda tasks: TransferEvaluator(tasks, mode=args.transfer_mode, **common),
        "align_uniform": lambda tasks: AlignmentUniformityEvaluator(**common),
        "rank": lambda tasks: RepresentationEvaluator(**common),
    }
    return {family: build[family](tasks) for family, tasks in split_tasks(args.tasks, mode=args.mode).items()}


def run(args: argparse.Namespace) -> int:
    from csekit.cli.eval_groups import parse_groups, run_groups

    groups = parse_groups(args.models, args.group)
    evaluators = build_evaluators(args)  # reads and verifies the data before the model loads
    if len(groups) > 1 or len(next(iter(groups.values()))) > 1:
        return run_groups(args, groups, evaluators)
    (args.model,) = next(iter(groups.values()))
    encoder = load_encoder(args.model, pooler=args.pooler).to(_device(args.device))
    start = time.perf_counter()
    results = evaluate_all(evaluators, encoder, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    setting = f"mode {args.mode}" + (f"  transfer {args.transfer_mode}" if "transfer" in evaluators else "")
    print(f"model {args.model}  pooler {encoder.pooler}  {setting}  ({seconds:.1f} s)")
    print("\n\n".join(TABLES[family](results[family], evaluator) for family, evaluator in evaluators.items()))
    if args.json_path:
        record = {"model": args.model, "pooler": encoder.pooler, "mode": args.mode, "seconds": seconds,
                  "metrics": merge_metrics(results)}  # fmt: skip
        if "transfer" in evaluators:
            record["transfer_mode"] = args.transfer_mode
        Path(args.json_path).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


def evaluate_all(evaluators: dict, encoder, *, batch_size: int) -> dict[str, dict[str, float]]:
    """Each family's metrics, encoding every distinct sentence once for all of them.

    Every csekit evaluator lists its ``sentences`` and scores a table of their embeddings with
    ``score(table)``; align_uniform, rank and STS-B share most sentences, so one pass serves them all.
    """
    tables = shared_tables(evaluators, encoder, batch_size=batch_size)
    return {
        family: evaluator.score(tables[family]) if family in tables else evaluator.evaluate(encoder)
        for family, evaluator in evaluators.items()
    }


def shared_tables(evaluators: dict, encoder, *, batch_size: int) -> dict:
    """Family -> embeddings of its evaluator's ``sentences`` (row i: sentence i), from one encoding pass."""
    shared = {
        family: e for family, e in evaluators.items() if hasattr(e, "sentences") and hasattr(e, "score")
    }
    texts = sorted({text for evaluator in shared.values() for text in evaluator.sentences})
    table = encoder.encode(texts, batch_size=batch_size) if texts else None  # (S, H)
    row = {text: i for i, text in enumerate(texts)}
    return {family: table[[row[text] for text in evaluator.sentences]] for family, evaluator in shared.items()}


def merge_metrics(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """One flat dict; the families' keys are disjoint except the transfer ``avg``, which becomes ``transfer/avg``."""
    merged: dict[str, float] = {}
    for family, metrics in results.items():
        for key, value in metrics.items():
            merged["transfer/avg" if family == "transfer" and key == "avg" else key] = value
    return merged


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


def format_transfer_table(metrics: dict[str, float], tasks: list[str]) -> str:
    """Test accuracy (SimCSE's transfer table), SentEval's dev accuracy, MRPC's F1, then the average."""
    header = f"{'task':<8} {'acc':>7} {'dev':>7} {'f1':>7}"
    rows = [header, "-" * len(header)]
    for task in tasks:
        f1 = f"{metrics['mrpc/f1']:7.2f}" if task == "mrpc" else ""
        rows.append(
            f"{TRANSFER_TITLES[task]:<8} {metrics[task]:7.2f} {metrics[f'{task}/dev']:7.2f} {f1}".rstrip()
        )
    rows.append(f"{'avg':<8} {metrics['avg']:7.2f}")
    return "\n".join(rows)


def format_align_uniform_table(metrics: dict[str, float]) -> str:
    return "\n".join([
        f"{'metric':<8} {'value':>8}  over (STS-B dev; lower is better)",
        f"{'align':<8} {metrics['align']:8.4f}  {int(metrics['align/pairs'])} pairs with gold score > 4",
        f"{'uniform':<8} {metrics['uniform']:8.4f}  {int(metrics['uniform/sentences'])} sentences",
    ])  # fmt: skip


def format_rank_table(metrics: dict[str, float]) -> str:
    return "\n".join([
        f"{'metric':<15} {'value':>8}  (STS-B dev, {int(metrics['sentences'])} sentences)",
        f"{'effective_rank':<15} {metrics['effective_rank']:8.2f}",
        f"{'rank':<15} {int(metrics['rank']):8d}",
        f"{'anisotropy':<15} {metrics['anisotropy']:8.4f}",
    ])  # fmt: skip


TABLES = {
    "sts": lambda metrics, evaluator: format_table(metrics, evaluator.tasks),
    "transfer": lambda metrics, evaluator: format_transfer_table(metrics, evaluator.tasks),
    "align_uniform": lambda metrics, evaluator: format_align_uniform_table(metrics),
    "rank": lambda metrics, evaluator: format_rank_table(metrics),
}


def _device(name: str | None):
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
