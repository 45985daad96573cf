"""What the benchmarks share: the machine they ran on, its measured matmul peak, paths without the machine's."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
#: ../shared beside the repository, or $CSEKIT_SHARED
SHARED = Path(os.environ.get("CSEKIT_SHARED", REPO.parent / "shared"))


def machine() -> dict:
    """CPU model, cores, load, versions (and the GPU where there is one)."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text(encoding="utf-8").splitlines()
                    if line.startswith("model name")), cpu)  # fmt: skip
    info = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_1min": round(os.getloadavg()[0], 2), "python": platform.python_version(), "torch": torch.__version__}  # fmt: skip
    try:
        import sentence_transformers

        info["sentence_transformers"] = sentence_transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe(info: dict) -> str:
    gpu = f", {info['gpu']}" if "gpu" in info else ""
    threads = f"{info['torch_threads']} torch thread{'' if info['torch_threads'] == 1 else 's'}"
    return (f"{info['cpu']}, {info['cores']} cores ({threads}, load {info['load_1min']} "
            f"at the start){gpu}, torch {info['torch']}")  # fmt: skip


def matmul_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """The fp32 FLOP/s of a large square matmul on this CPU: the ceiling an encoder's dense layers approach."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / sorted(times)[len(times) // 2]


def relative(path: str | os.PathLike) -> str:
    """``path`` relative to the repository where it is a local path (results carry no machine paths)."""
    return os.path.relpath(path, REPO) if os.path.exists(path) else str(path)
