"""``csekit data fetch``: download and verify SentEval's evaluation data."""

from __future__ import annotations

import argparse

from csekit.data.senteval import default_dir, fetch


def add_parser(commands: argparse._SubParsersAction, name: str) -> None:
    parser = commands.add_parser(name, help="evaluation data")
    actions = parser.add_subparsers(dest="action", required=True)
    get = actions.add_parser("fetch", help="download SentEval's processed data and verify its checksums")
    get.add_argument("--dest", help=f"folder to hold downstream/ (default: {default_dir().parent}, or $CSEKIT_CACHE/senteval)")
    get.add_argument("--url", help="tar archive with a downstream/ folder (default: SimCSE's senteval.tar on the hub)")
    get.set_defaults(run=run_fetch)


def run_fetch(args: argparse.Namespace) -> int:
    folder = fetch(args.dest, url=args.url)
    print(f"verified SentEval data in {folder}; use it with --data-dir {folder} or CSEKIT_DATA={folder}")
    return 0
