"""``csekit encode``: a corpus to an embedding file, in shards that a killed run, or another rank, picks up.

    corpus --(reader thread: read, tokenise)--> shard of rows --(model: token-budget batches)--> shard file
    all shards --(rank 0, in order: int8 calibration, precision)--> OUT (+ OUT.json, OUT.ids.txt)

The corpus is cut into shards of ``shard_rows`` texts in input order. Shard ``s`` belongs to rank
``s % world_size`` (one process: all of them). Each shard is written as float32 into ``OUT.partial/``
and committed by a small record with its checksum, so a shard is either done or redone. A run that
finds ``OUT.partial/`` from the same model, input and settings skips the committed shards; any other is
refused. A shard's batches depend on its own texts only, so its vectors are the same whichever process
computes it, and the merged file is the same whether one process ran or several, killed or not.

Tokenising runs in a reader thread one shard ahead of the model (the fast tokenizers release the GIL), and
the model takes batches cut by a token budget, longest first (:mod:`csekit.inference.batching`).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from csekit.atomic import write_text
from csekit.data.senteval import sha256_of
from csekit.distributed import get_rank, get_world_size, is_distributed
from csekit.errors import CsekitError
from csekit.inference.batching import check_budget, token_budget_batches
from csekit.inference.corpus import Corpus
from csekit.inference.identity import check_same_model, model_identity
from csekit.inference.quantize import Range, check_precision, quantize
from csekit.inference.store import EmbeddingWriter, check_output
from csekit.models import SentenceEncoder

if TYPE_CHECKING:
    from csekit.inference.onnx_backend import OnnxEncoder

    Engine = SentenceEncoder | OnnxEncoder

PLAN = "plan.json"
#: What computes the vectors: PyTorch (SentenceEncoder.embed_tokens), or its ONNX Runtime export, measured
#: faster on CPU within 1e-5 (benchmarks/results/onnx-backend.md).
BACKENDS = ("torch", "onnx")


@dataclass(frozen=True)
class EncodeSettings:
    precision: str = "float32"
    dim: int | None = None  # a Matryoshka prefix: the first ``dim`` values (renormalised where normalised)
    normalize: bool | None = None  # None: as the model does
    max_tokens: int = 16384  # per batch, padding included
    max_rows: int = 256  # per batch
    shard_rows: int = 10_000
    backend: str = "torch"  # or "onnx": the same vectors within 1e-5, from ONNX Runtime (csekit[onnx])

    def check(self, encoder: SentenceEncoder) -> None:
        check_precision(self.precision)
        if self.backend not in BACKENDS:
            raise CsekitError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if self.dim is not None and not 1 <= self.dim <= encoder.embedding_dim:
            raise CsekitError(f"--dim {self.dim} is outside 1..{encoder.embedding_dim}, this model's dimension")
        if self.precision == "binary" and (self.dim or encoder.embedding_dim) % 8:
            raise CsekitError("binary precision packs 8 dimensions a byte: the dimension must be a multiple of 8")
        for name in ("max_rows", "shard_rows"):
            if getattr(self, name) < 1:
                raise CsekitError(f"{name} must be at least 1, not {getattr(self, name)}")
        check_budget(self.max_tokens, encoder.max_length)


def encode_corpus(encoder: SentenceEncoder, corpus: Corpus, output: Path, settings: EncodeSettings, *,
                  model_name: str, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Encode ``corpus`` into ``output``; under torchrun each rank takes its shards and rank 0 merges.
    Returns the metadata written (rank 0) or ``{}`` (other ranks)."""
    rank, world_size = get_rank(), get_world_size()
    settings.check(encoder)
    partial = output.with_name(output.name + ".partial")
    identity = model_identity(encoder, model_name)
    plan = {"schema": "csekit-encode-plan/1", "model": identity, "settings": asdict(settings),
            "input": _input_fingerprint(corpus)}  # fmt: skip
    # Every rank checks (so that all refuse together, none waits at the barrier); rank 0 writes.
    check_output(output, overwrite=overwrite)
    _claim_partial(partial, plan, overwrite=overwrite, create=rank == 0)
    engine = _engine(encoder, settings) if rank == 0 else None  # an ONNX export is written once, by rank 0
    _barrier()
    if engine is None:  # the other ranks load it from the cache
        engine = _engine(encoder, settings)
    total = _encode_shards(encoder, engine, corpus, partial, settings, rank=rank, world_size=world_size,
                           progress=progress and rank == 0)  # fmt: skip
    _barrier()
    if rank != 0:
        return {}
    meta = {"model": identity, "precision": settings.precision, "dim": settings.dim or encoder.embedding_dim,
            "normalized": _normalized(encoder, settings), "count": total, "input": plan["input"]}  # fmt: skip
    _merge(partial, output, meta, settings)
    shutil.rmtree(partial)
    return meta


# ------------------------------------------------------------------------------------------ the shards
def _engine(encoder: SentenceEncoder, settings: EncodeSettings) -> Engine:
    if settings.backend == "onnx":
        if encoder.device.type != "cpu":
            raise CsekitError(f"--backend onnx runs on the CPU; the model is on {encoder.device}: add --device cpu")
        from csekit.inference.onnx_backend import onnx_encoder  # onnxruntime only when asked for

        return onnx_encoder(encoder)  # exported once per model into the user cache, checked against PyTorch
    return encoder


def _encode_shards(encoder: SentenceEncoder, engine: Engine, corpus: Corpus, partial: Path,
                   settings: EncodeSettings, *, rank: int, world_size: int, progress: bool) -> int:  # fmt: skip
    """Encode this rank's shards that are not committed yet (tokenised by ``encoder``, embedded by
    ``engine``); returns the corpus's row count."""
    count = -(-_count_rows(corpus) // world_size)  # about this rank's share, for the ETA
    todo: queue.Queue = queue.Queue(maxsize=2)  # tokenised shards waiting for the model
    total = [0]

    def read() -> None:
        try:
            for number, ids, texts in _shards(corpus, settings.shard_rows, total):
                mine = number % world_size == rank and not _committed(partial, number)
                todo.put((number, ids, encoder.inference_tokens(texts) if mine else None))
            todo.put(None)
        except BaseException as error:  # handed to the main thread, which raises it
            todo.put(error)

    reader = threading.Thread(target=read, daemon=True, name="csekit-encode-reader")
    reader.start()
    bar = tqdm(total=count, desc="encode", unit="sent", disable=not progress, dynamic_ncols=True, smoothing=0.1)
    with bar:
        while (item := todo.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            number, ids, rows = item
            if rows is not None:
                _write_shard(partial, number, ids, _embed(engine, rows, settings, normalize=_normalized(encoder, settings)))
            if number % world_size == rank:
                bar.update(len(ids))
    reader.join()
    return total[0]


def _shards(corpus: Corpus, size: int, total: list[int]) -> Iterator[tuple[int, list[str], list[str]]]:
    ids, texts, number = [], [], 0
    for id_, text in corpus:
        ids.append(id_)
        texts.append(text)
        if len(ids) == size:
            yield number, ids, texts
            total[0] += len(ids)
            ids, texts, number = [], [], number + 1
    if ids:
        yield number, ids, texts
        total[0] += len(ids)


def embed_texts(encoder: SentenceEncoder, texts: list[str], settings: EncodeSettings) -> np.ndarray:
    """(N, D) float32 vectors of ``texts`` as ``csekit encode`` computes them under ``settings`` (its
    dimension prefix and normalisation): what a query against an encoded corpus must be."""
    return _embed(encoder, encoder.inference_tokens(texts), settings, normalize=_normalized(encoder, settings))


def _embed(engine: Engine, rows: list[dict], settings: EncodeSettings, *, normalize: bool) -> np.ndarray:
    """(n, D) float32 vectors of tokenised rows, in their order."""
    vectors = np.empty((len(rows), settings.dim or engine.embedding_dim), dtype=np.float32)
    lengths = [len(row["input_ids"]) for row in rows]
    for batch in token_budget_batches(lengths, max_tokens=settings.max_tokens, max_rows=settings.max_rows):
        embeddings = engine.embed_tokens([rows[i] for i in batch], normalize=False)  # (B, H)
        if settings.dim:
            embeddings = embeddings[:, : settings.dim]  # (B, dim): the Matryoshka prefix
        if normalize:
            embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
        vectors[batch] = embeddings
    return vectors


def _normalized(encoder: SentenceEncoder, settings: EncodeSettings) -> bool:
    return encoder.normalize if settings.normalize is None else settings.normalize


def _shard_paths(partial: Path, number: int) -> tuple[Path, Path, Path]:
    stem = partial / f"shard-{number:06d}"
    return stem.with_suffix(".npy"), stem.with_suffix(".ids.txt"), stem.with_suffix(".json")


def _write_shard(partial: Path, number: int, ids: list[str], vectors: np.ndarray) -> None:
    vectors_path, ids_file, record = _shard_paths(partial, number)
    temporary = vectors_path.with_name(f".{vectors_path.name}.writing")
    with open(temporary, "wb") as file:
        np.save(file, vectors, allow_pickle=False)
    os.replace(temporary, vectors_path)
    write_text(ids_file, "".join(id_ + "\n" for id_ in ids))
    # The record commits the shard: written last, and it names the checksums of the two files.
    write_text(record, json.dumps({"rows": len(ids), "vectors": sha256_of(vectors_path), "ids": sha256_of(ids_file)}))


def _committed(partial: Path, number: int) -> bool:
    vectors_path, ids_file, record = _shard_paths(partial, number)
    try:
        saved = json.loads(record.read_text(encoding="utf-8"))
        return saved["vectors"] == sha256_of(vectors_path) and saved["ids"] == sha256_of(ids_file)
    except (OSError, ValueError, KeyError):
        return False


def _read_shard(partial: Path, number: int) -> tuple[list[str], np.ndarray]:
    vectors_path, ids_file, _ = _shard_paths(partial, number)
    if not _committed(partial, number):
        raise CsekitError(f"{partial}: shard {number} is missing or altered; run the same command again to redo it")
    return ids_file.read_text(encoding="utf-8").split("\n")[:-1], np.load(vectors_path, allow_pickle=False)


# ------------------------------------------------------------------------------------------ the merge
def _merge(partial: Path, output: Path, meta: dict[str, Any], settings: EncodeSettings) -> None:
    shards = -(-meta["count"] // settings.shard_rows)
    if settings.precision == "int8":  # the calibration is the whole corpus's range: one pass first
        value_range = Range(meta["dim"])
        for number in range(shards):
            value_range.update(_read_shard(partial, number)[1])
        meta["calibration"] = value_range.calibration()
    width = meta["dim"] // 8 if settings.precision == "binary" else meta["dim"]
    writer = EmbeddingWriter(output, count=meta["count"], width=width, precision=settings.precision, meta=meta)
    try:
        for number in range(shards):
            ids, vectors = _read_shard(partial, number)
            writer.write(ids, quantize(vectors, settings.precision, meta.get("calibration")))
        writer.close()
    except BaseException:
        writer.abort()
        raise


# ------------------------------------------------------------------------------------------ bookkeeping
def _claim_partial(partial: Path, plan: dict[str, Any], *, overwrite: bool, create: bool) -> None:
    """Continue the ``OUT.partial`` of the same plan, refuse another plan's; with ``create``, start one
    (replacing a partial encode with ``overwrite``)."""
    plan_file = partial / PLAN
    if partial.exists() and not overwrite:
        try:
            saved = json.loads(plan_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise CsekitError(f"{partial} is not a partial csekit encode (no readable {PLAN}); remove it") from None
        check_same_model(saved.get("model", {}), plan["model"], what=f"the partial encode in {partial}")
        for key in ("settings", "input"):
            if saved.get(key) != plan[key]:
                raise CsekitError(f"the partial encode in {partial} has other {key} ({saved.get(key)} -> "
                                  f"{plan[key]}): run it as it was, or --overwrite starts over")  # fmt: skip
        if create:
            done = sum(1 for _ in partial.glob("shard-*.json"))
            print(f"csekit: continuing the encode in {partial} ({done} shards done)", flush=True)
        return
    if not create:
        return
    if partial.exists():
        if not plan_file.is_file():
            raise CsekitError(f"{partial} is not a partial csekit encode (no {PLAN}); remove it yourself")
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    write_text(plan_file, json.dumps(plan, indent=1) + "\n")


def _input_fingerprint(corpus: Corpus) -> dict[str, Any]:
    """What identifies the input: its name, size and modification time, the columns read."""
    status = corpus.path.stat()
    return {"file": corpus.path.name, "bytes": status.st_size, "modified_ns": status.st_mtime_ns,
            "column": corpus.column, "id_column": corpus.id_column}  # fmt: skip


def _count_rows(corpus: Corpus) -> int:
    """About how many texts there are, for the progress bar's ETA (line ends; Parquet's row count)."""
    if corpus.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(corpus.path).metadata.num_rows
    with open(corpus.path, "rb") as file:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))
    return max(lines - (corpus.suffix in (".csv", ".tsv")), 0)




def _barrier() -> None:
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()
