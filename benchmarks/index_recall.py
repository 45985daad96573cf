"""Recall@10 and queries/s of each FAISS index kind against exact search, on an encoded corpus.

    python benchmarks/encode_throughput.py --keep /tmp/unsup.npy       # the corpus's embeddings
    python benchmarks/index_recall.py --embeddings /tmp/unsup.npy      # every kind over them

Queries are the distinct STS-B test sentences (``--queries`` of them), embedded by the corpus's model as
the corpus was (:meth:`SearchIndex.embed_queries`), none of them in the corpus. Recall@10 is the share of
exact search's 10 nearest ids that an index returns among its 10. Queries/s: all queries in one call
(FAISS's threads), and the median latency of one query at a time. Each kind is built once with its default settings (build time includes IVF-PQ's
training), then searched under each search-time setting of the sweep; IVF-PQ is also built with finer codes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import SHARED, describe, machine, relative

from csekit.inference.store import read_embeddings
from csekit.models import load_encoder
from csekit.search import build_index, load_index

#: (kind, build settings, the search-time settings swept): each kind with its defaults, and IVF-PQ with finer
#: codes too (its recall is bounded by the code's quantisation error, whatever the probing)
BUILDS = [("flat", {}, [{}]), ("hnsw", {}, [{"ef_search": n} for n in (16, 64, 128, 256)]),
          ("ivfpq", {}, [{"nprobe": n} for n in (4, 16, 64, 256)]),
          *(("ivfpq", {"pq_m": m}, [{"nprobe": 64}]) for m in (96, 192))]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--embeddings", required=True, help="a csekit encode file")
    parser.add_argument("--model", help="the corpus's model (default: as the file records it)")
    parser.add_argument("--data-dir", default=str(SHARED / "data" / "senteval" / "downstream"))
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--json")
    args = parser.parse_args()

    embeddings = read_embeddings(args.embeddings)
    encoder = load_encoder(args.model or embeddings.meta["model"]["model"])
    sentences = []
    for line in (Path(args.data_dir) / "STS/STSBenchmark/sts-test.csv").read_text(encoding="utf-8").splitlines():
        sentences.extend(line.split("\t")[5:7])
    texts = list(dict.fromkeys(sentences))[: args.queries]
    info = machine()
    print(f"machine: {describe(info)}; {len(embeddings.ids)} vectors of {embeddings.meta['dim']}; "
          f"{len(texts)} queries", flush=True)  # fmt: skip

    exact = queries = None
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for number, (kind, built_with, sweep) in enumerate(BUILDS):
            start = time.perf_counter()
            index = build_index(embeddings, kind, **built_with)
            build = time.perf_counter() - start
            folder = Path(scratch) / str(number)
            index.save(folder)  # measured as a user gets it: saved and loaded
            size = (folder / "index.faiss").stat().st_size
            index = load_index(folder)
            if queries is None:
                index.check_model(encoder)
                queries = index.embed_queries(encoder, texts)  # (Q, D)
            for settings in sweep:
                index.tune(**settings)
                start = time.perf_counter()
                found = index.search(queries, args.k)
                batch = time.perf_counter() - start
                single = []
                for query in queries[:200]:
                    start = time.perf_counter()
                    index.search(query[None], args.k)
                    single.append(time.perf_counter() - start)
                exact = exact or found
                recall = float(np.mean([len({i for i, _ in a} & {i for i, _ in b}) / args.k
                                        for a, b in zip(found, exact)]))  # fmt: skip
                row = {"kind": kind, "settings": dict(index.meta["settings"]), "build_s": build, "bytes": size,
                       f"recall@{args.k}": recall, "queries_per_s": len(queries) / batch,
                       "single_query_ms": 1000 * statistics.median(single)}  # fmt: skip
                rows.append(row)
                print(f"{kind} {row['settings']}: recall {recall:.3f}", flush=True)

    print(f"\n{len(embeddings.ids)} vectors ({embeddings.meta['precision']}, dim {embeddings.meta['dim']}), "
          f"{len(texts)} STS-B queries, k = {args.k}\n")  # fmt: skip
    print(f"| index | settings | build (s) | size (MB) | recall@{args.k} | queries/s (batch) | one query (ms) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        shown = ", ".join(f"{key} {value}" for key, value in row["settings"].items()) or "exact"
        print(f"| {row['kind']} | {shown} | {row['build_s']:.1f} | {row['bytes'] / 1e6:.1f} | "
              f"{row[f'recall@{args.k}']:.3f} | {row['queries_per_s']:.0f} | {row['single_query_ms']:.2f} |")  # fmt: skip
    if args.json:
        record = {"machine": info, "embeddings": {**embeddings.meta, "file": relative(args.embeddings)},
                  "queries": len(texts), "k": args.k, "rows": rows, "command": " ".join(["python", *sys.argv])}  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
