"""Embedding files: written as a stream (the corpus never has to fit in memory), read back with what made them.

    OUT.npy | OUT.safetensors | OUT.parquet   the vectors, row i for id i
    OUT.json                                  csekit-embeddings/1: the model's identity, precision,
                                              dimension, normalisation, int8 calibration, input, count
    OUT.ids.txt                               the ids, one a line (.npy, .safetensors; Parquet holds them)

``.npy`` is one (N, D) array (N, D / 8 bytes for binary); ``.safetensors`` one tensor ``embeddings``;
``.parquet`` columns ``id`` (string) and ``vector`` (a fixed-size list). Every file appears whole or not at
all: written beside its name and renamed when complete, the metadata last.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from csekit.atomic import write_text
from csekit.errors import CsekitError
from csekit.inference.quantize import PRECISIONS, dequantize

SCHEMA = "csekit-embeddings/1"
FORMATS = (".npy", ".safetensors", ".parquet")
_SAFETENSORS_DTYPES = {np.float32: "F32", np.float16: "F16", np.int8: "I8", np.uint8: "U8"}


def metadata_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def ids_path(path: Path) -> Path:
    return path.with_name(path.name + ".ids.txt")


def check_output(path: Path, *, overwrite: bool) -> None:
    """Refuse an output csekit may not write: an unknown format, or a file that is not an earlier
    embedding file (never replaced) or is one and ``overwrite`` was not given."""
    if path.suffix.lower() not in FORMATS:
        raise CsekitError(f"--output {path}: unknown format {path.suffix!r}; give a name ending in {', '.join(FORMATS)}")
    if path.is_dir():
        raise CsekitError(f"--output {path} is a folder; give a file name ending in {', '.join(FORMATS)}")
    if path.exists():
        if not _is_embedding_file(path):
            raise CsekitError(f"--output {path} exists and was not written by csekit encode; give a new name")
        if not overwrite:
            raise CsekitError(f"--output {path} holds embeddings already: --overwrite replaces them")


def _is_embedding_file(path: Path) -> bool:
    try:
        return json.loads(metadata_path(path).read_text(encoding="utf-8")).get("schema") == SCHEMA
    except (OSError, ValueError, AttributeError):
        return False


class EmbeddingWriter:
    """Rows appended in order into ``path`` (of ``count`` rows of ``width`` values of ``precision``'s type);
    :meth:`close` renames everything into place, the metadata last."""

    def __init__(self, path: Path, *, count: int, width: int, precision: str, meta: dict[str, Any]):
        self.path, self.meta, self.count, self.written = path, meta, count, 0
        self.dtype = np.dtype(PRECISIONS[precision])
        self.temporary = path.with_name(f".{path.name}.writing")
        self.format = path.suffix.lower()
        self.ids = None if self.format == ".parquet" else open(ids_path(self.temporary), "w", encoding="utf-8")
        if self.format == ".npy":
            self.array = np.lib.format.open_memmap(self.temporary, mode="w+", dtype=self.dtype, shape=(count, width))
        elif self.format == ".safetensors":
            self.file = open(self.temporary, "wb")
            header = {"embeddings": {"dtype": _SAFETENSORS_DTYPES[self.dtype.type], "shape": [count, width],
                                     "data_offsets": [0, count * width * self.dtype.itemsize]},
                      "__metadata__": {"schema": SCHEMA}}  # fmt: skip
            encoded = json.dumps(header).encode()
            encoded += b" " * (-len(encoded) % 8)  # the format aligns the data to 8 bytes
            self.file.write(struct.pack("<Q", len(encoded)) + encoded)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            value = pa.from_numpy_dtype(self.dtype)
            self.schema = pa.schema([("id", pa.string()), ("vector", pa.list_(value, width))],
                                    metadata={"csekit": json.dumps(meta)})  # fmt: skip
            self.parquet = pq.ParquetWriter(self.temporary, self.schema)

    def write(self, ids: list[str], rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if self.format == ".npy":
            self.array[self.written : self.written + len(rows)] = rows
        elif self.format == ".safetensors":
            self.file.write(rows.tobytes())
        else:
            import pyarrow as pa

            vectors = pa.FixedSizeListArray.from_arrays(pa.array(rows.reshape(-1)), rows.shape[1])
            self.parquet.write_table(pa.table([pa.array(ids, pa.string()), vectors], schema=self.schema))
        if self.ids is not None:
            for id_ in ids:
                if "\n" in id_ or "\r" in id_:
                    raise CsekitError(f"id {id_!r} holds a line break; ids are stored one a line")
                self.ids.write(id_ + "\n")
        self.written += len(rows)

    def close(self) -> None:
        if self.written != self.count:
            raise RuntimeError(f"{self.written} rows written of {self.count}")
        if self.format == ".npy":
            self.array.flush()
            del self.array
        elif self.format == ".safetensors":
            self.file.close()
        else:
            self.parquet.close()
        if self.ids is not None:
            self.ids.close()
            os.replace(ids_path(self.temporary), ids_path(self.path))
        os.replace(self.temporary, self.path)
        write_text(metadata_path(self.path), json.dumps({"schema": SCHEMA, **self.meta}, indent=1) + "\n")

    def abort(self) -> None:
        for path in (self.temporary, ids_path(self.temporary)):
            path.unlink(missing_ok=True)


@dataclass
class Embeddings:
    """An embedding file read back: the stored rows (memory-mapped for .npy), their ids, the metadata."""

    vectors: np.ndarray  # (N, D) in the stored precision; (N, D / 8) uint8 for binary
    ids: list[str]
    meta: dict[str, Any]

    def floats(self) -> np.ndarray:
        """(N, D) float32: int8 through its calibration, binary as +-1."""
        return dequantize(self.vectors, self.meta["precision"], self.meta.get("calibration"), dim=self.meta["dim"])


def read_embeddings(path: str | os.PathLike) -> Embeddings:
    path = Path(path)
    if not path.is_file():
        raise CsekitError(f"embedding file {path} does not exist" + (" (csekit encode writes one)" if not path.exists() else ""))
    try:
        meta = json.loads(metadata_path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise CsekitError(f"{path} has no readable {metadata_path(path).name}: it was not written by csekit encode") from None
    if meta.get("schema") != SCHEMA:
        raise CsekitError(f"{metadata_path(path)} is not a {SCHEMA} file")
    form = path.suffix.lower()
    if form == ".npy":
        vectors = np.load(path, mmap_mode="r", allow_pickle=False)
    elif form == ".safetensors":
        from safetensors.numpy import load_file

        vectors = load_file(path)["embeddings"]
    else:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        width = table.schema.field("vector").type.list_size
        values = table.column("vector").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = values.reshape(-1, width)
        ids = table.column("id").to_pylist()
    if form != ".parquet":
        ids = ids_path(path).read_text(encoding="utf-8").split("\n")[:-1]
    if len(ids) != len(vectors) or len(vectors) != meta["count"]:
        raise CsekitError(f"{path}: {len(vectors)} vectors and {len(ids)} ids, but the metadata says {meta['count']}")
    return Embeddings(vectors, ids, meta)
