"""The seven-task STS table of one model under every pooler (default: the raw BERT-mini masked LM).

    python benchmarks/poolers.py [--model PATH] [--json benchmarks/results/poolers-bert-mini-mlm.json]

The raw model was never trained on sentence pairs: its best pooler is the baseline every training
method must beat. The ``cls`` pooler of a raw model with no pretrained pooler passes [CLS] through a
freshly initialised dense + tanh head, as a model would start its training. The prompt poolers
``mask`` and ``mask_denoised`` wrap each sentence in PromptBERT's BERT template (csekit.models.prompt).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from csekit.evaluation.sts import TASKS, TITLES, STSEvaluator
from csekit.models import POOLERS, MaskPooler, load_encoder
from csekit.models.prompt import SENTENCE_ENDS

SHARED = Path(os.environ.get("CSEKIT_SHARED", os.path.relpath(Path(__file__).resolve().parents[2] / "shared")))  # printed: relative


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED / "models" / "bert-mini-mlm"))
    parser.add_argument("--data-dir", default=os.environ.get("CSEKIT_DATA", str(SHARED / "data/senteval/downstream")))
    # layer_mean and Ditto need their settings chosen per model: benchmarks/postprocess.py searches them.
    parser.add_argument("--poolers", nargs="+", default=[name for name in POOLERS if name not in ("layer_mean", "ditto")])
    parser.add_argument("--json")
    args = parser.parse_args()

    evaluator = STSEvaluator(TASKS, data_dir=args.data_dir)
    results = {}
    for pooler in args.poolers:
        torch.manual_seed(0)  # the cls head of a raw model is freshly initialised: fix it
        start = time.perf_counter()
        results[pooler] = evaluator.evaluate(load_encoder(args.model, pooler=pooler))
        print(f"{pooler}: avg {results[pooler]['avg']:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"\nmodel {args.model}: STS test, Spearman x100 (STS12-16: 'all')\n")
    print("| pooler | " + " | ".join(TITLES[t] for t in TASKS) + " | avg |")
    print("| --- |" + " ---: |" * (len(TASKS) + 1))
    for pooler, metrics in results.items():
        print(f"| {pooler} | " + " | ".join(f"{metrics[t]:.2f}" for t in (*TASKS, "avg")) + " |")
    if any(issubclass(POOLERS[pooler], MaskPooler) for pooler in args.poolers):
        # PromptBERT's test protocol ends a sentence without final punctuation with a period: how many it changes.
        shares = {task: _share_without_end(evaluator.data[task]) for task in TASKS}
        print("\nsentences the prompt poolers' period changes: "
              + ", ".join(f"{TITLES[task]} {100 * share:.0f}%" for task, share in shares.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "results": results}, indent=1) + "\n")


def _share_without_end(subsets) -> float:
    texts = [text for subset in subsets for text in (*subset.first, *subset.second)]
    return sum(1 for text in texts if text and text[-1] not in SENTENCE_ENDS) / len(texts)


if __name__ == "__main__":
    main()
