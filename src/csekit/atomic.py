"""Writes that appear whole or not at all: a reader (or a resumed run) never sees half a file."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from csekit.errors import CsekitError


def replace_dir(source: Path, target: Path) -> None:
    """Move the finished folder ``source`` to ``target``, replacing an old one with two renames."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(source, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: What a plain ``open(path, "w")`` would give: mkstemp's files are private (0600) until told otherwise.
FILE_MODE = 0o666 & ~_umask()


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all: a temporary file beside it, then one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    """:func:`write_bytes` of ``text`` in UTF-8."""
    write_bytes(path, text.encode("utf-8"))


def check_writable(path: Path, *, folder: bool = False) -> None:
    """Refuse, before any work, a destination file (or ``folder``) that could not be written."""
    if folder and path.exists() and not path.is_dir():
        raise CsekitError(f"{path} is a file; give a folder")
    if not folder and path.is_dir():
        raise CsekitError(f"{path} is a folder; give a file name")
    existing = next(parent for parent in (path.absolute(), *path.absolute().parents) if parent.is_dir())
    try:  # a real probe: permissions alone do not tell (root, read-only mounts)
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise CsekitError(f"cannot write {path}: {existing} is not writable ({error.strerror})") from None
