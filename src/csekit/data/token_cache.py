"""Tokenised training corpora kept on disk: a second run over the same files with the same tokenization
reads the token ids back, memory-mapped, instead of tokenizing again (minutes for wiki1m).

An entry is content-addressed: its name is a sha256 over how the text is tokenized (the tokenizer's full
definition, the pooler's tokenization settings and the max length, as :class:`TrainingData`'s caller
states them), the columns and targets read, ``skip_bad_lines``, and each training file's layout and
sha256. Another file content, tokenizer or max length is another entry; the same corpus under another path
shares one. An entry is a folder of ``.npy`` arrays (per column and field: the flat int32 ids and the (N,)
row lengths; per target column: (N,) values) and ``manifest.json`` (the read's counts and every array's
sha256), written whole or not at all (a temporary folder, then one rename).

Reading checks every array against the manifest; an entry that does not check out is tokenized again,
with a one-line note naming it. Arrays load with ``allow_pickle=False`` (the id arrays memory-mapped).

The folder: ``$CSEKIT_TOKEN_CACHE``, else ``tokens/`` in csekit's user cache (``$CSEKIT_CACHE``, default
``~/.cache/csekit``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from csekit.atomic import replace_dir
from csekit.data.download import cache_root
from csekit.data.readers import source_files, split_layout
from csekit.data.senteval import sha256_of
from csekit.errors import CsekitNote

#: Bumped when the layout of an entry changes, so old entries are not misread.
FORMAT = 1


@dataclass
class TokenizedCorpus:
    """What a read and tokenization of a corpus produced."""

    tokens: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]  # column -> field -> ((total,) int32 ids, (N,) lengths)
    targets: dict[str, np.ndarray]  # column -> (N,) values
    stats: dict  # the read's counts (csekit.data.readers.ReadStats' fields)


def cache_folder() -> Path:
    return Path(os.environ.get("CSEKIT_TOKEN_CACHE") or cache_root() / "tokens").expanduser()


def corpus_key(specs: Sequence[str | os.PathLike], *, tokenization: str, columns: Sequence[str],
               targets: Sequence[str], skip_bad_lines: bool) -> str:  # fmt: skip
    """The entry name of ``specs`` read for ``columns``/``targets`` and tokenized as ``tokenization`` says."""
    settings = {"format": FORMAT, "tokenization": tokenization, "columns": list(columns), "targets": list(targets),
                "skip_bad_lines": skip_bad_lines}  # fmt: skip
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for spec in specs:
        layout, path = split_layout(spec)  # how a file is parsed: its layout prefix, else its suffix
        files = [sha256_of(file) for file in source_files(spec)]
        digest.update(json.dumps([layout or Path(path).suffix.lower(), files]).encode())
    return digest.hexdigest()


def load(entry: Path) -> TokenizedCorpus | None:
    """The corpus stored in ``entry``, or None when there is none or it does not check out (said in a note)."""
    manifest = entry / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
        for name, digest in record["arrays"].items():
            if sha256_of(entry / name) != digest:
                raise ValueError(f"{name} differs from the sha256 recorded when it was written")
        arrays = {name: np.load(entry / name, mmap_mode="r", allow_pickle=False) for name in record["arrays"]}
        # The ids stay memory-mapped; the (N,) lengths and targets are read into memory, writable.
        tokens = {column: {field: (arrays[f"{column}.{field}.ids.npy"], np.array(arrays[f"{column}.{field}.lengths.npy"]))
                           for field in fields} for column, fields in record["fields"].items()}  # fmt: skip
        targets = {column: np.array(arrays[f"target.{column}.npy"]) for column in record["targets"]}
        return TokenizedCorpus(tokens, targets, record["stats"])
    except (OSError, ValueError, KeyError) as error:
        warnings.warn(f"token cache entry {entry} is unusable ({error}): tokenizing again", CsekitNote, stacklevel=2)
        return None


def save(entry: Path, corpus: TokenizedCorpus) -> None:
    """Store ``corpus`` as ``entry``, whole or not at all."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        arrays: dict[str, np.ndarray] = {}
        for column, fields in corpus.tokens.items():
            for field, (ids, lengths) in fields.items():
                arrays[f"{column}.{field}.ids.npy"] = np.asarray(ids, dtype=np.int32)
                arrays[f"{column}.{field}.lengths.npy"] = np.asarray(lengths, dtype=np.int64)
        for column, values in corpus.targets.items():
            arrays[f"target.{column}.npy"] = np.asarray(values)
        for name, array in arrays.items():
            np.save(scratch / name, array, allow_pickle=False)
        record = {"format": FORMAT, "stats": corpus.stats, "targets": list(corpus.targets),
                  "fields": {column: list(fields) for column, fields in corpus.tokens.items()},
                  "arrays": {name: sha256_of(scratch / name) for name in arrays}}  # fmt: skip
        (scratch / "manifest.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        replace_dir(scratch, entry)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

