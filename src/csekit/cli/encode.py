"""``csekit encode MODEL INPUT --output OUT``: a corpus to an embedding file (see :mod:`csekit.inference.encode`).

Under ``torchrun --nproc_per_node N -m csekit.cli.main encode ...`` each process encodes its shards and
the first merges them into the same file one process writes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from csekit.cli.arguments import positive_int
from csekit.distributed import get_rank, init_distributed
from csekit.inference.corpus import SUFFIXES, Corpus
from csekit.inference.encode import BACKENDS, EncodeSettings, encode_corpus
from csekit.inference.quantize import PRECISIONS
from csekit.inference.store import FORMATS
from csekit.models import POOLERS, load_encoder


def add_parser(commands: argparse._SubParsersAction, name: str) -> None:
    parser = commands.add_parser(name, help="embed a corpus into a .npy, .parquet or .safetensors file")
    parser.add_argument("model", metavar="MODEL", help="sentence-transformers folder, Hugging Face model folder, or hub id")
    parser.add_argument("input", metavar="INPUT", help=f"texts: {', '.join(SUFFIXES)}")
    parser.add_argument("--output", required=True, help=f"embedding file ({', '.join(FORMATS)}), with OUT.json beside it")
    parser.add_argument("--column", default="text", help="the text field of .jsonl/.csv/.tsv/.parquet (default: text)")
    parser.add_argument("--id-column", help="a field holding each text's id (default: its line number)")
    parser.add_argument("--precision", choices=list(PRECISIONS), default="float32",
                        help="float32, float16, int8 (per-dimension calibration saved) or binary (1 bit a dimension)")  # fmt: skip
    parser.add_argument("--dim", type=positive_int, help="keep the first DIM dimensions (a Matryoshka prefix)")
    normalize = parser.add_mutually_exclusive_group()
    normalize.add_argument("--normalize", action="store_true", default=None, help="unit-length vectors")
    normalize.add_argument("--no-normalize", dest="normalize", action="store_false",
                           help="raw vectors, even where the model normalises")  # fmt: skip
    parser.add_argument("--max-tokens", type=positive_int, default=EncodeSettings.max_tokens,
                        help="tokens per batch, padding included (default %(default)s)")  # fmt: skip
    parser.add_argument("--batch-size", type=positive_int, default=EncodeSettings.max_rows, help="most texts per batch")
    parser.add_argument("--shard-rows", type=positive_int, default=EncodeSettings.shard_rows,
                        help="texts per shard: the unit a killed run resumes from (default %(default)s)")  # fmt: skip
    parser.add_argument("--pooler", choices=list(POOLERS), help="override the model's pooler")
    parser.add_argument("--max-length", type=positive_int, help="truncate texts to this many tokens")
    parser.add_argument("--skip-bad-lines", action="store_true", help="count and skip malformed input lines")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier output or partial encode")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.add_argument("--backend", choices=list(BACKENDS), default=EncodeSettings.backend,
                        help="torch, or onnx: the model exported once to ONNX Runtime, faster on CPU, the same "
                             "vectors within 1e-5 (needs csekit[onnx])")  # fmt: skip
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    corpus = Corpus(Path(args.input), column=args.column, id_column=args.id_column, skip_bad_lines=args.skip_bad_lines)
    settings = EncodeSettings(precision=args.precision, dim=args.dim, normalize=args.normalize,
                              max_tokens=args.max_tokens, max_rows=args.batch_size, shard_rows=args.shard_rows,
                              backend=args.backend)  # fmt: skip
    device = init_distributed(args.device)
    encoder = load_encoder(args.model, pooler=args.pooler, max_length=args.max_length).to(device)
    started = time.perf_counter()
    meta = encode_corpus(encoder, corpus, Path(args.output), settings, model_name=args.model, overwrite=args.overwrite)
    if get_rank() == 0:
        seconds = time.perf_counter() - started
        print(f"{meta['count']} texts -> {args.output} ({meta['precision']}, dim {meta['dim']}"
              f"{', normalized' if meta['normalized'] else ''}) in {seconds:.1f} s, "
              f"{meta['count'] / max(seconds, 1e-9):.0f} texts/s; {corpus.stats.summary()}")  # fmt: skip
    return 0
