"""``csekit search INDEX "query" [-k 10]``: the nearest ids of each query, with the index's own model."""

from __future__ import annotations

import argparse
import json

from csekit.cli.arguments import positive_int
from csekit.distributed import resolve_device
from csekit.models import load_encoder
from csekit.models.saving import saved_pooler


def add_parser(commands: argparse._SubParsersAction, name: str) -> None:
    parser = commands.add_parser(name, help="search a csekit index with text queries")
    parser.add_argument("index", metavar="INDEX", help="a folder written by csekit index")
    parser.add_argument("queries", nargs="+", metavar="QUERY")
    parser.add_argument("-k", type=positive_int, default=10, help="results a query (default %(default)s)")
    parser.add_argument("--model", help="the model the corpus was encoded with (default: as the index records it)")
    parser.add_argument("--ef-search", type=positive_int, help="hnsw: candidates while searching (default: as built)")
    parser.add_argument("--nprobe", type=positive_int, help="ivfpq: cells searched (default: as built)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of tables")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from csekit.search import load_index

    index = load_index(args.index)
    tuned = {name: getattr(args, name) for name in ("ef_search", "nprobe") if getattr(args, name)}
    if tuned:
        index.tune(**tuned)
    recorded = index.meta["embeddings"]["model"]
    model = args.model or recorded["model"]
    encoder = load_encoder(model)
    if saved_pooler(encoder)["name"] != recorded["pooler"]["name"]:  # encoded with --pooler
        encoder = load_encoder(model, pooler=recorded["pooler"]["name"])
    index.check_model(encoder.to(resolve_device(args.device)), model)
    for query, hits in zip(args.queries, index.query(encoder, args.queries, args.k)):
        if args.json:
            print(json.dumps({"query": query, "hits": [{"id": id_, "score": score} for id_, score in hits]}))
            continue
        print(f"\n{query}\n" + "\n".join(f"{rank:>4}  {score:8.4f}  {id_}" for rank, (id_, score) in enumerate(hits, 1)))
    return 0
