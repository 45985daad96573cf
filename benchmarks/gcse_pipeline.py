"""GCSE's data pipeline over wiki sentences with the local SmolLM2-135M-Instruct, and which local backend is faster.

    # 1. the same SmolLM2-135M-Instruct GGUF two ways, on the pipeline's first prompts (entities and main
    #    parts of the first 10 sentences): transformers (de-quantized, batched) and llama.cpp's server
    python benchmarks/gcse_pipeline.py speed --json benchmarks/results/gcse-generator-speed.json
    # 2. the pipeline over the first 1,000 wiki1m sentences (resumable: every output is cached in OUT/cache)
    python benchmarks/gcse_pipeline.py run --backend llama-cpp --sentences 1000 --out runs/gcse-pipeline \\
        --json benchmarks/results/gcse-pipeline.json
    # 3. where the finished run's positives and hard negatives come from (its provenance records)
    python benchmarks/gcse_pipeline.py sources --out runs/gcse-pipeline
    # 4. the control: the training file with no generated text
    python benchmarks/gcse_pipeline.py control --sentences 1000 --out runs/gcse-pipeline

``run`` writes OUT/sentences.txt (the input sentences, what unsupervised SimCSE trains on for comparison),
OUT/train.jsonl (``sent0``, ``sent1``, ``hard_neg``: what ``recipes/gcse-generated-cpu.yaml`` trains on),
OUT/provenance.jsonl (one record per row) and the stage table. Tokens are counted with SmolLM2's own tokenizer
over the outputs, and tokens/s over the time spent inside the generator (cache hits excluded). ``control``
writes OUT/control.jsonl, what the pipeline gives when no generation is usable (each sentence its own
positive, the sentence six rows on its negative): GCSE trained on it says what the generated text adds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from machine import machine

from csekit.atomic import write_text
from csekit.generation.base import CachedGenerator, Sampling, stream
from csekit.generation.hf import HFGenerator, smollm2_gguf
from csekit.generation.openai_client import OpenAIGenerator
from csekit.generation.pipeline import load_template
from csekit.generation.pipelines import PIPELINES

WIKI = Path("../shared/data/train/unsup/wiki1m_for_simcse.first11914lines.txt")
LLAMA_PORT = 8765  # fixed: the server's address is part of the generator's identity, hence of the cache key


class Metered:
    """A generator that counts its prompts, output tokens and the seconds spent inside the inner generator, per
    phase (greedy extraction, sampled samples), kept in ``path`` (added to what an interrupted run left there)."""

    def __init__(self, inner, tokenizer, path=None):
        self.inner, self.tokenizer, self.identity, self.path = inner, tokenizer, inner.identity, path
        self.phases = json.loads(path.read_text()) if path is not None and path.exists() else {}

    def generate(self, prompts, sampling):
        outputs = [None] * len(prompts)
        for index, output in self.generate_each(prompts, sampling):
            outputs[index] = output
        return outputs

    def generate_each(self, prompts, sampling):
        phase = self.phases.setdefault("extract" if sampling.temperature == 0 else "samples",
                                       {"prompts": 0, "output_tokens": 0, "seconds": 0.0})  # fmt: skip
        start = time.perf_counter()
        for index, output in stream(self.inner, prompts, sampling):
            phase["seconds"] += time.perf_counter() - start
            phase["prompts"] += 1
            phase["output_tokens"] += len(self.tokenizer(output or "", add_special_tokens=False)["input_ids"])
            if self.path is not None and phase["prompts"] % 20 == 0:
                self.path.write_text(json.dumps(self.phases))
            yield index, output
            start = time.perf_counter()
        if self.path is not None:
            self.path.write_text(json.dumps(self.phases))

    def summary(self):
        phases = {**self.phases, "all": {key: sum(p[key] for p in self.phases.values())
                                         for key in ("prompts", "output_tokens", "seconds")}}  # fmt: skip
        return {name: {**p, "seconds": round(p["seconds"], 1),
                       "tokens_per_s": round(p["output_tokens"] / p["seconds"], 1) if p["seconds"] else None}
                for name, p in phases.items()}  # fmt: skip


def start_llama_server(threads: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()), "--host", "127.0.0.1",
               "--port", str(LLAMA_PORT), "--n_threads", str(threads), "--n_ctx", "2048"]  # fmt: skip
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            socket.create_connection(("127.0.0.1", LLAMA_PORT), timeout=1).close()
            return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit("llama_cpp.server exited at start") from None
            time.sleep(0.1)
    server.kill()
    raise SystemExit("llama_cpp.server did not start within 60 s")


def generator(backend: str, *, batch_size: int, threads: int):
    """The backend as a generator, and what to stop afterwards (the llama.cpp server process, or None)."""
    if backend == "hf":
        return HFGenerator.from_pretrained(str(smollm2_gguf().parent), gguf_file=smollm2_gguf().name,
                                           batch_size=batch_size), None  # fmt: skip
    server = start_llama_server(threads=threads)
    return OpenAIGenerator("smollm2", base_url=f"http://127.0.0.1:{LLAMA_PORT}/v1", max_concurrency=1, timeout=300), server


def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_gguf().parent), gguf_file=smollm2_gguf().name)


def jsonl(records) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)


def sentences(count: int) -> list[str]:
    lines = (line.strip() for line in WIKI.open(encoding="utf-8"))
    return list(itertools.islice((line for line in lines if line), count))


def speed(args) -> dict:
    prompts = [load_template("gcse", name, 1).fill(input_text=s) for name in ("entities", "main_parts")
               for s in sentences(args.prompts // 2)]  # fmt: skip
    sampling = Sampling(max_new_tokens=args.extract_max_new_tokens)
    counter, results = tokenizer(), {}
    for backend in ("hf", "llama-cpp"):
        inner, server = generator(backend, batch_size=args.batch_size, threads=args.threads)
        try:
            metered = Metered(inner, counter)
            metered.generate(prompts, sampling)
            results[backend] = metered.summary()["all"]
        finally:
            if server is not None:
                server.terminate()
                server.wait()
        print(backend, results[backend], flush=True)
    return {"prompts": len(prompts), "sampling": vars(sampling) | {"stop": list(sampling.stop)},
            "hf_batch_size": args.batch_size, "backends": results}  # fmt: skip


def run(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = sentences(args.sentences)
    (out / "sentences.txt").write_text("".join(f"{s}\n" for s in rows), encoding="utf-8")
    inner, server = generator(args.backend, batch_size=args.batch_size, threads=args.threads)
    metered = Metered(inner, tokenizer(), out / "generator-meter.json")
    cached = CachedGenerator(metered, out / "cache")
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=0.6, top_p=0.95, seed=args.seed)
    start = time.perf_counter()
    try:
        result = PIPELINES["gcse"](rows, cached, work_dir=out, sampling=sampling, encoder=args.encoder,
                                   extract_max_new_tokens=args.extract_max_new_tokens)  # fmt: skip
    finally:
        if server is not None:
            server.terminate()
            server.wait()
    write_text(out / "train.jsonl", jsonl(result.rows))
    write_text(out / "provenance.jsonl", jsonl(result.provenance))
    summary = {"sentences": len(rows), "backend": args.backend, "threads": args.threads, "encoder": args.encoder,
               "sampling": vars(sampling) | {"stop": list(sampling.stop)},
               "extract_max_new_tokens": args.extract_max_new_tokens, "stages": result.stages,
               "malformed": dict(sorted(result.malformed.items())), "generator": metered.summary(),
               "cache": {"asked": cached.asked, "hits": cached.hits}, "minutes": round((time.perf_counter() - start) / 60, 1)}  # fmt: skip
    for name, count in result.stages.items():
        print(f"{name:40s} {count}")
    print(json.dumps({key: summary[key] for key in ("malformed", "generator", "cache", "minutes")}), flush=True)
    return summary


def control(args) -> dict:
    """The training file the pipeline writes when no generation is usable: the reference's denoising loop with
    no samples, so each row is (sentence, sentence, the sentence six rows on). GCSE trained on it measures what
    the LLM's rewrites add to the objective and its borrowed negatives."""
    from csekit.generation.pipelines.gcse import denoise

    rows = sentences(args.sentences)
    triplets = denoise(rows, [[] for _ in rows])
    path = Path(args.out) / "control.jsonl"
    write_text(path, jsonl({"sent0": t.sent0, "sent1": t.sent1, "hard_neg": t.hard_neg} for t in triplets))
    print(f"wrote {len(triplets)} rows to {path}")
    return {"sentences": len(rows), "rows": len(triplets)}


def sources(args) -> dict:
    """Where the columns of a finished run's rows come from, over the rows of the input sentences (the rows of
    unpicked samples left out), read from OUT/provenance.jsonl: ``{column: {"from[/kind]": rows}}``."""
    from collections import Counter

    records = [json.loads(line) for line in (Path(args.out) / "provenance.jsonl").open(encoding="utf-8")]
    rows = [r["columns"] for r in records if r["columns"]["sent0"]["from"] == "sentence"]
    counts = {column: dict(Counter("/".join(filter(None, (row[column]["from"], row[column].get("kind")))) for row in rows).most_common())
              for column in ("sent1", "hard_neg")}  # fmt: skip
    summary = {"rows": len(rows), **counts}
    print(json.dumps(summary, indent=1))
    return summary


def progress(args) -> dict:
    """How far an interrupted ``run`` got: its extraction outputs in the cache, read as the pipeline reads them
    (the stage-1 table over the sentences answered so far), and the generator's meter."""
    from dataclasses import replace

    from csekit.generation.base import cache_key
    from csekit.generation.pipelines.gcse import JSON_ENDS, parse_entities, parse_main_parts

    out = Path(args.out)
    rows = sentences(args.sentences)
    identity = f"openai:smollm2@http://127.0.0.1:{LLAMA_PORT}/v1" if args.backend == "llama-cpp" else None
    if identity is None:
        raise SystemExit("progress reads the llama-cpp run's cache (its identity needs no model load)")
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=0.6, top_p=0.95, seed=args.seed)
    greedy = replace(sampling, temperature=0.0, top_p=1.0, max_new_tokens=args.extract_max_new_tokens,
                     stop=JSON_ENDS["extract"])  # fmt: skip
    cache = CachedGenerator(Metered(type("Offline", (), {"identity": identity})(), None), out / "cache")
    answered = {}
    for name, parse in (("entities", parse_entities), ("main_parts", parse_main_parts)):
        template = load_template("gcse", name, 1)
        outputs = [cache._load(cache_key(identity, template.fill(input_text=s), greedy)) for s in rows]
        found = [output for output in outputs if output is not None]
        parsed = [parse(output) for output in found]
        problems = [problem for _, problem in parsed]
        useful = sum(bool(value) if name == "entities" else any(value[kind] for kind in ("subject", "action", "state"))
                     for value, _ in parsed)  # fmt: skip
        answered[name] = {"answered": len(found), "parsed": problems.count(None), "with content": useful,
                          "malformed": {kind: problems.count(kind) for kind in sorted(set(problems) - {None})}}  # fmt: skip
    meter = out / "generator-meter.json"
    phases = json.loads(meter.read_text()) if meter.exists() else {}
    rates = {name: {**p, "seconds": round(p["seconds"], 1), "tokens_per_s": round(p["output_tokens"] / p["seconds"], 1)}
             for name, p in phases.items()}  # fmt: skip
    print(json.dumps({"extract": answered, "generator": rates}, indent=1))
    return {"sentences": len(rows), "backend": args.backend, "extract": answered, "generator": rates,
            "complete": False}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("speed", "run", "control", "sources", "progress"))
    parser.add_argument("--prompts", type=int, default=20, help="speed: prompts per backend")
    parser.add_argument("--backend", choices=("hf", "llama-cpp"), default="llama-cpp")
    parser.add_argument("--batch-size", type=int, default=10, help="prompts per HF generate call")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama.cpp server threads")
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--out", default="runs/gcse-pipeline")
    parser.add_argument("--encoder", default="all-MiniLM-L6-v2")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="positives and negatives")
    parser.add_argument("--extract-max-new-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json")
    args = parser.parse_args()
    summary = {"speed": speed, "run": run, "control": control, "sources": sources, "progress": progress}[args.command](args)
    if args.json:
        summary = {"command": " ".join(["python", "benchmarks/gcse_pipeline.py", *sys.argv[1:]]), **summary,
                   "machine": machine()}  # fmt: skip
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
