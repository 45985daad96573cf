"""A bounded load test of ``csekit serve``, against infinity-emb serving the same model and in-process encoding.

    python benchmarks/serve_load.py [--model ../shared/models/all-MiniLM-L6-v2] [--requests 512] [--concurrency 16]
        [--batch 8] [--repeats 3] [--infinity PATH/TO/infinity_emb] [--json benchmarks/results/serve-load.json]

Each server runs alone on 127.0.0.1 (a subprocess, started and stopped here) and gets the same fixed
number of OpenAI-style embedding requests (``--batch`` sentences each, ``encoding_format: float``) from
``--concurrency`` concurrent connections of one asyncio client; the run ends when the last request has
been answered. Every answer is checked (status, rows) and the first against
``SentenceTransformer.encode`` of the same sentences. In-process ``SentenceTransformer.encode`` runs the
same requests one call each, one after another (no HTTP), and all their sentences in one call.
Reported: requests/s, sentences/s, p50/p99 latency, each the median over ``--repeats`` runs, and the
ratio of csekit's sentences/s to each alternative. Client and server share this machine's cores.

infinity-emb lives in its own virtual environment (its pins differ from csekit's); ``--infinity`` is its
``infinity_emb`` executable (default ``$INFINITY_EMB``), left out when not given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from machine import SHARED, describe, machine, relative

DEFAULT_MODEL = SHARED / "models" / "all-MiniLM-L6-v2"
DEFAULT_SENTENCES = SHARED / "data" / "train" / "unsup" / "wiki1m_for_simcse.first11914lines.txt"
MODEL_NAME = "bench-model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--sentences", default=str(DEFAULT_SENTENCES), help="a text file, one sentence a line")
    parser.add_argument("--requests", type=int, default=512, help="requests per run")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight at once")
    parser.add_argument("--batch", type=int, default=8, help="sentences per request")
    parser.add_argument("--repeats", type=int, default=3, help="runs per target; the table shows their median")
    parser.add_argument("--infinity", default=os.environ.get("INFINITY_EMB"), help="infinity-emb's infinity_emb executable")
    parser.add_argument("--startup-timeout", type=float, default=600, help="seconds a server may take to start")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    info = machine()  # before the runs: the load it records is the machine's, not this script's
    sentences = read_sentences(args.sentences, args.requests * args.batch)
    requests = [sentences[i * args.batch : (i + 1) * args.batch] for i in range(args.requests)]
    reference = reference_encoder(args.model)
    expected_first = reference.encode(requests[0], convert_to_numpy=True)
    targets: dict[str, dict] = {}

    model = os.path.abspath(args.model) if os.path.exists(args.model) else args.model  # servers start elsewhere
    csekit_command = [sys.executable, "-m", "csekit.cli.main", "serve", model, "--model-name", MODEL_NAME,
                      "--log-level", "warning", "--port"]  # fmt: skip
    targets["csekit serve"] = run_server_target(csekit_command, "/v1/embeddings", requests, expected_first, args,
                                                version=f"csekit (torch {torch_version(sys.executable)})")  # fmt: skip
    if args.infinity:
        python = str(Path(args.infinity).with_name("python"))
        command = [args.infinity, "v2", "--model-id", model, "--served-model-name", MODEL_NAME, "--engine", "torch",
                   "--device", "cpu", "--no-model-warmup", "--log-level", "warning", "--port"]  # fmt: skip
        version = f"infinity-emb {package_version(python, 'infinity_emb')} (torch {torch_version(python)})"
        targets["infinity-emb"] = run_server_target(command, "/embeddings", requests, expected_first, args,
                                                    version=version, env={"DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
                                                                          "INFINITY_ANONYMOUS_USAGE_STATS": "0"})  # fmt: skip
    targets.update(in_process_targets(reference, requests, args.repeats))

    print(f"\nmachine: {describe(info)}; model {relative(args.model)}; {args.requests} requests of {args.batch} "
          f"sentences, {args.concurrency} in flight; median of {args.repeats}\n")
    print(format_table(targets))
    if args.json:
        record = {"machine": info, "model": relative(args.model), "sentences": relative(args.sentences),
                  "requests": args.requests, "batch": args.batch, "concurrency": args.concurrency,
                  "repeats": args.repeats, "targets": targets}  # fmt: skip
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- servers
def run_server_target(command: list[str], route: str, requests: list[list[str]], expected_first: np.ndarray,
                      args: argparse.Namespace, *, version: str, env: dict[str, str] | None = None) -> dict:  # fmt: skip
    """Start a server, warm it up, check its answer, run the load ``args.repeats`` times, stop it."""
    port = free_port()
    print(f"starting {version} on port {port} ...", flush=True)
    process = subprocess.Popen([*command, str(port)], env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_healthy(process, url, args.startup_timeout)
        first = asyncio.run(load(url + route, requests[:1] * 4, concurrency=1))["first"]  # warm-up, then the check
        runs = []
        for repeat in range(args.repeats):
            result = asyncio.run(load(url + route, requests, concurrency=args.concurrency))
            print(f"  run {repeat + 1}: {result['requests_per_s']:.1f} requests/s", flush=True)
            runs.append(result)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return summarise(runs, version=version, max_abs_diff=float(np.abs(np.asarray(first) - expected_first).max()))


async def load(url: str, requests: list[list[str]], *, concurrency: int) -> dict:
    """Send every request once, at most ``concurrency`` at a time; their latencies and the wall time."""
    latencies: list[float] = [0.0] * len(requests)
    next_request = iter(range(len(requests)))
    first: list = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=600) as client:

        async def worker() -> None:
            for number in next_request:  # one shared iterator: each request is sent once
                texts = requests[number]
                start = time.perf_counter()
                response = await client.post(url, json={"model": MODEL_NAME, "input": texts, "encoding_format": "float"})
                data = response.json()
                latencies[number] = time.perf_counter() - start
                if response.status_code != 200 or len(data.get("data", ())) != len(texts):
                    raise RuntimeError(f"{url} answered {response.status_code}: {response.text[:300]}")
                if number == 0:
                    first.extend(item["embedding"] for item in sorted(data["data"], key=lambda item: item["index"]))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return measured(latencies, wall, sum(len(texts) for texts in requests)) | {"first": first}


def wait_until_healthy(process: subprocess.Popen, url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the server at {url} was not healthy after {timeout:.0f} s")


# ----------------------------------------------------------------------------- in process
def reference_encoder(model: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model, device="cpu")


def in_process_targets(reference, requests: list[list[str]], repeats: int) -> dict[str, dict]:
    """``SentenceTransformer.encode``: one call per request in turn, and one call for all the sentences."""
    import sentence_transformers

    version = f"sentence-transformers {sentence_transformers.__version__} (torch {torch_version(sys.executable)})"
    everything = [text for texts in requests for text in texts]
    reference.encode(requests[0])  # warm-up
    per_request, bulk = [], []
    for _ in range(repeats):
        latencies = []
        start = time.perf_counter()
        for texts in requests:
            began = time.perf_counter()
            reference.encode(texts, convert_to_numpy=True)
            latencies.append(time.perf_counter() - began)
        per_request.append(measured(latencies, time.perf_counter() - start, len(everything)))
        start = time.perf_counter()
        reference.encode(everything, batch_size=32, convert_to_numpy=True)
        seconds = time.perf_counter() - start
        bulk.append({"requests_per_s": None, "sentences_per_s": len(everything) / seconds, "p50_ms": None,
                     "p99_ms": None, "seconds": seconds})  # fmt: skip
    return {"encode, one call per request": summarise(per_request, version=version, max_abs_diff=0.0),
            "encode, all sentences in one call": summarise(bulk, version=version, max_abs_diff=0.0)}  # fmt: skip


# ----------------------------------------------------------------------------- numbers and the table
def measured(latencies: list[float], wall: float, sentences: int) -> dict:
    milliseconds = np.asarray(latencies) * 1000
    return {"requests_per_s": len(latencies) / wall, "sentences_per_s": sentences / wall,
            "p50_ms": float(np.percentile(milliseconds, 50)), "p99_ms": float(np.percentile(milliseconds, 99)),
            "seconds": wall}  # fmt: skip


def summarise(runs: list[dict], *, version: str, max_abs_diff: float) -> dict:
    keys = ("requests_per_s", "sentences_per_s", "p50_ms", "p99_ms", "seconds")
    median = {key: (statistics.median(run[key] for run in runs) if runs[0][key] is not None else None) for key in keys}
    runs = [{key: run[key] for key in keys} for run in runs]
    return {"version": version, "max_abs_diff_vs_encode": max_abs_diff, **median, "runs": runs}


def format_table(targets: dict[str, dict]) -> str:
    ours = targets["csekit serve"]["sentences_per_s"]
    lines = ["| target | requests/s | sentences/s | p50 ms | p99 ms | csekit serve ÷ this (sentences/s) | max abs diff vs encode |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for name, result in targets.items():
        cells = [_number(result["requests_per_s"]), _number(result["sentences_per_s"]), _number(result["p50_ms"]),
                 _number(result["p99_ms"]), f"{ours / result['sentences_per_s']:.2f}x",
                 f"{result['max_abs_diff_vs_encode']:.1e}"]  # fmt: skip
        lines.append(f"| {name} ({result['version']}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# ----------------------------------------------------------------------------- facts
def read_sentences(path: str, count: int) -> list[str]:
    """``count`` non-blank lines of ``path``, from the top, cycling if it has fewer."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    return [lines[i % len(lines)] for i in range(count)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def torch_version(python: str) -> str:
    return package_version(python, "torch")


def package_version(python: str, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package.replace('_', '-')!r}))"
    finished = subprocess.run([python, "-c", code], capture_output=True, text=True)
    return finished.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
