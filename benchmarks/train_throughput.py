"""Training throughput: csekit's trainer vs sentence-transformers' trainer, same model, batch and data.

Both train unsupervised SimCSE: the same sentence as anchor and positive, dropout as the only
augmentation, InfoNCE over in-batch negatives at temperature 0.05 (sentence-transformers:
MultipleNegativesRankingLoss with scale 20 = 1 / 0.05), mean pooling, AdamW, max length 32. Each
(method, batch size) runs in its own process, so peak memory is that run's alone; speed is measured
over the steps after the first ``--warmup`` ones, in training sentences (examples) per second.

Model FLOP utilisation (MFU) is the step's FLOPs over the device's peak, both measured in the same run: the
FLOPs of one forward and backward pass of the encoder over both views (2B sentences) at the batches'
padded lengths, counted by ``torch.utils.flop_counter`` on a weightless (meta-device) copy of the model
(the loss and optimizer add well under 1%); the peak is the median rate of a large matrix multiply in the
precision the trainers use (``--precision``: bf16 autocast on CUDA and fp32 on CPU by default; bf16 on a
CPU with AVX-512 BF16 or AMX). Both trainers pad each batch to its longest
sentence and shuffle with their own generators, so the padded lengths are those of the measured steps'
batches in file order, the same for both methods. With ``--pack-rows N`` a third row trains csekit with
each batch's sentences packed into rows of N tokens (``pack_rows``): it computes fewer FLOPs than the
padded batch the column counts, so its MFU is an effective one.

    python benchmarks/train_throughput.py                                  # CPU, bert-mini-mlm
    python benchmarks/train_throughput.py --device cuda --model bert-base-config --batch-sizes 64 512

``--model bert-base-config`` builds a randomly initialised BERT-base (12 layers, 768 wide) with the
uncased BERT vocabulary, for machines with no network: speed does not depend on the weights.
Needs the benchmark extra: ``pip install -e .[bench]`` (or ``make bench``, which runs the CPU default).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe, machine

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CSEKIT_SHARED", os.path.relpath(ROOT.parent / "shared")))  # printed: relative
DEFAULT_MODEL = SHARED / "models" / "bert-mini-mlm"
DEFAULT_DATA = SHARED / "data" / "train" / "unsup" / "wiki1m_for_simcse.first11914lines.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder, or bert-base-config")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--steps", type=int, default=12, help="measured steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="steps before the clock starts")
    parser.add_argument("--repeats", type=int, default=1, help="runs per (method, batch); the median is reported")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="auto: bf16 autocast on CUDA, fp32 on CPU (both trainers)")
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--pack-rows", type=int, help="also run csekit with its sentences packed into rows of N tokens")
    parser.add_argument("--worker", choices=list(WORKERS), help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(WORKERS[args.worker](args)))
        return

    with tempfile.TemporaryDirectory() as scratch:
        model = materialise(args.model, Path(scratch))
        rows = []
        for batch_size in args.batch_sizes:
            for method in ("sentence-transformers", "csekit", *(["csekit-packed"] if args.pack_rows else [])):
                runs = [run_worker(method, model, batch_size, args) for _ in range(args.repeats)]
                rows.append({
                    "method": method, "batch_size": batch_size,
                    "examples_per_s": statistics.median(r["examples_per_s"] for r in runs),
                    "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
                    "runs": runs,
                })  # fmt: skip
        peak = matmul_peak(args.device, bf16=bf16(args))
        flops = {batch_size: step_flops(model, args, batch_size) for batch_size in args.batch_sizes}
    for row in rows:
        row["step_ms"] = 1000 * row["batch_size"] / row["examples_per_s"]
        row["flops_per_step"] = flops[row["batch_size"]]
        row["mfu"] = row["flops_per_step"] / (row["step_ms"] / 1000) / peak
    print(f"machine: {describe(machine())}; model {args.model}; device {args.device}; max_length 32; "
          f"{args.steps} measured steps after {args.warmup}; median of {args.repeats}; "
          f"{'bf16 autocast' if bf16(args) else 'fp32'}; "
          f"matmul peak {peak / 1e9:.1f} GFLOP/s")  # fmt: skip
    print("| batch | method | sentences/s | step (ms) | GFLOP/step | MFU | peak memory (MB) | speed-up |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in rows:
        base = next(r for r in rows if r["batch_size"] == row["batch_size"] and r["method"] == "sentence-transformers")
        print(f"| {row['batch_size']} | {row['method']} | {row['examples_per_s']:.1f} | {row['step_ms']:.0f} "
              f"| {row['flops_per_step'] / 1e9:.1f} | {row['mfu']:.1%} | {row['peak_memory_mb']:.0f} "
              f"| {row['examples_per_s'] / base['examples_per_s']:.2f}x |")  # fmt: skip
    if args.json:
        record = {"machine": describe(machine()), "args": vars(args), "matmul_peak_flop_s": peak, "rows": rows}
        Path(args.json).write_text(json.dumps(record, indent=2))


def matmul_peak(device: str, *, bf16: bool, repeats: int = 7) -> float:
    """FLOP/s of a large square matrix multiply in bf16 or fp32, median of ``repeats``."""
    import torch

    cuda = device.startswith("cuda")
    size, dtype = 8192 if cuda else 2048, torch.bfloat16 if bf16 else torch.float32
    left, right = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    left @ right  # warm-up: kernel choice, thread pool
    seconds = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        left @ right
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(seconds)


def step_flops(model: str, args, batch_size: int) -> float:
    """Mean FLOPs of one training step's encoder forward and backward over the measured batches."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    with torch.device("meta"):  # shapes only: a BERT-base step at batch 512 is counted in milliseconds
        encoder = AutoModel.from_config(AutoConfig.from_pretrained(model))
    tokenizer = AutoTokenizer.from_pretrained(model)
    texts = sentences(args.data, (args.warmup + args.steps) * batch_size)[args.warmup * batch_size :]
    counts = []
    for start in range(0, len(texts), batch_size):
        length = max(len(ids) for ids in tokenizer(texts[start : start + batch_size], truncation=True, max_length=32)["input_ids"])
        input_ids = torch.zeros(2 * batch_size, length, dtype=torch.long, device="meta")  # (2B, T): both views
        with FlopCounterMode(display=False) as counter:
            encoder(input_ids=input_ids).last_hidden_state.mean().backward()  # no mask: the same matmuls
        counts.append(counter.get_total_flops())
    return statistics.mean(counts)


def materialise(model: str, scratch: Path) -> str:
    """A local model folder; ``bert-base-config`` becomes a random BERT-base with the BERT vocabulary."""
    if model != "bert-base-config":
        return model
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    folder = scratch / "bert-base-random"
    BertForMaskedLM(BertConfig()).save_pretrained(folder)
    AutoTokenizer.from_pretrained(DEFAULT_MODEL).save_pretrained(folder)
    return str(folder)


def run_worker(method: str, model: str, batch_size: int, args) -> dict:
    command = [sys.executable, __file__, "--worker", method, "--model", model, "--data", args.data,
               "--batch-size", str(batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--device", args.device, "--precision", args.precision,
               *(["--pack-rows", str(args.pack_rows)] if args.pack_rows else [])]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{method} batch {batch_size} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bf16(args) -> bool:
    """Whether both trainers autocast to bf16: on CUDA unless told fp32, on CPU when told bf16."""
    return args.precision == "bf16" or (args.precision == "auto" and args.device.startswith("cuda"))


def sentences(path: str, count: int) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    return (lines * (count // len(lines) + 1))[:count]


def peak_memory(device: str) -> float:
    """Peak GPU memory on CUDA, else this process's peak resident memory, in MB."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def csekit_worker(args) -> dict:
    from csekit.training.config import TrainConfig
    from csekit.training.trainer import train

    total = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "train.txt"
        data.write_text("\n".join(sentences(args.data, total * args.batch_size)) + "\n", encoding="utf-8")
        config = TrainConfig(
            model=args.model, objective="simcse", pooler="mean", train_files=[str(data)], max_length=32,
            batch_size=args.batch_size, learning_rate=3e-5, max_steps=total, eval_steps=0, save_steps=0,
            logging_steps=1, output_dir=str(Path(scratch) / "run"), device=args.device,
            precision="bf16" if bf16(args) else "fp32", pack_rows=args.pack_rows if args.worker == "csekit-packed" else None,
        )  # fmt: skip
        train(config)
        records = [json.loads(line) for line in (Path(scratch) / "run" / "metrics.jsonl").read_text().splitlines()]
    clock = {record["step"]: record["train/elapsed_s"] for record in records}
    seconds = clock[total] - clock[args.warmup]
    return {"examples_per_s": args.steps * args.batch_size / seconds, "peak_memory_mb": peak_memory(args.device)}


def st_worker(args) -> dict:
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import TrainerCallback

    total = args.warmup + args.steps
    texts = sentences(args.data, total * args.batch_size)
    transformer = Transformer(args.model, max_seq_length=32)
    model = SentenceTransformer(modules=[transformer, Pooling(transformer.get_word_embedding_dimension(), "mean")],
                                device=args.device)  # fmt: skip
    clock: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, training_args, state, control, **kwargs):
            if args.device.startswith("cuda"):
                import torch

                torch.cuda.synchronize()
            clock[state.global_step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as scratch:
        training_args = SentenceTransformerTrainingArguments(
            output_dir=scratch, per_device_train_batch_size=args.batch_size, learning_rate=3e-5, max_steps=total,
            logging_steps=10**9, save_strategy="no", report_to=[], use_cpu=args.device == "cpu",
            bf16=bf16(args), dataloader_drop_last=True, seed=42,
        )  # fmt: skip
        trainer = SentenceTransformerTrainer(
            model=model, args=training_args, train_dataset=Dataset.from_dict({"anchor": texts, "positive": texts}),
            loss=MultipleNegativesRankingLoss(model, scale=20.0), callbacks=[Clock()],
        )  # fmt: skip
        trainer.train()
    seconds = clock[total] - clock[args.warmup]
    return {"examples_per_s": args.steps * args.batch_size / seconds, "peak_memory_mb": peak_memory(args.device)}


WORKERS = {"csekit": csekit_worker, "csekit-packed": csekit_worker, "sentence-transformers": st_worker}

if __name__ == "__main__":
    main()
