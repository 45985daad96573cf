"""Resumable checkpoints, written atomically and read without unpickling.

A checkpoint is a folder that appears whole or not at all (written beside, then renamed):

    weights.safetensors      encoder and objective parameters and buffers (frozen helpers left out)
    optimizer.pt             optimizer and scheduler state (tensors and numbers: weights_only load)
    rng-rank{r}.pt           each rank's torch CPU/CUDA RNG state (dropout is the augmentation)
    state.json               step, data position, best dev score, Python and NumPy RNG states, and each
                             frozen helper's reference and fingerprint

With the same recipe, a run resumed from it continues bit for bit where the killed run stopped. Frozen
helpers are rebuilt from their references when the objective is built; resuming checks that each one
is the model the checkpoint was trained with.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from csekit.atomic import replace_dir
from csekit.errors import CsekitError
from csekit.models.encoder import SentenceEncoder
from csekit.objectives import Objective


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    examples: int = 0  # training examples seen (this rank)
    best_metric: float | None = None
    best_step: int | None = None


def save_checkpoint(folder: Path, *, encoder: SentenceEncoder, objective: Objective, optimizer, scheduler,
                    state: TrainState, rank: int = 0, world_size: int = 1) -> None:  # fmt: skip
    """Rank 0 writes weights and state; every rank writes its RNG state (call on all ranks)."""
    if world_size > 1:
        # Each rank's RNG file goes into a shared staging folder first; rank 0 then renames it in.
        staging = folder.with_name(f".{folder.name}.staging")
        if rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        torch.distributed.barrier()
        torch.save(_rng_state(), staging / f"rng-rank{rank}.pt")
        torch.distributed.barrier()
    else:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        torch.save(_rng_state(), staging / "rng-rank0.pt")
    if rank == 0:
        states = {"encoder": encoder.state_dict(), "objective": objective.trainable_state_dict()}
        tensors = {
            f"{prefix}.{key}": value.detach().cpu().clone()  # clone: tied weights must not share storage
            for prefix, module_state in states.items()
            for key, value in module_state.items()
        }
        save_file(tensors, staging / "weights.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, staging / "optimizer.pt")
        record = {"train_state": asdict(state), "python_rng": _python_rng(), "numpy_rng": _numpy_rng(),
                  "helpers": _helper_fingerprints(objective)}  # fmt: skip
        (staging / "state.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
        replace_dir(staging, folder)
    if world_size > 1:
        torch.distributed.barrier()


def load_checkpoint(folder: Path, *, encoder: SentenceEncoder, objective: Objective, optimizer, scheduler,
                    rank: int = 0) -> TrainState:  # fmt: skip
    if not (folder / "state.json").is_file():
        raise CsekitError(f"no checkpoint to resume from in {folder}")
    record = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    _check_helpers(record.get("helpers"), objective, folder)
    tensors = load_file(folder / "weights.safetensors")

    def own(prefix: str) -> dict[str, torch.Tensor]:
        return {key[len(prefix) + 1 :]: value for key, value in tensors.items() if key.startswith(prefix + ".")}

    encoder.load_state_dict(own("encoder"))
    objective.load_trainable_state_dict(own("objective"))
    saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    rng_file = folder / f"rng-rank{rank}.pt"
    if not rng_file.is_file():
        raise CsekitError(f"{folder} was written by a run with fewer processes (no {rng_file.name})")
    _restore_rng(torch.load(rng_file, weights_only=True), record)
    return TrainState(**record["train_state"])


def _helper_fingerprints(objective: Objective) -> dict[str, dict[str, str]]:
    return {name: {"reference": helper.reference, "fingerprint": helper.fingerprint()}
            for name, helper in objective.helpers()}  # fmt: skip


def _check_helpers(saved: dict | None, objective: Objective, folder: Path) -> None:
    """Each frozen helper the objective built is the one the checkpoint trained with (checkpoints written
    before helpers were fingerprinted hold their weights, and are not checked)."""
    if saved is None:
        return
    for name, now in _helper_fingerprints(objective).items():
        then = saved.get(name)
        if then is None or then["fingerprint"] != now["fingerprint"]:
            reference = now["reference"] or "a copy of the starting model"
            raise CsekitError(f"{folder}: the frozen {name} ({reference}) is not the model this checkpoint was "
                              "trained with; resume with the same recipe and the same helper models")  # fmt: skip


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _numpy_rng() -> list:
    name, keys, position, has_gauss, cached = np.random.get_state()
    return [name, keys.tolist(), position, has_gauss, cached]


def _restore_rng(tensors: dict[str, Any], record: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
    version, internal, gauss = record["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = record["numpy_rng"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
