"""``csekit index EMBEDDINGS --output INDEX``: a FAISS index over ``csekit encode``'s file (see
:mod:`csekit.search.index`)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from csekit.cli.arguments import positive_int
from csekit.errors import CsekitError
from csekit.search.index import KINDS, build_index, check_settings, is_index

#: every kind's settings, each an option (--ef-search)
SETTINGS = list(dict.fromkeys(name for settings in KINDS.values() for name in settings))


def add_parser(commands: argparse._SubParsersAction, name: str) -> None:
    parser = commands.add_parser(name, help="build a FAISS index (flat, hnsw, ivfpq) over an embedding file")
    parser.add_argument("embeddings", metavar="EMBEDDINGS", help="a file written by csekit encode")
    parser.add_argument("--output", required=True, help="the index folder")
    parser.add_argument("--kind", choices=list(KINDS), default="flat", help="flat (exact), hnsw or ivfpq")
    for setting in SETTINGS:
        defaults = ", ".join(f"{kind} {values[setting] or 'dim / 8'}" for kind, values in KINDS.items()
                             if setting in values)  # fmt: skip
        parser.add_argument(f"--{setting.replace('_', '-')}", dest=setting, type=positive_int, help=f"default: {defaults}")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier index in --output")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from csekit.inference.store import read_embeddings

    output = Path(args.output)
    settings = {name: getattr(args, name) for name in SETTINGS if getattr(args, name)}
    check_settings(args.kind, settings)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        if not is_index(output):
            raise CsekitError(f"--output {output} exists and is not a csekit index; give a new or empty folder")
        if not args.overwrite:
            raise CsekitError(f"--output {output} holds an index already: --overwrite replaces it")
    embeddings = read_embeddings(args.embeddings)
    started = time.perf_counter()
    index = build_index(embeddings, args.kind, **settings)  # checked again with the file's dimension
    index.save(output)
    print(f"{args.kind} index of {len(index.ids)} vectors ({embeddings.meta['precision']}, dim "
          f"{embeddings.meta['dim']}) -> {output} in {time.perf_counter() - started:.1f} s")  # fmt: skip
    return 0
