"""Resumable checkpoints, written atomically and read without unpickling.

A checkpoint is a folder that appears whole or not at all (written beside, then renamed):

    weights.safetensors      encoder and objective parameters and buffers (frozen helpers left out)
    optimizer.pt             optimizer and scheduler state (tensors and numbers: weights_only load)
    rng-rank{r}.pt           each rank's torch CPU/CUDA RNG state (dropout is the augmentation)
    state.json               step, data position, best dev score, Python and NumPy RNG states, the recipe,
                             and each frozen helper's reference and fingerprint
    manifest.json            every other file's sha256 and size

With the same recipe, a run resumed from it continues bit for bit where the killed run stopped. Before
anything loads, every file is checked against the manifest: a missing, truncated or altered file is a
one-line error naming it. Frozen helpers are rebuilt from their references when the objective is built;
resuming checks that each one is the model the checkpoint was trained with. The previous checkpoint is
replaced only once the new one is complete (an atomic folder swap, undone at the next start if a crash
fell inside it: :func:`csekit.training.run_folder.tidy`).
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
from csekit.data.senteval import sha256_of
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


MANIFEST = "manifest.json"


def save_checkpoint(folder: Path, *, encoder: SentenceEncoder, objective: Objective, optimizer, scheduler,
                    state: TrainState, rank: int = 0, world_size: int = 1, config: dict | None = None) -> None:  # fmt: skip
    """Rank 0 writes weights and state; every rank writes its RNG state (call on all ranks). ``config``, the
    run's recipe, is kept to check a resumed run against it."""
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
                  "helpers": _helper_fingerprints(objective), "config": config}  # fmt: skip
        (staging / "state.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
        files = sorted(path.name for path in staging.iterdir())
        manifest = {name: {"sha256": sha256_of(staging / name), "bytes": (staging / name).stat().st_size} for name in files}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        replace_dir(staging, folder)
    if world_size > 1:
        torch.distributed.barrier()


def read_state(folder: Path) -> dict:
    """The checkpoint's state.json, after every file passed the manifest's check."""
    if not (folder / "state.json").is_file():
        raise CsekitError(f"no checkpoint to resume from in {folder}")
    verify(folder)
    try:
        return json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except ValueError as error:
        raise CsekitError(f"{folder / 'state.json'}: not valid JSON ({error}); the checkpoint is damaged") from None


def verify(folder: Path) -> None:
    """Every file the manifest lists is there with its size and sha256 (checkpoints without one: not checked)."""
    if not (folder / MANIFEST).is_file():
        return
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except ValueError:
        raise CsekitError(f"{folder / MANIFEST}: not valid JSON; the checkpoint is damaged") from None
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            raise CsekitError(f"checkpoint file {path} is missing")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise CsekitError(f"checkpoint file {path} is truncated or grown: {size} bytes, {expected['bytes']} written")
        if sha256_of(path) != expected["sha256"]:
            raise CsekitError(f"checkpoint file {path} was altered after it was written (sha256 differs)")


def load_checkpoint(folder: Path, record: dict, *, encoder: SentenceEncoder, objective: Objective, optimizer,
                    scheduler, rank: int = 0) -> TrainState:  # fmt: skip
    """Restore a checkpoint whose state.json :func:`read_state` returned (``record``), and its RNG states."""
    _check_helpers(record.get("helpers"), objective, folder)
    try:
        tensors = load_file(folder / "weights.safetensors")
        saved = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        rng_file = folder / f"rng-rank{rank}.pt"
        if not rng_file.is_file():
            raise CsekitError(f"{folder} was written by a run with fewer processes (no {rng_file.name})")
        rng = torch.load(rng_file, weights_only=True)
    except CsekitError:
        raise
    except Exception as error:  # a damaged file of a checkpoint without a manifest
        raise CsekitError(f"{folder}: cannot read the checkpoint ({type(error).__name__}: {str(error)[:120]})") from None

    def own(prefix: str) -> dict[str, torch.Tensor]:
        return {key[len(prefix) + 1 :]: value for key, value in tensors.items() if key.startswith(prefix + ".")}

    try:
        encoder.load_state_dict(own("encoder"))
        objective.load_trainable_state_dict(own("objective"))
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise CsekitError(f"{folder}: the checkpoint does not fit this model and objective "
                          f"({str(error).splitlines()[0][:160]})") from None  # fmt: skip
    _restore_rng(rng, record)
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
