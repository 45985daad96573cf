"""``csekit`` command line: each subcommand is a thin shell over the library."""

from __future__ import annotations

import argparse
import sys

from csekit import __version__
from csekit.cli import data, eval, postprocess, report, train
from csekit.errors import CsekitError

COMMANDS = {"train": train, "eval": eval, "data": data, "postprocess": postprocess, "report": report}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csekit", description="Contrastive sentence embeddings.")
    parser.add_argument("--version", action="version", version=f"csekit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_parser(commands, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except CsekitError as error:
        print(f"csekit: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())
