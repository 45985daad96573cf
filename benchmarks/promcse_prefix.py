"""PromCSE's two must-shows: what it trains against the backbone, and a trained prefix reloading exactly.

    python benchmarks/promcse_prefix.py --models runs/ladder-u3/promcse-cpu-seed1/best

Prints, for bert-mini (../shared) and BERT-base's configuration (random weights, nothing downloaded), the
trainable parameters of unsupervised (16-token prefix) and supervised (12-token) PromCSE beside the frozen
backbone's; then, for each trained model folder given, the largest absolute difference between the
embeddings of 1,000 STS-B dev sentences as trained (``load_encoder``) and as sentence-transformers loads
the folder (``SentenceTransformer(path, trust_remote_code=True)``), and against the same backbone without
its prefix (what a loader that dropped it would give).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
from machine import REPO, SHARED
from sentence_transformers import SentenceTransformer
from transformers import AutoTokenizer, BertConfig, BertModel

from csekit import SentenceEncoder, load_encoder
from csekit.evaluation.sts import load_task
from csekit.objectives import build_objective


def trainable_counts(encoder: SentenceEncoder, name: str) -> list[dict]:
    rows = []
    for objective, length in (("promcse", 16), ("promcse_sup", 12)):
        encoder.set_prefix(None).backbone.requires_grad_(True)
        build_objective(objective, encoder, options={"prefix_length": length})
        rows.append({"model": name, "objective": objective, "prefix_tokens": length,
                     "prefix": encoder.prefix.embedding.weight.numel(),
                     "trainable": sum(p.numel() for p in encoder.parameters() if p.requires_grad),
                     "backbone": sum(p.numel() for p in encoder.backbone.parameters())})  # fmt: skip
    return rows


def reload_gap(folder: str, sentences: list[str]) -> dict:
    trained = load_encoder(folder)
    ours = trained.encode(sentences)
    by_st = SentenceTransformer(folder, device="cpu", trust_remote_code=True).encode(sentences, batch_size=64)
    without = trained.set_prefix(None).encode(sentences)
    return {"model": folder, "prefix_tokens": load_encoder(folder).prefix.length,
            "max_abs_diff_sentence_transformers": float(np.abs(by_st - ours).max()),
            "max_abs_diff_without_prefix": float(np.abs(without - ours).max())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=[])
    args = parser.parse_args()
    mini = str(SHARED / "models" / "bert-mini-mlm")
    rows = trainable_counts(load_encoder(mini, max_length=32), "bert-mini")
    base = SentenceEncoder(BertModel(BertConfig(), add_pooling_layer=False), AutoTokenizer.from_pretrained(mini),
                           pooler="cls", max_length=32)  # fmt: skip
    rows += trainable_counts(base, "bert-base-uncased (config)")
    print("| model | objective | prefix tokens | prefix | trainable (prefix + head) | frozen backbone | share |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['model']} | {row['objective']} | {row['prefix_tokens']} | {row['prefix']:,} | {row['trainable']:,} "
              f"| {row['backbone']:,} | {100 * row['trainable'] / row['backbone']:.2f}% |")  # fmt: skip
    (pairs,) = load_task(SHARED / "data" / "senteval" / "downstream", "stsb", "dev")
    sentences = list(dict.fromkeys(pairs.first + pairs.second))[:1000]
    for folder in args.models:
        gap = reload_gap(folder, sentences)
        print(json.dumps({**gap, "model": str(gap["model"]).replace(str(REPO) + "/", "")}), file=sys.stdout)


if __name__ == "__main__":
    main()
