"""``csekit report RUN_DIR [RUN_DIR ...]``: an HTML page (self-contained) and a Markdown page of one
run, or of several runs side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from csekit.atomic import check_writable
from csekit.cli.arguments import positive_int
from csekit.errors import CsekitError


def add_parser(commands: argparse._SubParsersAction, name: str) -> None:
    parser = commands.add_parser(name, help="HTML and Markdown report of training runs: tables, curves, plots")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders written by `csekit train`")
    parser.add_argument("--output", help="folder for report.html, report.md and the PNGs "
                        "(default: RUN_DIR/report for one run, ./report for several)")  # fmt: skip
    parser.add_argument("--compute", action="store_true",
                        help="evaluate what is not saved yet (STS test on best/; alignment/uniformity of the "
                             "starting model, best/ and final/) and save it in the run folder for next time")  # fmt: skip
    parser.add_argument("--tasks", default="sts", help="STS tasks for --compute (default: the seven)")
    parser.add_argument("--data-dir", help="SentEval downstream/ folder (default: $CSEKIT_DATA)")
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from csekit.report import build_page, collect_run, write_report
    from csekit.report.render import check_report_folder

    output = Path(args.output) if args.output else None
    if output is not None:  # before any computing
        check_writable(output, folder=True)
        check_report_folder(output)
    names = _names(args.runs)
    if len(set(names)) != len(names):
        raise CsekitError(f"two runs share a name ({', '.join(names)}): give folders with different names")
    runs = [collect_run(path, name=name, compute=args.compute, tasks=args.tasks, data_dir=args.data_dir,
                        batch_size=args.batch_size) for path, name in zip(args.runs, names)]  # fmt: skip
    output = output or (Path(args.runs[0]) / "report" if len(runs) == 1 else Path("report"))
    html_path, markdown_path = write_report(build_page(runs), output)
    print(f"wrote {html_path} and {markdown_path}")
    return 0


def _names(paths: list[str]) -> list[str]:
    """Each run's folder name; the two last parts where that alone would be ambiguous (a/seed1, b/seed1)."""
    resolved = [Path(path).resolve() for path in paths]
    short = [path.name for path in resolved]
    if len(set(short)) == len(short):
        return short
    return [f"{path.parent.name}/{path.name}" for path in resolved]
