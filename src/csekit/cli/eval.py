"""``csekit eval MODEL``: the tables of every evaluator family asked for, printed and optionally as JSON.

Several models, or ``--group`` per method, go to :mod:`csekit.cli.eval_groups` (mean ± std, comparisons).
A Matryoshka model is evaluated at a prefix of its embeddings (``--dim 64``), at several prefixes from one
encoding pass (``--dims all,128,64``: a row per width), and a 2D Matryoshka model at its first k layers
(``--layers 2``).
The evaluators, their tables and the record schema are the library's (:mod:`csekit.evaluation`).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from csekit.atomic import check_writable, write_text
from csekit.cli.arguments import positive_int
from csekit.cli.eval_groups import parse_groups, run_groups
from csekit.distributed import resolve_device
from csekit.errors import CsekitError
from csekit.evaluation import EVALUATORS, EvaluationSettings, build_evaluators, evaluate_all, evaluate_prefixes
from csekit.evaluation.base import Evaluator
from csekit.evaluation.record import EvaluationRecord
from csekit.evaluation.transfer import MODES as TRANSFER_MODES
from csekit.models import POOLERS, load_encoder


def add_parser(commands: argparse._SubParsersAction, name: str) -> None:
    parser = commands.add_parser(
        name, help="evaluate a model: " + ", ".join(EVALUATORS)
    )
    parser.add_argument(
        "models", nargs="*", metavar="MODEL",
        help="sentence-transformers folder, Hugging Face model folder, hub id, or FOLDER#gguf=FILE.gguf (a GGUF decoder); "
             "several: mean ± std over them",
    )  # fmt: skip
    parser.add_argument(
        "--group", action="append", default=[], metavar="NAME=PATH,PATH,...",
        help="a method as its models (one per seed); repeat to compare methods with the first one",
    )  # fmt: skip
    families = "; ".join(f"'{family}' (all) or {','.join(cls.tasks_known)}" if cls.tasks_known else family
                         for family, cls in EVALUATORS.items())  # fmt: skip
    parser.add_argument("--tasks", default="sts", help=f"comma list mixing {families}")
    parser.add_argument(
        "--pooler", choices=list(POOLERS), help="override the model's pooler (default: saved one, else cls, or last_token for a decoder)"
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
    parser.add_argument("--dim", type=int, help="evaluate the first DIM numbers of each embedding (Matryoshka models)")
    parser.add_argument("--dims", metavar="all,D,D,...",
                        help="one row per width, from one encoding pass ('all': the full width); one model only")  # fmt: skip
    parser.add_argument("--layers", type=int, help="keep the first LAYERS transformer layers (2D Matryoshka models)")
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
    if args.dims and args.dim:
        raise CsekitError("give --dim (one width) or --dims (several), not both")
    evaluators = build_evaluators(args.tasks, settings_of(args))  # reads and verifies the data before the model loads
    if len(groups) > 1 or len(next(iter(groups.values()))) > 1:
        if args.dims:
            raise CsekitError("--dims evaluates one model; give one MODEL (or --dim for several)")
        return run_groups(args, groups, evaluators)
    (model,) = next(iter(groups.values()))
    encoder = load_encoder(model, pooler=args.pooler, truncate_dim=args.dim, layers=args.layers)
    encoder = encoder.to(resolve_device(args.device))
    if args.dims:
        return run_widths(args, model, encoder, evaluators)
    start = time.perf_counter()
    results = evaluate_all(encoder, evaluators, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    setting = f"mode {args.mode}" + (f"  transfer {args.transfer_mode}" if "transfer" in evaluators else "")
    size = (f"  dim {encoder.truncate_dim}" if getattr(encoder, "truncate_dim", None) else "") + (f"  layers {args.layers}" if args.layers else "")
    print(f"model {model}  pooler {encoder.pooler.name}{size}  {setting}  ({seconds:.1f} s)")
    print("\n\n".join(evaluator.format_table(results[family]) for family, evaluator in evaluators.items()))
    if args.json_path:
        settings = {"tasks": args.tasks, "mode": args.mode, "transfer_mode": args.transfer_mode,
                    "dim": encoder.embedding_dim, "layers": getattr(encoder, "num_layers", None)}
        EvaluationRecord(model, encoder.pooler.name, results, settings, seconds).write(args.json_path)
    return 0


def parse_dims(spec: str, width: int) -> list[int]:
    """``all,128,64`` -> [width, 128, 64]: each a prefix of a ``width``-wide embedding, each once."""
    dims = []
    for item in (part.strip().lower() for part in spec.split(",") if part.strip()):
        try:
            dim = width if item == "all" else int(item)
        except ValueError:
            raise CsekitError(f"--dims: {item!r} is not a width; give 'all' or whole numbers in 1..{width}") from None
        if not 1 <= dim <= width:
            raise CsekitError(f"--dims: {dim} is outside 1..{width}, the model's embedding width")
        if dim not in dims:
            dims.append(dim)
    if not dims:
        raise CsekitError(f"--dims: no width given; e.g. all,{width // 2}")
    return dims


def run_widths(args: argparse.Namespace, model: str, encoder, evaluators: dict[str, Evaluator]) -> int:
    """One encoding pass at the full width; a row of every family's summary metrics per prefix."""
    if hasattr(encoder, "truncate"):  # a static model has no saved prefix
        encoder.truncate(None)  # the prefixes are cut from the full embeddings, whatever the saved default
    dims = parse_dims(args.dims, encoder.embedding_dim)
    start = time.perf_counter()
    results = evaluate_prefixes(encoder, evaluators, dims, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    depth = f"  layers {encoder.num_layers}" if hasattr(encoder, "num_layers") else ""
    print(f"model {model}  pooler {encoder.pooler.name}{depth}  mode {args.mode}  one encoding pass ({seconds:.1f} s)")
    columns = [(family, key, title, decimals) for family, evaluator in evaluators.items()
               for key, title, decimals in evaluator.summary_rows()]  # fmt: skip
    header = f"{'dim':>5}" + "".join(f" {title:>8}" for _, _, title, _ in columns)
    lines = [header, "-" * len(header)]
    for dim, metrics in results.items():
        lines.append(f"{dim:>5}" + "".join(f" {metrics[family][key]:8.{decimals}f}" for family, key, _, decimals in columns))
    print("\n".join(lines))
    if args.json_path:
        record = {"model": model, "pooler": encoder.pooler.name, "layers": getattr(encoder, "num_layers", None), "mode": args.mode,
                  "tasks": args.tasks, "dims": {str(dim): metrics for dim, metrics in results.items()}}  # fmt: skip
        write_text(Path(args.json_path), json.dumps(record, indent=2) + "\n")
    return 0
