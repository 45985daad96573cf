"""``csekit`` command line: each subcommand is a thin shell over the library."""

from __future__ import annotations

import argparse
import sys
import warnings

from csekit import __version__
from csekit.cli import data, distill_static, encode, eval, generate, index, postprocess, report, search, serve, train
from csekit.errors import CsekitError, CsekitNote

COMMANDS = {"train": train, "eval": eval, "encode": encode, "index": index, "search": search, "data": data,
            "postprocess": postprocess, "report": report, "serve": serve, "distill-static": distill_static,
            "generate": generate}  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, like every other csekit error (exit 2)."""

    def error(self, message: str):
        print(f"csekit: error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="csekit", description="Contrastive sentence embeddings.")
    parser.add_argument("--version", action="version", version=f"csekit {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_parser(commands, name)
    return parser


def _show_note(message, category, *args, **kwargs) -> None:
    if issubclass(category, CsekitNote):
        print(f"csekit: note: {message}", file=sys.stderr)
    else:
        _show_warning(message, category, *args, **kwargs)


_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_note  # csekit's notes as one line each; other warnings as Python prints them
    try:
        return args.run(args) or 0
    except CsekitError as error:
        print(f"csekit: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    finally:
        warnings.showwarning = _show_warning


if __name__ == "__main__":
    sys.exit(main())
