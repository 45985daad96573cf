"""How much of the denominator's negative mass each debiasing method leaves on known false negatives.

    python benchmarks/false_negatives.py [--model RUN/best] [--batches 20] [--pairs 16] [--unrelated 32]

Each batch holds ``pairs`` SNLI premises, their entailed hypotheses and ``unrelated`` premises of
other rows (no premise twice): 2 * pairs + unrelated sentences. Every sentence is an anchor whose
positive is its own second view (the same embedding: the model runs in eval mode); a premise and its
entailment are in-batch negatives of each other, i.e. false negatives. For anchor i the share is

    sum_{j false negative} w_ij exp(s_ij / t) / sum_{j negative} w_ij exp(s_ij / t),    t = 0.05,

its weights w as the method's loss gives them (DCLR's noise negatives included in the denominator),
averaged over the anchors that have a false negative and over the batches. Uniform weights (SimCSE)
are the reference; "count share" is what the share would be if every negative weighed the same.

GCSE only decays each anchor's *own hard negative*, so it is measured on a triplet layout: the
candidates are [positives; hard negatives], with a premise's entailment as its hard negative (and
vice versa; unrelated sentences get their row's contradiction), against supervised SimCSE's uniform
weights on the same layout. The paraphrase then sits twice in the denominator: in-batch and as hard
negative.

The frozen helpers are the starting model (raw BERT-mini: the objectives' default, a copy of the
starting model) or all-MiniLM-L6-v2, a trained sentence encoder of the same vocabulary. ``--model``
replaces the embedded model (e.g. a trained run's ``best`` folder); the helpers stay as they are.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
from pathlib import Path

import torch

from csekit.data.collate import pad_batch
from csekit.losses import cosine_similarity_matrix
from csekit.models import load_encoder
from csekit.objectives.dclr import false_negative_weights, noise_negatives
from csekit.objectives.debcse import negative_weights, surface_similarity
from csekit.objectives.gcse import gaussian_decay_weights, place_own_hard_negative_weights

SHARED = Path(os.environ.get("CSEKIT_SHARED", os.path.relpath(Path(__file__).resolve().parents[2] / "shared")))  # printed: relative
TEMPERATURE = 0.05


def batches(path: Path, count: int, pairs: int, unrelated: int, seed: int) -> list[list[dict[str, str]]]:
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    rows = list({row["sent0"]: row for row in rows}.values())  # one row per premise
    random.Random(seed).shuffle(rows)
    size = pairs + unrelated
    return [rows[start : start + size] for start in range(0, size * count, size)]


@torch.no_grad()
def embed(encoder, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    ids = encoder.tokenize(texts)
    tokens = pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], encoder.tokenizer.pad_token_id)
    return encoder.eval()(**tokens), tokens["input_ids"]


def share(similarities: torch.Tensor, weights: torch.Tensor, false: torch.Tensor, negative: torch.Tensor,
          noise_similarities: torch.Tensor | None = None) -> tuple[float, float]:  # fmt: skip
    """Over the anchors with a false negative: mean FN mass / negative mass (0 for an anchor left with no
    negative mass at all), and the mean share of in-batch negatives given weight 0. (B, N) inputs."""
    mass = weights * (similarities / TEMPERATURE).exp()  # (B, N)
    total = (mass * negative).sum(1)
    if noise_similarities is not None:
        total = total + (noise_similarities / TEMPERATURE).exp().sum(1)  # (B,) noise: weight 1
    rows = false.any(1)
    shares = (mass * false).sum(1)[rows] / total[rows].clamp(min=torch.finfo(total.dtype).tiny)
    zeroed = ((weights == 0) & negative).sum(1)[rows] / negative.sum(1)[rows]
    return shares.mean().item(), zeroed.float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED / "models" / "bert-mini-mlm"))
    parser.add_argument("--start", default=str(SHARED / "models" / "bert-mini-mlm"), help="the starting model")
    parser.add_argument("--trained-helper", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--data", default=str(SHARED / "data/train/nli/snli_dev_triplets_senteval_tok.csv"))
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--unrelated", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model, start, trained = load_encoder(args.model), load_encoder(args.start), load_encoder(args.trained_helper)
    start.head_at_inference = start.head is not None  # the objectives' frozen copy keeps the training head
    helpers = {"starting model": start, "all-MiniLM-L6-v2": trained}
    ignore, vocab = sorted(set(model.tokenizer.all_special_ids)), len(model.tokenizer)
    results: dict[str, list[tuple[float, float]]] = {}
    counts: list[float] = []

    def add(name: str, value: tuple[float, float]) -> None:
        results.setdefault(name, []).append(value)

    for rows in batches(Path(args.data), args.batches, args.pairs, args.unrelated, args.seed):
        pairs, others = rows[: args.pairs], rows[args.pairs :]
        texts = [r["sent0"] for r in pairs] + [r["sent1"] for r in pairs] + [r["sent0"] for r in others]
        size, p = len(texts), args.pairs
        false = torch.zeros(size, size, dtype=torch.bool)  # (B, B): premise k <-> entailment k
        index = torch.arange(p)
        false[index, p + index] = false[p + index, index] = True
        negative = ~torch.eye(size, dtype=torch.bool)
        counts.append((false.sum(1)[false.any(1)] / negative.sum(1)[false.any(1)]).float().mean().item())

        embeddings, ids = embed(model, texts)  # (B, H), (B, T)
        similarities = cosine_similarity_matrix(embeddings, embeddings)  # (B, B), positive = own view
        ones = torch.ones(size, size)
        add("SimCSE (uniform)", share(similarities, ones, false, negative))
        surface = surface_similarity(ids, ids, ignore=ignore, vocab_size=vocab)  # (B, B)
        noise = noise_negatives(embeddings, embeddings, count=size, steps=4, step_size=1e-3, temperature=TEMPERATURE)
        noise_similarities = cosine_similarity_matrix(embeddings, noise)  # (B, M), noise_times = 1
        for helper_name, helper in helpers.items():
            helped, _ = embed(helper, texts)  # (B, H')
            semantic = cosine_similarity_matrix(helped, helped)  # (B, B)
            # phi 0.9 is the paper's (BERT-base); 0.7 shows what a threshold fitted to the helper does.
            for phi in (0.9, 0.7):
                weights = false_negative_weights(helped, helped, phi)
                add(f"DCLR (phi {phi}, complementary: {helper_name})",
                    share(similarities, weights, false, negative, noise_similarities))  # fmt: skip
                weights = negative_weights(surface, semantic, num_bins=10, max_weight=10.0, phi=phi)
                add(f"DebCSE (phi {phi}, semantic: {helper_name})", share(similarities, weights, false, negative))

        # Triplet layout: [positives; hard negatives], the paraphrase as the own hard negative.
        hard_texts = [r["sent1"] for r in pairs] + [r["sent0"] for r in pairs] + [r["hard_neg"] for r in others]
        hard, _ = embed(model, hard_texts)  # (B, H)
        candidates = torch.cat([embeddings, hard])  # (2B, H)
        similarities = cosine_similarity_matrix(embeddings, candidates)  # (B, 2B)
        false_triplet = torch.cat([false, torch.diag(torch.arange(size) < 2 * p)], dim=1)  # (B, 2B)
        negative_triplet = torch.cat([negative, torch.ones(size, size, dtype=torch.bool)], dim=1)
        add("supervised SimCSE, triplets (uniform)", share(similarities, torch.ones(size, 2 * size), false_triplet, negative_triplet))  # fmt: skip
        base_anchors, _ = embed(start, texts)
        base_hard, _ = embed(start, hard_texts)
        own = gaussian_decay_weights(embeddings, hard, base_anchors, base_hard, temperature=TEMPERATURE, alpha=0.17)
        weights = place_own_hard_negative_weights(own, 2 * size)  # (B, 2B)
        add("GCSE, triplets (alpha 0.17, base: starting model)", share(similarities, weights, false_triplet, negative_triplet))  # fmt: skip

    print(f"\nmodel {args.model}; {args.batches} batches of {2 * args.pairs} paraphrase sentences + "
          f"{args.unrelated} unrelated; count share of the false negatives: {sum(counts) / len(counts):.4f} "
          "(in-batch layout)\n")  # fmt: skip
    print("| method | share of negative mass on false negatives | negatives weighted 0 |")
    print("| --- | ---: | ---: |")
    for name, values in results.items():
        mass, zeroed = (sum(column) / len(column) for column in zip(*values))
        print(f"| {name} | {mass:.4f} | {zeroed:.3f} |")


if __name__ == "__main__":
    main()
