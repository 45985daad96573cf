"""Teacher embeddings computed once per corpus and kept: a second run with the same teacher and text reads
them back instead of encoding again.

An entry is content-addressed: its name is a sha256 over the teacher's identity (a digest of its weights,
pooler, tokenizer, max length and normalisation: whatever changes what it computes) and every text, in
order. Another teacher, another setting or one changed text is another entry; the same teacher and corpus
under any path or run share one. Each entry is ``KEY.npy`` (float32, (N, D), one row per text) and
``KEY.json`` (the identity, the shape and the .npy's sha256), both written atomically, the .npy first.

Reading an entry checks it: a .npy that does not load (never unpickled), has another shape or dtype, or
whose sha256 differs from the record is recomputed, with a one-line note naming it.

The folder: the ``teacher_cache`` recipe key, else ``$CSEKIT_TEACHER_CACHE``, else ``teacher-embeddings/``
in csekit's user cache (``$CSEKIT_CACHE``, default ``~/.cache/csekit``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from csekit.atomic import write_bytes, write_text
from csekit.data.download import cache_root
from csekit.data.senteval import sha256_of
from csekit.errors import CsekitNote

#: Bumped when the layout of an entry changes, so old entries are not misread.
FORMAT = 1


def cache_folder(folder: str | os.PathLike | None = None) -> Path:
    """Where entries live: ``folder``, else ``$CSEKIT_TEACHER_CACHE``, else ``$CSEKIT_CACHE/teacher-embeddings``."""
    chosen = folder or os.environ.get("CSEKIT_TEACHER_CACHE") or cache_root() / "teacher-embeddings"
    return Path(chosen).expanduser()


def cache_key(identity: Mapping[str, Any], texts: Sequence[str]) -> str:
    """sha256 over the identity (as sorted JSON) and every text, each length-prefixed (no two corpora collide
    by where their texts split)."""
    digest = hashlib.sha256(json.dumps({"format": FORMAT, **identity}, sort_keys=True).encode())
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


def cached_embeddings(texts: Sequence[str], *, identity: Mapping[str, Any], encode: Callable[[Sequence[str]], np.ndarray],
                      folder: str | os.PathLike | None = None) -> Path:  # fmt: skip
    """The .npy of ``encode(texts)`` ((N, D) float32) for the teacher ``identity``: read from the cache when
    it holds a sound entry, else computed once and stored."""
    root = cache_folder(folder)
    key = cache_key(identity, texts)
    table, record = root / f"{key}.npy", root / f"{key}.json"
    problem = _problem(table, record, len(texts))
    if problem is None:
        return table
    if problem != "missing":
        warnings.warn(f"teacher embedding cache entry {table} is unusable ({problem}): computing it again", CsekitNote,
                      stacklevel=2)  # fmt: skip
    rows = np.ascontiguousarray(encode(texts), dtype=np.float32)
    if rows.ndim != 2 or len(rows) != len(texts):
        raise ValueError(f"the teacher gave an array of shape {rows.shape} for {len(texts)} texts")
    buffer = io.BytesIO()
    np.save(buffer, rows, allow_pickle=False)
    write_bytes(table, buffer.getvalue())
    write_text(record, json.dumps({"format": FORMAT, "identity": dict(identity), "shape": list(rows.shape),
                                   "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()}, indent=1) + "\n")  # fmt: skip
    return table


def _problem(table: Path, record: Path, rows: int) -> str | None:
    """None when the entry is sound, else what is wrong with it (``missing`` when there is none)."""
    if not table.is_file() and not record.is_file():
        return "missing"
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
        array = np.load(table, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'unreadable'}"
    if array.dtype != np.float32 or array.ndim != 2 or len(array) != rows or list(array.shape) != saved.get("shape"):
        return f"an array of shape {array.shape} and dtype {array.dtype}, where {rows} float32 rows were recorded"
    if sha256_of(table) != saved.get("sha256"):
        return "its sha256 differs from the one recorded when it was written"
    return None
