"""Should ONNX Runtime run csekit's encoder on CPU? Parity per pooler, and throughput against PyTorch.

Each encoder is exported whole (backbone + pooler + head + output modules, dynamic batch and sequence
axes) by :func:`csekit.inference.onnx_backend.export_onnx` and run by ``OnnxEncoder`` (ONNX Runtime's
CPU execution provider, every graph optimisation, one intra-op thread per core). Both engines get the
same token rows (``SentenceEncoder.inference_tokens``: the model's own max length), sorted longest first
and cut into batches as ``encode`` cuts them, and are timed on whole passes over the sentences, padding
and host work included.

- parity: the max abs difference of the embeddings (raw, and normalised where the model normalises)
  for every pooler on the raw BERT-mini, and the saved mean + normalize of all-MiniLM-L6-v2, in
  batches of 128 (what the evaluators use);
- throughput: sentences/s, the median of ``--repeats`` passes per (method, batch size), the methods
  taking turns in a rotating order so a busy neighbour slows each alike. Methods: PyTorch eager
  (``SentenceEncoder.embed_tokens``, ``torch.inference_mode``: what ``encode`` runs), ``torch.compile``
  (inductor, dynamic shapes), ONNX Runtime; and, as extra rows whose numbers move beyond 1e-5, PyTorch
  bf16 autocast and int8 dynamic quantisation of both engines;
- the hardware's limit: FLOPs of each pass from its padded batches (2 x matmul parameters x tokens
  + 4 x layers x width x length^2 per sentence for attention; embedding look-ups cost none) against a
  large fp32 matmul's FLOP/s measured in the same run.

    python benchmarks/onnx_backend.py --json benchmarks/results/onnx-backend.json \\
        --markdown benchmarks/results/onnx-backend.md            # ~40 minutes on 2 busy cores
    python benchmarks/onnx_backend.py --sentences 64 --repeats 1 --batch-sizes 32 --no-compile --no-extras \\
        --poolers mean mask_denoised                              # a smoke test of the script

Needs the ONNX extra: ``pip install -e .[onnx]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.utils.mkldnn
from machine import SHARED, machine, relative
from torch import nn

from csekit import load_encoder
from csekit.data.collate import pad_batch
from csekit.inference.onnx_backend import OnnxEncoder, export_onnx, usable_cores
from csekit.models import SentenceEncoder
from csekit.models.pooling import build_pooler

BERT_MINI = SHARED / "models" / "bert-mini-mlm"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"
DEFAULT_DATA = SHARED / "data" / "train" / "unsup" / "wiki1m_for_simcse.first11914lines.txt"
#: Every pooler on BERT-mini; layer_mean and Ditto with the settings benchmarks/postprocess.py picks for it.
BERT_MINI_POOLERS = ("cls", "cls_before_pooler", "mean", "max", "first_last_avg", "last2avg", "mask", "mask_denoised",
                     "layer_mean", "ditto")  # fmt: skip
POOLER_SETTINGS = {"layer_mean": {"layers": [0, 4]}, "ditto": {"layer": 0, "head": 1}}
#: The decision's parity bound (max abs difference of embeddings).
TOLERANCE = 1e-5
PARITY_BATCH = 128

PEAK_LIBRARIES = ("torch matmul (MKL)", "torch oneDNN linear", "ONNX Runtime MatMul (MLAS)")

Embed = Callable[[Sequence[dict]], np.ndarray]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="one sentence a line (default: %(default)s)")
    parser.add_argument("--sentences", type=int, default=256, help="a seeded sample of this many lines")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per (method, batch); the median counts")
    parser.add_argument("--poolers", nargs="+", default=list(BERT_MINI_POOLERS), help="BERT-mini poolers to check")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (a minute or more to compile)")
    parser.add_argument("--no-extras", action="store_true", help="skip the bf16 and int8 rows")
    parser.add_argument("--threads", type=int, nargs="+", default=sorted({1, usable_cores()}),
                        help="threads of both engines, each measured (default: 1 and the usable cores)")
    parser.add_argument("--json", dest="json_path", help="write the results here")
    parser.add_argument("--markdown", help="write the results page here")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ inputs
def read_sentences(path: str, count: int) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        lines = [line.strip() for line in handle if line.strip()]
    return random.Random(0).sample(lines, min(count, len(lines)))


def encode_batches(rows: list[dict], batch_size: int) -> list[list[dict]]:
    """Rows sorted longest first and cut into batches, as ``SentenceEncoder.encode`` cuts them."""
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
    return [[rows[i] for i in order[start : start + batch_size]] for start in range(0, len(order), batch_size)]


def load(model: Path, pooler: str | None = None) -> SentenceEncoder:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a raw checkpoint's seeded cls head is announced; known here
        if pooler in POOLER_SETTINGS:
            encoder = load_encoder(model, pooler="mean")
            encoder.set_pooler(build_pooler(pooler, config=encoder.backbone.config, tokenizer=encoder.tokenizer,
                                            settings=POOLER_SETTINGS[pooler]))  # fmt: skip
        else:
            encoder = load_encoder(model, pooler=pooler)
    return encoder.eval()


def run_all(embed: Embed, batches: list[list[dict]]) -> np.ndarray:
    return np.concatenate([embed(batch) for batch in batches])


def max_diff(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.abs(first.astype(np.float64) - second.astype(np.float64)).max())


# ------------------------------------------------------------------------------------------ hardware
def matmul_peak(threads: int, size: int = 2048, repeats: int = 7) -> dict:
    """fp32 FLOP/s of a large square matmul in each GEMM library at hand (torch's MKL, its oneDNN linear, ONNX
    Runtime's MLAS), median of ``repeats``; the fastest library's median is the roof the encoders are put against."""
    import onnxruntime
    from onnx import TensorProto, helper

    torch.set_num_threads(threads)
    first, second = torch.randn(size, size), torch.randn(size, size)
    linear = torch.utils.mkldnn.MkldnnLinear(nn.Linear(size, size, bias=False), torch.float)
    matrix = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("MatMul", ["A", "B"], ["C"])], "matmul",
                              [matrix("A", TensorProto.FLOAT, [size, size]), matrix("B", TensorProto.FLOAT, [size, size])],
                              [matrix("C", TensorProto.FLOAT, [size, size])])  # fmt: skip
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(helper.make_model(graph).SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])  # fmt: skip
    feeds = {"A": first.numpy(), "B": second.numpy()}
    libraries = dict(zip(PEAK_LIBRARIES, (lambda: first @ second, lambda: linear(first),
                                          lambda: session.run(None, feeds))))  # fmt: skip
    flops, result = 2 * size**3, {"size": size}
    with torch.inference_mode():
        for name, run in libraries.items():
            run()  # warm the thread pool and the kernel selection
            seconds = []
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                seconds.append(time.perf_counter() - start)
            result[name] = {"gflops_median": flops / statistics.median(seconds) / 1e9,
                            "gflops_best": flops / min(seconds) / 1e9}  # fmt: skip
    result["gflops_median"] = max(result[name]["gflops_median"] for name in libraries)
    result["gflops_best"] = max(result[name]["gflops_best"] for name in libraries)
    return result


def matmul_parameters(encoder: SentenceEncoder) -> int:
    """Weights of the linear layers a token passes through (embedding tables are look-ups: no FLOPs)."""
    modules = [encoder.backbone, *([encoder.head] if encoder.uses_head else []), *encoder.outputs]
    return sum(m.weight.numel() for part in modules for m in part.modules() if isinstance(m, nn.Linear))


def pass_flops(encoder: SentenceEncoder, batches: list[list[dict]]) -> dict:
    """FLOPs of one pass over ``batches`` as padded (what the engines compute), and its tokens."""
    config = encoder.backbone.config
    parameters, layers, width = matmul_parameters(encoder), config.num_hidden_layers, config.hidden_size
    padded = real = attention = 0
    for batch in batches:
        rows, length = len(batch), max(len(row["input_ids"]) for row in batch)
        padded += rows * length
        real += sum(len(row["input_ids"]) for row in batch)
        attention += 4 * layers * width * rows * length**2  # Q K^T and A V: 2 T^2 H each, per layer
    return {"flops": 2 * parameters * padded + attention, "padded_tokens": padded, "real_tokens": real,
            "matmul_parameters": parameters}  # fmt: skip


def onnx_machine() -> dict:
    """The shared machine record, with the SIMD flags and the libraries both engines run on."""
    import onnxruntime

    flags: set[str] = set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = set(next((line.split(":", 1)[1].split() for line in cpuinfo.read_text(encoding="utf-8").splitlines()
                          if line.startswith("flags")), []))  # fmt: skip
    return {**machine(), "usable_cores": usable_cores(), "onnxruntime": onnxruntime.__version__,
            "simd": [flag for flag in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile") if flag in flags],
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}  # fmt: skip


def load_average() -> list[float]:
    return [round(value, 2) for value in os.getloadavg()] if hasattr(os, "getloadavg") else []


# ------------------------------------------------------------------------------------------ parity
def check_parity(model: Path, pooler: str | None, sentences: list[str], scratch: Path) -> dict:
    encoder = load(model, pooler)
    start = time.perf_counter()
    folder = export_onnx(encoder, scratch / f"{model.name}-{encoder.pooler.name}")
    export_seconds = time.perf_counter() - start
    start = time.perf_counter()
    exported = OnnxEncoder(folder)
    load_seconds = time.perf_counter() - start
    batches = encode_batches(encoder.inference_tokens(sentences), PARITY_BATCH)
    result = {"model": str(model), "pooler": encoder.pooler.name, "normalize": encoder.normalize,
              "export_s": export_seconds, "session_load_s": load_seconds,
              "onnx_mb": sum(f.stat().st_size for f in folder.iterdir()) / 2**20}  # fmt: skip
    for normalize in (False, True):
        expected = run_all(lambda rows, n=normalize: encoder.embed_tokens(rows, normalize=n), batches)
        got = run_all(lambda rows, n=normalize: exported.embed_tokens(rows, normalize=n), batches)
        key = "normalized" if normalize else "raw"
        result[f"max_abs_diff_{key}"] = max_diff(expected, got)
        result[f"max_abs_value_{key}"] = float(np.abs(expected).max())
    result["within_tolerance"] = max(result["max_abs_diff_raw"], result["max_abs_diff_normalized"]) <= TOLERANCE
    return result


# ------------------------------------------------------------------------------------------ throughput
def methods(encoder: SentenceEncoder, folder: Path, args, threads: int, built: dict) -> dict[str, tuple[Embed, bool]]:
    """Name -> (embed function, whether it computes in fp32 as csekit does). All return what ``encode`` would.

    PyTorch's methods run on ``torch.get_num_threads()`` threads (set by the caller), ONNX Runtime's on
    ``threads``. ``built`` keeps the compiled and converted models between thread counts (compiled once).
    """
    chosen: dict[str, tuple[Embed, bool]] = {"PyTorch eager (encode's path)": (encoder.embed_tokens, True)}
    if "onednn" not in built:  # the linears on oneDNN instead of MKL: faster on CPUs MKL does not favour
        built["onednn"] = torch.utils.mkldnn.to_mkldnn(copy.deepcopy(encoder))
    chosen["PyTorch eager, oneDNN linears (torch.utils.mkldnn)"] = (built["onednn"].embed_tokens, True)
    if not args.no_compile:
        built.setdefault("compile", torch.compile(encoder, dynamic=True))
        # Freezing folds the weights into the graph and prepacks the linears for oneDNN (inference only).
        built.setdefault("compile, freezing", torch.compile(encoder, dynamic=True, options={"freezing": True}))
        for key in ("compile", "compile, freezing"):
            chosen[f"PyTorch torch.compile ({key.replace('compile', 'inductor')})"] = (_compiled_embed(encoder, built[key]), True)
    exported = OnnxEncoder(folder, threads=threads)
    exported.normalize = encoder.normalize
    chosen["ONNX Runtime"] = (exported.embed_tokens, True)
    if args.no_extras:
        return chosen

    def bf16_embed(rows):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return encoder.embed_tokens(rows)

    chosen["extra: PyTorch bf16 autocast"] = (bf16_embed, False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
        quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder), {nn.Linear}, dtype=torch.qint8)
    chosen["extra: PyTorch int8 dynamic"] = (quantized.embed_tokens, False)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    int8_folder = folder.with_name(folder.name + "-int8")
    if not int8_folder.exists():
        shutil.copytree(folder, int8_folder)
        quantize_dynamic(folder / "model.onnx", int8_folder / "model.onnx", weight_type=QuantType.QInt8)
    exported_int8 = OnnxEncoder(int8_folder, threads=threads)
    exported_int8.normalize = encoder.normalize
    chosen["extra: ONNX Runtime int8 dynamic"] = (exported_int8.embed_tokens, False)
    return chosen


def _compiled_embed(encoder: SentenceEncoder, compiled: nn.Module) -> Embed:
    @torch.inference_mode()
    def embed(rows):
        embeddings = compiled(**pad_batch(rows, encoder.pad_token_id)).float()  # (B, H)
        return (nn.functional.normalize(embeddings, dim=-1) if encoder.normalize else embeddings).numpy()

    return embed


def measure_throughput(model: Path, sentences: list[str], scratch: Path, args, threads: int, peak: float,
                       built: dict) -> list[dict]:  # fmt: skip
    torch.set_num_threads(threads)
    if "encoder" not in built:
        built["encoder"] = load(model, "mean" if model == BERT_MINI else None)  # MiniLM: its saved mean + normalize
    encoder = built["encoder"]
    folder = scratch / f"{model.name}-{encoder.pooler.name}"  # the parity check's export, when it ran
    if not folder.exists():
        export_onnx(encoder, folder)
    rows = encoder.inference_tokens(sentences)
    chosen = methods(encoder, folder, args, threads, built)
    results = []
    for batch_size in args.batch_sizes:
        batches = encode_batches(rows, batch_size)
        flops = pass_flops(encoder, batches)
        reference = run_all(encoder.embed_tokens, batches)
        warm = {}
        for name, (embed, _) in chosen.items():  # untimed: compilation, arenas, thread pools
            start = time.perf_counter()
            warm[name] = max_diff(run_all(embed, batches), reference)
            warm[name + " s"] = time.perf_counter() - start
        seconds: dict[str, list[float]] = {name: [] for name in chosen}
        names = list(chosen)
        for repeat in range(args.repeats):
            for name in names[repeat % len(names) :] + names[: repeat % len(names)]:  # a rotating order
                start = time.perf_counter()
                run_all(chosen[name][0], batches)
                seconds[name].append(time.perf_counter() - start)
            print(f"  {model.name} threads {threads} batch {batch_size} repeat {repeat + 1}/{args.repeats} "
                  f"(load {load_average()})",
                  file=sys.stderr, flush=True)  # fmt: skip
        for name, (_, fp32) in chosen.items():
            median = statistics.median(seconds[name])
            results.append({
                "model": str(model), "pooler": encoder.pooler.name, "normalize": encoder.normalize,
                "threads": threads, "batch_size": batch_size, "method": name, "fp32": fp32, "sentences": len(rows),
                "sentences_per_s": len(rows) / median, "seconds_median": median, "seconds": seconds[name],
                "first_pass_s": warm[name + " s"], "max_abs_diff_vs_eager": warm[name],
                "gflops": flops["flops"] / median / 1e9, "share_of_peak": flops["flops"] / median / 1e9 / peak,
                "flops_per_sentence": flops["flops"] / len(rows), **flops,
            })  # fmt: skip
    return results


# ------------------------------------------------------------------------------------------ report
def decide(parity: list[dict], speed: list[dict], threads: int) -> dict:
    """Adopt only if every pooler's export stays within TOLERANCE and ONNX Runtime is faster than the fastest
    fp32 PyTorch method (encode's eager path, oneDNN linears, torch.compile) at every measured batch size of
    every model, on ``threads`` threads (what encode runs with: torch's default, the usable cores). The bf16
    and int8 rows change the numbers, so they do not compete; other thread counts are reported, not decided on."""
    failing = [f"{Path(row['model']).name}/{row['pooler']}" for row in parity if not row["within_tolerance"]]
    versus_eager, versus_best, slower = [], [], []
    for row in speed:
        if row["method"] != "ONNX Runtime" or row["threads"] != threads:
            continue
        same = [r for r in speed if _same_setting(r, row) and r["fp32"] and r["method"].startswith("PyTorch")]
        best = max(same, key=lambda r: r["sentences_per_s"])
        versus_eager.append(row["sentences_per_s"] / _eager(speed, row)["sentences_per_s"])
        versus_best.append(row["sentences_per_s"] / best["sentences_per_s"])
        if versus_best[-1] <= 1:
            slower.append(f"{Path(row['model']).name} threads {row['threads']} batch {row['batch_size']}: {best['method']}")
    adopt = not failing and bool(versus_best) and not slower
    other: dict[int, list[float]] = {}
    for row in speed:
        if row["method"] == "ONNX Runtime" and row["threads"] != threads:
            same = [r for r in speed if _same_setting(r, row) and r["fp32"] and r["method"].startswith("PyTorch")]
            other.setdefault(row["threads"], []).append(row["sentences_per_s"] / max(r["sentences_per_s"] for r in same))
    return {"adopt": adopt, "threads": threads, "parity_failures": failing, "slower_than_pytorch": slower,
            "speedup_vs_eager": [min(versus_eager, default=None), max(versus_eager, default=None)],
            "speedup_vs_best_pytorch": [min(versus_best, default=None), max(versus_best, default=None)],
            "other_threads": {key: [min(values), max(values)] for key, values in other.items()}}  # fmt: skip


def _same_setting(first: dict, second: dict) -> bool:
    return all(first[key] == second[key] for key in ("model", "threads", "batch_size"))


def _eager(rows: list[dict], row: dict) -> dict:
    return next(r for r in rows if _same_setting(r, row) and r["method"].startswith("PyTorch eager"))


def _peak_line(threads: int, peak: dict) -> str:
    libraries = [f"{name} " + " / ".join(f"{run[name]['gflops_median']:.0f}" for run in peak["runs"])
                 for name in PEAK_LIBRARIES]  # fmt: skip
    return f"{threads} thread{'s' if int(threads) > 1 else ''}: " + ", ".join(libraries)


def report(record: dict) -> str:
    info, decision = record["machine"], record["decision"]
    lines = [
        "# ONNX Runtime as csekit's CPU inference engine",
        "",
        f"`{record['command']}`",
        "",
        f"Machine: {info['cpu']} ({', '.join(info['simd'])}), {info['usable_cores']} usable cores of {info['cores']}, "
        f"torch {info['torch']} (CPU capability {info['torch_cpu_capability']}), onnxruntime {info['onnxruntime']}, "
        f"{' and '.join(map(str, record['threads']))} threads for both engines. Load averages "
        f"(1, 5, 15 min) {record['load']['start']} at the start, {record['load']['end']} at the end; timings are "
        f"medians of {record['repeats']} passes taken in turns.",
        "Peak: a 2048² fp32 matmul in each GEMM library, at the start and the end of the run (GFLOP/s, medians): "
        + "; ".join(_peak_line(threads, peak) for threads, peak in record["peak"].items())
        + ". '% of peak' divides by the fastest library's median at the same thread count (the median of the two "
        "measurements).",
        f"Sentences: {record['sentences']} drawn (seed 0) from `{record['data']}`, tokenized at each model's own "
        "max length, sorted longest first and batched as `encode` batches them.",
        "",
        "## Throughput",
        "",
        "| model | threads | batch | method | sentences/s | passes (s, min–max) | × eager | GFLOP/s | % of peak | "
        "first pass s | max abs diff vs eager |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in record["throughput"]:
        eager = _eager(record["throughput"], row)
        lines.append(
            f"| {Path(row['model']).name} ({row['pooler']}{', normalize' if row['normalize'] else ''}) | "
            f"{row['threads']} | {row['batch_size']} | {row['method']} | {row['sentences_per_s']:.1f} | "
            f"{min(row['seconds']):.2f}–{max(row['seconds']):.2f} | {row['sentences_per_s'] / eager['sentences_per_s']:.2f}x | "
            f"{row['gflops']:.1f} | {100 * row['share_of_peak']:.0f}% | {row['first_pass_s']:.1f} | "
            f"{row['max_abs_diff_vs_eager']:.1e} |"
        )
    lines += ["", "FLOPs per pass (padded batches as run; the same for every method and thread count):", ""]
    lines += ["| model | batch | matmul params | real tokens | padded tokens | GFLOP per sentence |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    seen = set()
    for row in record["throughput"]:
        if (row["model"], row["batch_size"]) not in seen:
            seen.add((row["model"], row["batch_size"]))
            lines.append(f"| {Path(row['model']).name} | {row['batch_size']} | {row['matmul_parameters'] / 1e6:.2f}M | "
                         f"{row['real_tokens']} | {row['padded_tokens']} | {row['flops_per_sentence'] / 1e9:.3f} |")  # fmt: skip
    lines += [
        "",
        f"## Parity per pooler (batches of {PARITY_BATCH}, same token rows)",
        "",
        "| model | pooler | max abs diff (raw) | max abs diff (normalized) | max abs value (raw) | export s | session load s | ONNX MB | within 1e-5 |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in record["parity"]:
        lines.append(f"| {Path(row['model']).name} | {row['pooler']} | {row['max_abs_diff_raw']:.1e} | "
                     f"{row['max_abs_diff_normalized']:.1e} | {row['max_abs_value_raw']:.1f} | {row['export_s']:.1f} | "
                     f"{row['session_load_s']:.2f} | {row['onnx_mb']:.0f} | {'yes' if row['within_tolerance'] else 'NO'} |")  # fmt: skip
    verdict = "adopt ONNX Runtime as an option" if decision["adopt"] else "do not adopt ONNX Runtime"
    lines += ["", "## Decision", "", f"**{verdict}.** Rule: every exported pooler within {TOLERANCE:.0e} (max abs) of "
              "PyTorch, and ONNX Runtime faster than the fastest fp32 PyTorch method at every measured batch size of "
              f"both models on {decision['threads']} threads, what `encode` runs with (torch's default: the usable "
              "cores); bf16 and int8 change the embeddings, so they do not compete.", ""]  # fmt: skip
    lines.append(f"- parity failures: {', '.join(decision['parity_failures']) or 'none'}")
    lines.append(f"- settings where a PyTorch method is as fast or faster: {'; '.join(decision['slower_than_pytorch']) or 'none'}")
    if decision["speedup_vs_eager"][0] is not None:
        low, high = decision["speedup_vs_eager"]
        lines.append(f"- ONNX Runtime vs PyTorch eager (encode's path): {low:.2f}x to {high:.2f}x")
        low, high = decision["speedup_vs_best_pytorch"]
        lines.append(f"- ONNX Runtime vs the fastest fp32 PyTorch method of each setting: {low:.2f}x to {high:.2f}x")
    for threads, (low, high) in decision["other_threads"].items():
        lines.append(f"- on {threads} thread{'s' if threads > 1 else ''} (reported, not decided on): ONNX Runtime vs "
                     f"the fastest fp32 PyTorch method {low:.2f}x to {high:.2f}x")  # fmt: skip
    return "\n".join(lines) + "\n"




def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python benchmarks/onnx_backend.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    load = {"start": load_average()}
    peaks = {threads: [matmul_peak(threads)] for threads in args.threads}
    torch.set_num_threads(max(args.threads))
    sentences = read_sentences(args.data, args.sentences)
    parity, speed = [], []
    with tempfile.TemporaryDirectory() as scratch:
        for pooler in args.poolers:
            parity.append(check_parity(BERT_MINI, pooler, sentences, Path(scratch)))
            print(f"parity bert-mini {pooler}: {parity[-1]['max_abs_diff_raw']:.1e}", file=sys.stderr, flush=True)
        parity.append(check_parity(MINILM, None, sentences, Path(scratch)))
        for model in (BERT_MINI, MINILM):
            built: dict = {}
            for threads in args.threads:
                speed += measure_throughput(model, sentences, Path(scratch), args, threads,
                                            peaks[threads][0]["gflops_median"], built)  # fmt: skip
    for threads in args.threads:
        peaks[threads].append(matmul_peak(threads))
    load["end"] = load_average()
    peak = {threads: {"gflops_median": statistics.median(p["gflops_median"] for p in runs),
                      "gflops_best": max(p["gflops_best"] for p in runs), "runs": runs}
            for threads, runs in peaks.items()}  # fmt: skip
    for row in speed:  # against the peak of the whole run (start and end), not the first measurement alone
        row["share_of_peak"] = row["gflops"] / peak[row["threads"]]["gflops_median"]
    for row in (*parity, *speed):
        row["model"] = relative(row["model"])
    record = {"command": command, "machine": onnx_machine(), "threads": args.threads, "load": load, "peak": peak,
              "data": relative(args.data), "sentences": len(sentences), "repeats": args.repeats,
              "parity": parity, "throughput": speed, "decision": decide(parity, speed, usable_cores())}  # fmt: skip
    page = report(record)
    print(page)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if args.markdown:
        Path(args.markdown).write_text(page, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
