"""``csekit encode`` of a whole corpus against ``SentenceTransformer.encode`` of the same texts, one run.

    python benchmarks/encode_throughput.py                 # all of ../shared/data/train/unsup, all-MiniLM-L6-v2
    python benchmarks/encode_throughput.py --limit 2000    # a smoke test of the script

The corpus is every line of every file in ``--corpus`` (default ``../shared/data/train/unsup``) in one
text file. Each side loads the model, embeds every text and ends with the vectors on disk (csekit: the
.npy file and its ids; sentence-transformers: ``np.save`` of what ``encode`` returns, its default batch of
32, the way a user would write it). The two sets of vectors are compared row by row. FLOP/s counts the
dense layers (2 x non-embedding parameters per real token) and attention (4 x layers x width x length^2
per text), over the real tokens only, against the fp32 matmul peak measured in the same run.
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
from machine import SHARED, describe, machine, matmul_peak_flops, relative
from sentence_transformers import SentenceTransformer

from csekit.inference.corpus import Corpus
from csekit.inference.encode import EncodeSettings, encode_corpus
from csekit.inference.store import read_embeddings
from csekit.models import load_encoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--corpus", default=str(SHARED / "data" / "train" / "unsup"), help="a folder of .txt files")
    parser.add_argument("--limit", type=int, help="the first N lines only: for checking the script")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side; medians reported")
    parser.add_argument("--keep", help="also keep csekit's embedding file here (the index benchmark reads it)")
    parser.add_argument("--json")
    args = parser.parse_args()

    texts = [line for path in sorted(Path(args.corpus).glob("*.txt"))
             for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][: args.limit]  # fmt: skip
    info, peak = machine(), matmul_peak_flops()
    print(f"machine: {describe(info)}; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s; {len(texts)} texts", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        corpus_file = scratch / "corpus.txt"
        corpus_file.write_text("".join(text + "\n" for text in texts), encoding="utf-8")
        runs = {"csekit encode": [], "SentenceTransformer.encode": []}
        for _ in range(args.repeats):
            runs["csekit encode"].append(_csekit(args.model, corpus_file, scratch / "csekit.npy"))
            runs["SentenceTransformer.encode"].append(_sentence_transformers(args.model, texts, scratch / "st.npy"))
        ours, theirs = read_embeddings(scratch / "csekit.npy"), np.load(scratch / "st.npy")
        difference = float(np.abs(np.asarray(ours.vectors) - theirs).max())
        flops = _flops(args.model, texts)
        if args.keep:
            for suffix in ("", ".json", ".ids.txt"):
                Path(args.keep + suffix).write_bytes((scratch / f"csekit.npy{suffix}").read_bytes())

    print(f"\nmodel {relative(args.model)}: {len(texts)} texts, {flops['tokens']} tokens; max |csekit - ST| {difference:.2e}\n")
    print("| method | seconds | texts/s | GFLOP/s | of fp32 peak | vs SentenceTransformer.encode |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    baseline = statistics.median(runs["SentenceTransformer.encode"])
    rows = {}
    for method, seconds in runs.items():
        median = statistics.median(seconds)
        rows[method] = {"seconds": seconds, "median_s": median, "texts_per_s": len(texts) / median,
                        "gflop_per_s": flops["flop"] / median / 1e9}  # fmt: skip
        print(f"| {method} | {median:.1f} | {len(texts) / median:.0f} | {rows[method]['gflop_per_s']:.1f} | "
              f"{100 * flops['flop'] / median / peak:.0f}% | {baseline / median:.2f}x |")  # fmt: skip
    if args.json:
        record = {"machine": info, "peak_gflop_per_s": peak / 1e9, "model": relative(args.model),
                  "corpus": relative(args.corpus), "texts": len(texts), **flops, "max_abs_difference": difference,
                  "runs": rows, "command": " ".join(["python", *sys.argv])}  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


def _csekit(model: str, corpus_file: Path, output: Path) -> float:
    start = time.perf_counter()
    encoder = load_encoder(model)
    encode_corpus(encoder, Corpus(corpus_file), output, EncodeSettings(), model_name=relative(model), overwrite=True)
    return time.perf_counter() - start


def _sentence_transformers(model: str, texts: list[str], output: Path) -> float:
    start = time.perf_counter()
    vectors = SentenceTransformer(model, device="cpu").encode(texts, show_progress_bar=True)
    np.save(output, vectors)
    return time.perf_counter() - start


def _flops(model: str, texts: list[str]) -> dict:
    """Real tokens and the FLOPs of one forward pass over them (see the module docstring)."""
    encoder = load_encoder(model)
    config = encoder.backbone.config
    embedding_params = sum(p.numel() for name, p in encoder.backbone.named_parameters() if "embeddings" in name)
    dense = sum(p.numel() for p in encoder.backbone.parameters()) - embedding_params
    lengths = np.array([len(row["input_ids"]) for row in encoder.inference_tokens(texts)], dtype=np.float64)
    attention = 4 * config.num_hidden_layers * config.hidden_size * float((lengths**2).sum())
    return {"tokens": int(lengths.sum()), "flop": 2 * dense * float(lengths.sum()) + attention}


if __name__ == "__main__":
    main()
