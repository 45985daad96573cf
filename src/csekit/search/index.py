"""FAISS indexes over ``csekit encode``'s files, saved with what made their vectors.

    INDEX/index.faiss   the FAISS index (FAISS's own format: no pickle)
    INDEX/ids.txt       row i's id, one a line
    INDEX/index.json    csekit-index/1: kind and settings, and the embedding file's metadata (the model's
                        identity, dimension prefix, normalisation, precision)

Kinds (inner product, the cosine where the vectors are normalised):

- ``flat``: exact search, every vector compared (``IndexFlatIP``; ``IndexBinaryFlat``, Hamming distance,
  for binary files);
- ``hnsw``: a navigable small-world graph (Malkov & Yashunin 2018; ``IndexHNSWFlat``, ``IndexBinaryHNSW``),
  ``m`` links a node, ``ef_construction`` and ``ef_search`` candidates while building and searching;
- ``ivfpq``: ``nlist`` k-means cells, ``nprobe`` of them searched, each vector a product-quantised code of
  ``pq_m`` bytes (Jégou et al. 2011; ``IndexIVFPQ``); trained on the vectors themselves.

A query is embedded as the corpus was (the same prefix and normalisation) and only by the same model:
:meth:`SearchIndex.check_model` compares the identity digests and refuses another model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from csekit.atomic import replace_dir
from csekit.errors import CsekitError
from csekit.inference.encode import EncodeSettings, embed_texts
from csekit.inference.identity import check_same_model, model_identity
from csekit.inference.store import Embeddings
from csekit.models import SentenceEncoder

SCHEMA = "csekit-index/1"
#: kind -> its settings and their defaults (``pq_m`` None: a byte for every 8 dimensions)
KINDS: dict[str, dict[str, int | None]] = {
    "flat": {},
    "hnsw": {"m": 32, "ef_construction": 200, "ef_search": 128},
    "ivfpq": {"nlist": 1024, "nprobe": 16, "pq_m": None, "nbits": 8},
}
#: the settings a built index can change (:meth:`SearchIndex.tune`); the others are fixed by building
SEARCH_SETTINGS = ("ef_search", "nprobe")
FILES = ("index.faiss", "ids.txt", "index.json")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise CsekitError("search needs FAISS: pip install 'csekit[search]' (the faiss-cpu package)") from None
    return faiss


def check_settings(kind: str, settings: dict[str, Any], *, dim: int | None = None) -> dict[str, int]:
    """``settings`` completed with the kind's defaults (for a ``dim``-dimensional index); an unknown kind or
    setting, or a value < 1, refused."""
    if kind not in KINDS:
        raise CsekitError(f"unknown index kind {kind!r}; choose from {', '.join(KINDS)}")
    unknown = sorted(set(settings) - set(KINDS[kind]))
    if unknown:
        allowed = ", ".join(KINDS[kind]) or "none"
        raise CsekitError(f"a {kind} index has no setting(s) {', '.join(unknown)} (its settings: {allowed})")
    complete = {**KINDS[kind], **settings}
    if kind == "ivfpq" and complete["pq_m"] is None and dim is not None:
        complete["pq_m"] = max(dim // 8, 1)
    for name, value in complete.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise CsekitError(f"{name} must be a whole number >= 1, not {value!r}")
    return complete


@dataclass
class SearchIndex:
    index: Any  # a faiss.Index, or faiss.IndexBinary for binary vectors
    ids: list[str]
    meta: dict[str, Any]  # kind, settings, and "embeddings": the embedding file's metadata

    @property
    def binary(self) -> bool:
        return self.meta["embeddings"]["precision"] == "binary"

    # ------------------------------------------------------------------ queries
    def check_model(self, encoder: SentenceEncoder, name: str = "the query model") -> None:
        """Refuse an encoder other than the one the indexed vectors came from."""
        check_same_model(self.meta["embeddings"]["model"], model_identity(encoder, name), what="this index")

    def query_settings(self, encoder: SentenceEncoder) -> EncodeSettings:
        """How a query is embedded to compare with the indexed vectors: the corpus's prefix and normalisation."""
        stored = self.meta["embeddings"]
        prefix = stored["dim"] if stored["dim"] < encoder.embedding_dim else None
        return EncodeSettings(dim=prefix, normalize=stored["normalized"])

    def embed_queries(self, encoder: SentenceEncoder, texts: list[str]) -> np.ndarray:
        """(Q, D) float32 query vectors, computed as the corpus's were (prefix, normalisation)."""
        return embed_texts(encoder, texts, self.query_settings(encoder))

    def search(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """The ``k`` nearest ids of each (Q, D) query vector, best first, with their scores (inner product;
        for binary indexes the number of equal bits, D minus the Hamming distance)."""
        if k < 1:
            raise CsekitError(f"k must be at least 1, not {k}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (Q, D)
        if vectors.ndim != 2 or vectors.shape[1] != self.meta["embeddings"]["dim"]:
            raise CsekitError(f"query vectors of shape {vectors.shape}; this index holds {self.meta['embeddings']['dim']}-dimensional vectors")
        k = min(k, len(self.ids))
        if self.binary:
            distances, rows = self.index.search(np.packbits(vectors > 0, axis=1), k)  # (Q, k) Hamming
            scores = self.meta["embeddings"]["dim"] - distances
        else:
            scores, rows = self.index.search(vectors, k)  # (Q, k)
        return [[(self.ids[row], float(score)) for row, score in zip(found, values) if row >= 0]
                for found, values in zip(rows, scores)]  # fmt: skip

    def query(self, encoder: SentenceEncoder, texts: list[str], k: int) -> list[list[tuple[str, float]]]:
        return self.search(self.embed_queries(encoder, texts), k)

    def tune(self, **settings: int) -> SearchIndex:
        """Change the search-time settings (``ef_search`` of HNSW, ``nprobe`` of IVF-PQ) of this index."""
        fixed = sorted(name for name in settings if name not in SEARCH_SETTINGS)
        if fixed:
            raise CsekitError(f"{', '.join(fixed)} is fixed when the index is built; at search time only "
                              f"{', '.join(SEARCH_SETTINGS)} change")  # fmt: skip
        self.meta["settings"] = check_settings(self.meta["kind"], {**self.meta["settings"], **settings})
        _set_search_settings(self.index, self.meta["kind"], self.meta["settings"])
        return self

    # ------------------------------------------------------------------ files
    def save(self, folder: str | os.PathLike) -> None:
        """Write ``folder`` whole or not at all (a staging folder beside it, then renames)."""
        faiss, folder = _faiss(), Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            write = faiss.write_index_binary if self.binary else faiss.write_index
            write(self.index, str(staging / "index.faiss"))
            (staging / "ids.txt").write_text("".join(id_ + "\n" for id_ in self.ids), encoding="utf-8")
            (staging / "index.json").write_text(json.dumps({"schema": SCHEMA, **self.meta}, indent=1) + "\n")
            replace_dir(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def build_index(embeddings: Embeddings, kind: str = "flat", **settings: int) -> SearchIndex:
    """An index of ``kind`` over an embedding file's vectors (int8 through its calibration; binary as bits)."""
    faiss = _faiss()
    stored, dim = embeddings.meta, embeddings.meta["dim"]
    settings = check_settings(kind, settings, dim=dim)
    if stored["precision"] == "binary":
        if kind == "ivfpq":
            raise CsekitError("an ivfpq index quantises float vectors; binary vectors take flat or hnsw")
        index = faiss.IndexBinaryFlat(dim) if kind == "flat" else faiss.IndexBinaryHNSW(dim, settings["m"])
        vectors = np.ascontiguousarray(embeddings.vectors, dtype=np.uint8)  # (N, D / 8)
    else:
        vectors = np.ascontiguousarray(embeddings.floats(), dtype=np.float32)  # (N, D)
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, settings["m"], faiss.METRIC_INNER_PRODUCT)
        else:
            if dim % settings["pq_m"]:
                raise CsekitError(f"pq_m {settings['pq_m']} must divide the dimension {dim}")
            # FAISS's own minimum: 39 training points a k-means centroid (the cells, and each code book).
            needed = 39 * max(settings["nlist"], 2 ** settings["nbits"])
            if len(vectors) < needed:
                raise CsekitError(f"an ivfpq index of nlist {settings['nlist']} and nbits {settings['nbits']} needs "
                                  f"at least {needed} vectors to train on, not {len(vectors)}: lower them")  # fmt: skip
            index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, settings["nlist"], settings["pq_m"],
                                     settings["nbits"], faiss.METRIC_INNER_PRODUCT)  # fmt: skip
            index.train(vectors)
    if kind == "hnsw":
        index.hnsw.efConstruction = settings["ef_construction"]
    index.add(vectors)
    _set_search_settings(index, kind, settings)
    return SearchIndex(index, list(embeddings.ids), {"kind": kind, "settings": settings, "count": len(vectors),
                                                     "embeddings": stored})  # fmt: skip


def load_index(folder: str | os.PathLike) -> SearchIndex:
    faiss, folder = _faiss(), Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise CsekitError(f"{folder} is not a csekit index (no {', '.join(missing)}); `csekit index` builds one")
    meta = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    if meta.pop("schema", None) != SCHEMA:
        raise CsekitError(f"{folder / 'index.json'} is not a {SCHEMA} file")
    read = faiss.read_index_binary if meta["embeddings"]["precision"] == "binary" else faiss.read_index
    index = read(str(folder / "index.faiss"))
    ids = (folder / "ids.txt").read_text(encoding="utf-8").split("\n")[:-1]
    if len(ids) != index.ntotal:
        raise CsekitError(f"{folder}: {index.ntotal} vectors but {len(ids)} ids")
    _set_search_settings(index, meta["kind"], meta["settings"])
    return SearchIndex(index, ids, meta)


def is_index(folder: Path) -> bool:
    return (folder / "index.json").is_file()


def _set_search_settings(index: Any, kind: str, settings: dict[str, int]) -> None:
    """Search-time settings: not all of them travel in FAISS's files, so they are set on every load."""
    if kind == "hnsw":
        index.hnsw.efSearch = settings["ef_search"]
    elif kind == "ivfpq":
        index.nprobe = settings["nprobe"]
