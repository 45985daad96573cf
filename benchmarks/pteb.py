"""PTEB-style STS: a model's score over LLM paraphrases of the test sentences, mean ± std over draws, beside
the plain score (see :mod:`csekit.generation.pteb`).

    python benchmarks/pteb.py --model all-MiniLM-L6-v2 --task stsb --generator smollm2 --draws 3 --pairs 200

``--pairs N`` scores the first N pairs of the task (the plain score on the same pairs); the paraphrases are
cached (``--cache``), so a rerun or another model reuses them. Writes ``--json`` and ``--markdown``
(default benchmarks/results/pteb.{json,md}), keeping the other rows already in them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from machine import SHARED, describe, machine, relative

from csekit.evaluation.sts import ScoredPairs, load_task
from csekit.generation import CachedGenerator, make_generator
from csekit.generation.pteb import SAMPLING, paraphrase_sts
from csekit.models import load_encoder

RESULTS = Path(__file__).resolve().parent / "results"


def first_pairs(subsets: list[ScoredPairs], limit: int | None) -> list[ScoredPairs]:
    """The first ``limit`` pairs over the subsets in file order (all where ``limit`` is None)."""
    kept, left = [], limit
    for subset in subsets:
        if left is not None and left <= 0:
            break
        n = len(subset.gold) if left is None else min(left, len(subset.gold))
        kept.append(ScoredPairs(subset.name, subset.first[:n], subset.second[:n], subset.gold[:n]))
        left = None if left is None else left - n
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="all-MiniLM-L6-v2", help="a name under shared/models, or a model folder")
    parser.add_argument("--task", default="stsb")
    parser.add_argument("--pairs", type=int, help="score the first N pairs only")
    parser.add_argument("--generator", default="smollm2", help="a --generator spec (csekit generate --help)")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate call (hf:)")
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (openai:)")
    parser.add_argument("--cache", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "csekit-pteb-cache"))
    parser.add_argument("--data-dir", default=os.environ.get("CSEKIT_DATA", str(SHARED / "data/senteval/downstream")))
    parser.add_argument("--json", default=str(RESULTS / "pteb.json"))
    parser.add_argument("--markdown", default=str(RESULTS / "pteb.md"))
    args = parser.parse_args()

    info = machine()
    model_path = SHARED / "models" / args.model if (SHARED / "models" / args.model).is_dir() else Path(args.model)
    encoder = load_encoder(str(model_path)).eval()
    subsets = first_pairs(load_task(Path(args.data_dir), args.task, "test"), args.pairs)
    generator = CachedGenerator(make_generator(args.generator, concurrency=args.concurrency, batch_size=args.batch_size),
                                args.cache)  # fmt: skip
    started = time.perf_counter()
    result = paraphrase_sts(lambda texts: encoder.encode(texts, batch_size=64), subsets, generator, draws=args.draws)
    seconds = time.perf_counter() - started
    pairs = sum(len(s.gold) for s in subsets)
    row = {"model": args.model, "task": args.task, "pairs": pairs, "generator": args.generator,
           "generator_identity": generator.identity, "sampling": asdict(SAMPLING), "draws": args.draws,
           "plain": result.plain, "paraphrased": result.draws, "mean": result.mean, "std": result.std,
           "changed": result.changed, "unusable": result.unusable, "asked": generator.asked, "from_cache": generator.hits,
           "seconds": round(seconds, 1)}  # fmt: skip
    print(json.dumps(row, indent=1))

    saved = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {"rows": []}
    key = (args.model, args.task, pairs, args.generator)
    saved["rows"] = [r for r in saved["rows"] if (r["model"], r["task"], r["pairs"], r["generator"]) != key] + [row]
    saved["machine"] = info
    Path(args.json).write_text(json.dumps(saved, indent=1) + "\n")
    Path(args.markdown).write_text(markdown(saved, args))
    print(f"wrote {relative(args.json)} and {relative(args.markdown)}")


def markdown(saved: dict, args: argparse.Namespace) -> str:
    lines = ["# PTEB-style STS: scores over LLM paraphrases of the test sentences", "",
             "Each distinct test sentence is paraphrased by the generator once per draw (seed 0, 1, 2, ...; "
             f"temperature {SAMPLING.temperature}, top-p {SAMPLING.top_p}, at most {SAMPLING.max_new_tokens} new tokens), "
             "both sides of every pair are replaced, and the pairs are scored as usual (cosine Spearman ×100) against "
             "the original gold scores. *changed*: the share of sentences whose paraphrase has other words than they have "
             "(case, spacing and punctuation aside); "
             "*unusable*: outputs that were empty or refusals (the sentence was kept). Protocol: Frank & Afli (2025), "
             "see `src/csekit/generation/pteb.py` for where it departs.", "",
             "| model | task | pairs | generator | plain | paraphrased (mean ± std) | Δ | draws | changed | unusable | time |",
             "| --- | --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]  # fmt: skip
    for r in saved["rows"]:
        draws = ", ".join(f"{score:.2f}" for score in r["paraphrased"])
        changed = sum(r["changed"]) / len(r["changed"])
        lines.append(f"| {r['model']} | {r['task']} | {r['pairs']} | `{r['generator']}` | {r['plain']:.2f} | "
                     f"{r['mean']:.2f} ± {r['std']:.2f} | {r['mean'] - r['plain']:+.2f} | {draws} | {changed:.0%} | "
                     f"{sum(r['unusable'])} | {r['seconds']:.0f} s |")  # fmt: skip
    lines += ["", f"Machine: {describe(saved['machine'])}.", "",
              f"Command: `python benchmarks/pteb.py --model {args.model} --task {args.task}"
              f"{f' --pairs {args.pairs}' if args.pairs else ''} --generator {args.generator} --draws {args.draws}`", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
