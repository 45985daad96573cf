"""A training run's folder is csekit's: claimed with a marker, locked while in use, replaced only on request.

    OUTPUT_DIR/.csekit-run.json     what wrote the folder (its marker)
    OUTPUT_DIR/.lock                the process using it now (pid, host)

A fresh ``csekit train`` takes an output folder that does not exist or is empty. A folder that holds a run
(its marker, or the config.yaml + checkpoint/ of runs written before markers) is continued with
``--resume`` or replaced with ``--overwrite``, which removes the run's own outputs only (and says which);
any other non-empty folder is refused, so nothing csekit did not write is ever deleted. While a process
trains, its lock keeps a second one out; a lock whose process is gone is taken over, and said so.
What a killed save left behind is tidied at the start (:func:`tidy`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from csekit.atomic import check_writable, write_text
from csekit.errors import CsekitError

MARKER, LOCK = ".csekit-run.json", ".lock"
#: The folders a run saves by atomic replacement.
SAVED_FOLDERS = ("best", "final", "checkpoint")
#: What ``csekit train`` writes into its folder, and what ``csekit report`` derives from it there.
RUN_OUTPUTS = ("best", "final", "checkpoint", "metrics.jsonl", "config.yaml", "tensorboard", "eval.json",
               "align_uniform.json", "report", MARKER)  # fmt: skip


def holds_run(folder: Path) -> bool:
    """Whether ``folder`` holds a training run (marked, or written before runs were marked)."""
    return (folder / MARKER).is_file() or ((folder / "config.yaml").is_file() and (folder / "checkpoint").is_dir())


def check_output(folder: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse a folder this run may not write, before anything is loaded or written."""
    check_writable(folder, folder=True)
    if resume and overwrite:
        raise CsekitError("--resume continues a run and --overwrite replaces it: give one of them")
    if resume:
        if not holds_run(folder):
            raise CsekitError(f"no checkpoint to resume from in {folder / 'checkpoint'}")
        return
    if not folder.is_dir() or not _entries(folder):
        return
    if not holds_run(folder):
        raise CsekitError(f"output_dir {folder} is not empty and holds no csekit run ({', '.join(_entries(folder)[:4])}"
                          f"{', ...' if len(_entries(folder)) > 4 else ''}); give a new or empty folder")  # fmt: skip
    if not overwrite:
        raise CsekitError(f"output_dir {folder} holds a training run ({', '.join(_owned(folder))}): --resume "
                          "continues it, --overwrite replaces it")  # fmt: skip


def claim(folder: Path, *, overwrite: bool) -> None:
    """Replace the run the folder holds (with ``overwrite``) and mark the folder as this run's."""
    if overwrite and (owned := _owned(folder)):
        print(f"--overwrite: replacing {', '.join(owned)} in {folder}", file=sys.stderr)
        for name in owned:
            path = folder / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    write_text(folder / MARKER, json.dumps({"writer": "csekit train", "created": time.time()}) + "\n")


def tidy(folder: Path) -> None:
    """Undo what a killed save left: a model or checkpoint moved aside (``.best.old``) but not yet replaced
    goes back (the crash fell between the two renames of an atomic replacement), and half-written staging
    folders (``.best.k3j2``, ``.checkpoint.staging``) are removed."""
    if not folder.is_dir():
        return
    for name in SAVED_FOLDERS:
        old, current = folder / f".{name}.old", folder / name
        if old.is_dir() and not current.exists():
            os.replace(old, current)
            print(f"csekit: {current} was being replaced when the run stopped: the previous one is back", file=sys.stderr)
    for path in folder.iterdir():
        if path.is_dir() and path.name.startswith(".") and path.name.split(".")[1] in SAVED_FOLDERS:
            shutil.rmtree(path, ignore_errors=True)


class RunLock:
    """``OUTPUT_DIR/.lock`` while this process trains there (a context manager)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        for _ in range(2):
            try:
                with open(self.path, "x", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
                return self
            except FileExistsError:
                holder = self._holder()
                if _alive(holder):
                    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
                    raise CsekitError(f"{self.path.parent} is in use by another training (process {holder['pid']} on "
                                      f"{holder['host']}, since {since}); wait for it or choose another output_dir") from None  # fmt: skip
                print(f"csekit: removed a stale lock of process {holder.get('pid', '?')} in {self.path.parent} "
                      "(it is no longer running)", file=sys.stderr)  # fmt: skip
                self.path.unlink(missing_ok=True)
        raise CsekitError(f"cannot lock {self.path.parent}: another process keeps taking the lock")

    def __exit__(self, *exc) -> None:
        if self._holder().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def _holder(self) -> dict:
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # unreadable or half written: treated as stale
        return holder if isinstance(holder, dict) else {}


def _alive(holder: dict) -> bool:
    """Whether the lock's process still runs (a lock from another host is taken as live)."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def _entries(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir() if path.name != LOCK)


def _owned(folder: Path) -> list[str]:
    return [name for name in RUN_OUTPUTS if (folder / name).exists()]
