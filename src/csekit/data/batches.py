"""Deterministic, resumable training batches: text files in, padded tensor batches out.

The order of the batches is a pure function of ``(seed, epoch)``, so a run resumed after ``k``
steps that asks for ``skip=k`` sees exactly the batches the uninterrupted run would have seen.

Two modes:

- in memory (default): every example is read once and each column tokenized once up front, so a
  training step does no text work. Token ids are kept as flat int32 arrays (Python lists of ints
  cost ~9x more: wiki1m would need gigabytes). Given a ``tokenization`` key (what decides the ids: the
  tokenizer, the pooler's settings, the max length), the ids are also kept on disk, content-addressed
  by that key and the files' checksums (:mod:`csekit.data.token_cache`): the next run over the same
  files memory-maps them instead of tokenizing again. Columns whose raw text a batch carries are read
  from the files each run.
- streaming (``streaming=True``): the files are read again every epoch through a seeded shuffle
  buffer, and only the examples of each batch are tokenized. For corpora larger than memory.

Contiguous batches (``contiguous=True``, Quick-Thoughts: a sentence's neighbours in the file must sit
beside it in the batch): each global batch is ``batch_size * world_size`` consecutive examples in file
order, and only the order of these blocks is shuffled.

Distributed training: each global batch has ``batch_size * world_size`` examples and rank ``r``
takes rows ``[r * batch_size, (r + 1) * batch_size)`` of it, so the ranks together see exactly the
batch a single process with ``batch_size * world_size`` would see, in the same order.

Besides the tokenized columns, a batch can carry targets (``targets``: ``batch["targets"][column]``,
a (B,) float32 ``score`` or int64 ``label`` index, see :mod:`csekit.data.labelled`), the raw text of some columns (``text_columns``:
``batch["text"][column]``, a list of B strings, for frozen helpers with a tokenizer of their own) and
precomputed embeddings (``embedding_files``: ``{name: .npy file}`` with one float row per example, in the
order the examples are read; ``batch["embeddings"][name]``, (B, D) float32), so a teacher's embeddings
are computed once and read back every epoch. The .npy files are memory-mapped and never unpickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from csekit.data import token_cache
from csekit.data.collate import pad_batch
from csekit.data.labelled import LABEL, SCORE, refuse_held_out, target_value
from csekit.data.readers import ReadStats, read_many, source_files
from csekit.errors import CsekitError

#: {column: {"input_ids": (B, T), "attention_mask": (B, T), ...}}, as objectives take it, plus the
#: optional ``TARGETS`` ({column: (B,)}), ``TEXT`` ({column: B strings}) and ``EMBEDDINGS`` ({name: (B, D)}) entries.
Batch = dict[str, dict[str, Any]]
TARGETS, TEXT, EMBEDDINGS = "targets", "text", "embeddings"
#: How a batch holds each target column.
TARGET_DTYPES = {SCORE: torch.float32, LABEL: torch.long}
#: texts -> {field: one unpadded id list per text}, e.g. ``SentenceEncoder.tokenize``.
Tokenize = Callable[[Sequence[str]], dict[str, list[list[int]]]]

#: Examples per tokenizer call when tokenizing up front: bounds the transient memory of text and tokenizer.
TOKENIZE_CHUNK = 10_000


class TrainingData:
    """Training examples from one or more files, served as padded batches.

    ``columns`` are the text fields the objective reads (``("sent0",)`` for unsupervised methods,
    ``("sent0", "sent1", "hard_neg")`` for supervised SimCSE); ``targets`` the target columns it reads
    (``("score",)``, ``("label",)``); ``tokenize`` turns texts into unpadded ids (bind ``max_length``
    into it) and ``pad_token_id`` pads ``input_ids``. A path may name a SentEval layout
    (``stsb:PATH``, see :mod:`csekit.data.readers`); a test set is refused before anything is read.
    """

    def __init__(
        self,
        paths: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        columns: tuple[str, ...],
        tokenize: Tokenize,
        pad_token_id: int,
        skip_bad_lines: bool = False,
        max_bad_share: float = 1.0,
        streaming: bool = False,
        buffer_size: int = 10_000,
        text_columns: Sequence[str] = (),
        embedding_files: Mapping[str, str | os.PathLike] | None = None,
        targets: Sequence[str] = (),
        tokenization: str | None = None,
    ):
        self.paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        for path in (file for spec in self.paths for file in source_files(spec)):
            refuse_held_out(path)
        self.columns = tuple(columns)
        unknown = sorted(set(targets) - set(TARGET_DTYPES))
        if unknown:
            raise ValueError(f"targets {unknown} are not target columns ({', '.join(TARGET_DTYPES)})")
        self.targets = tuple(targets)
        unknown = sorted(set(text_columns) - set(self.columns))
        if unknown:
            raise ValueError(f"text_columns {unknown} are not among the columns {self.columns}")
        self.text_columns = tuple(text_columns)
        self.tokenize = tokenize
        #: What decides the token ids (None: they are not cached on disk).
        self.tokenization = tokenization
        self.pad_token_id = pad_token_id
        self.skip_bad_lines = skip_bad_lines
        #: With skip_bad_lines, a pass over the files with a larger share of bad lines is an error.
        self.max_bad_share = max_bad_share
        self.streaming = streaming
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, not {buffer_size}")
        self.buffer_size = buffer_size
        #: Counts from the latest pass over the files (the up-front read, or the latest streamed epoch).
        self.stats = ReadStats()
        self._tokens: dict[str, dict[str, _Ragged]] = {}
        self._targets: dict[str, Tensor] = {}
        self._texts: dict[str, list[str]] = {}
        self._size: int | None = None
        if streaming:
            if embedding_files:
                raise CsekitError("precomputed embeddings need the examples in memory: set streaming: false")
            # Read one example now so a bad path, header or first line fails before training starts.
            if next(self._read(ReadStats()), None) is None:
                raise CsekitError(f"no training examples in {self._names()}")
        else:
            self._load()
        self._embeddings = {name: _embedding_rows(path, self._size) for name, path in (embedding_files or {}).items()}

    # ------------------------------------------------------------------ facts
    @property
    def num_examples(self) -> int | None:
        """How many examples there are (None when streaming: that would take a pass over the files)."""
        return self._size

    def num_batches(self, batch_size: int, *, drop_last: bool = True, world_size: int = 1) -> int | None:
        """Batches per epoch for each rank (None when streaming)."""
        if self._size is None:
            return None
        global_size = batch_size * world_size
        return self._size // global_size if drop_last else -(-self._size // global_size)

    def texts(self, column: str) -> list[str]:
        """Every example's text of ``column``, in the order the examples are read (a column of
        ``text_columns``, in memory)."""
        if column not in self._texts:
            raise ValueError(f"column {column!r} is not among the text_columns {self.text_columns} held in memory")
        return self._texts[column]

    def add_embeddings(self, name: str, path: str | os.PathLike) -> None:
        """Serve the rows of the .npy file ``path`` as ``batch["embeddings"][name]`` (as ``embedding_files``)."""
        self._embeddings[name] = _embedding_rows(path, self._size)

    # ------------------------------------------------------------------ batches
    def batches(
        self,
        epoch: int,
        *,
        seed: int,
        batch_size: int,
        skip: int = 0,
        drop_last: bool = True,
        rank: int = 0,
        world_size: int = 1,
        contiguous: bool = False,
    ) -> Iterator[Batch]:
        """This rank's batches of ``epoch``, in an order fixed by ``(seed, epoch)``, after ``skip`` batches;
        ``contiguous``: each global batch is consecutive examples of the files (only the blocks are shuffled).

        With ``world_size > 1`` the last partial global batch is always dropped: ranks must take the
        same number of equally sized steps (cross-device gathering needs equal shapes).
        """
        if batch_size < 1 or skip < 0 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1, skip >= 0 and 0 <= rank < world_size; "
                f"got batch_size={batch_size}, skip={skip}, rank={rank}, world_size={world_size}"
            )
        if world_size > 1 and not drop_last:
            raise ValueError("drop_last=False cannot split a partial last batch evenly across ranks")
        global_size = batch_size * world_size
        own = slice(rank * batch_size, (rank + 1) * batch_size)  # this rank's rows of a global batch
        if contiguous and (self.streaming or not drop_last):
            raise CsekitError("contiguous batches (consecutive sentences) need the examples in memory and full "
                              "batches: set streaming: false")  # fmt: skip
        if self.streaming:
            return self._streamed_batches(epoch, seed, global_size, own, skip, drop_last)
        if drop_last and self._size < global_size:
            raise CsekitError(
                f"{self._size} training examples are fewer than one batch of {global_size}; "
                "use a smaller batch size or more data"
            )
        return self._memory_batches(epoch, seed, global_size, own, skip, drop_last, contiguous)

    def _memory_batches(self, epoch, seed, global_size, own, skip, drop_last, contiguous=False) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(_epoch_seed(seed, epoch))
        if contiguous:
            blocks = torch.randperm(self._size // global_size, generator=generator)  # (N // G,)
            order = (blocks[:, None] * global_size + torch.arange(global_size)).flatten()  # (N // G * G,)
        else:
            order = torch.randperm(self._size, generator=generator)  # (N,)
        for number in range(skip, self.num_batches(global_size, drop_last=drop_last)):
            rows = order[number * global_size : (number + 1) * global_size][own]  # (B,) example indices
            batch: Batch = {}
            for column, fields in self._tokens.items():
                ids = {key: ragged.take(rows) for key, ragged in fields.items()}  # {field: B id lists}
                examples = [{key: ids[key][i] for key in ids} for i in range(len(rows))]
                batch[column] = pad_batch(examples, self.pad_token_id)
            if self._targets:
                batch[TARGETS] = {column: values[rows] for column, values in self._targets.items()}  # (B,) each
            if self._texts:
                batch[TEXT] = {column: [texts[i] for i in rows.tolist()] for column, texts in self._texts.items()}
            if self._embeddings:
                index = rows.numpy()
                batch[EMBEDDINGS] = {name: torch.from_numpy(np.asarray(table[index], dtype=np.float32))
                                     for name, table in self._embeddings.items()}  # fmt: skip
            yield batch

    def _streamed_batches(self, epoch, seed, global_size, own, skip, drop_last) -> Iterator[Batch]:
        rng = random.Random(_epoch_seed(seed, epoch))
        self.stats = ReadStats()
        paths = list(self.paths)
        rng.shuffle(paths)  # with several files, each epoch starts from a different one
        examples = _shuffled(self._read(self.stats, paths), self.buffer_size, rng)
        number = 0
        while True:
            group = [example for _, example in zip(range(global_size), examples)]
            if not group or (drop_last and len(group) < global_size):
                self._check_bad_share()
                break
            number += 1
            if number > skip:  # skipped batches still pass through the buffer: the order must not change
                yield self._tokenized_batch(group[own])
        if number == 0:
            raise CsekitError(
                f"no full batch of {global_size} examples in {self._names()} ({self.stats.summary()})"
            )

    def _tokenized_batch(self, examples: list[dict[str, str]]) -> Batch:
        batch: Batch = {}
        for column in self.columns:
            tokens = self.tokenize([example[column] for example in examples])
            rows = [{key: ids[i] for key, ids in tokens.items()} for i in range(len(examples))]
            batch[column] = pad_batch(rows, self.pad_token_id)
        if self.targets:
            batch[TARGETS] = {column: _target_tensor(column, [example[column] for example in examples])
                              for column in self.targets}  # fmt: skip
        if self.text_columns:
            batch[TEXT] = {column: [example[column] for example in examples] for column in self.text_columns}
        return batch

    # ------------------------------------------------------------------ reading
    def _read(self, stats: ReadStats, paths: list | None = None) -> Iterator[dict[str, str]]:
        return read_many(
            self.paths if paths is None else paths,
            columns=self.columns,
            targets=self.targets,
            skip_bad_lines=self.skip_bad_lines,
            stats=stats,
        )

    def _load(self) -> None:
        entry = None
        files = [file for spec in self.paths for file in source_files(spec)]
        if self.tokenization is not None and not self.text_columns and all(file.is_file() for file in files):
            # (a missing file is the reader's to name, with how to get it)
            key = token_cache.corpus_key(self.paths, tokenization=self.tokenization, columns=self.columns,
                                         targets=self.targets, skip_bad_lines=self.skip_bad_lines)  # fmt: skip
            entry = token_cache.cache_folder() / key
            corpus = token_cache.load(entry)
            if corpus is not None:
                self._restore(corpus)
                return
        self._tokenize_files()
        if entry is not None:
            token_cache.save(entry, token_cache.TokenizedCorpus(
                tokens={column: {key: (ragged.values.numpy(), ragged.lengths.numpy()) for key, ragged in fields.items()}
                        for column, fields in self._tokens.items()},
                targets={column: values.numpy() for column, values in self._targets.items()},
                stats=dataclasses.asdict(self.stats)))  # fmt: skip

    def _restore(self, corpus: token_cache.TokenizedCorpus) -> None:
        self.stats = ReadStats(**corpus.stats)
        self._size = self.stats.read
        self._check_bad_share()  # this run's max_bad_share
        self._tokens = {column: {key: _Ragged(ids, torch.from_numpy(lengths)) for key, (ids, lengths) in fields.items()}
                        for column, fields in corpus.tokens.items()}  # fmt: skip
        self._targets = {column: torch.from_numpy(values) for column, values in corpus.targets.items()}

    def _tokenize_files(self) -> None:
        # Tokenize a chunk at a time while reading: peak memory is one chunk of text, not the corpus.
        parts: dict[str, dict[str, list[_Ragged]]] = {column: {} for column in self.columns}
        targets: dict[str, list[Tensor]] = {column: [] for column in self.targets}
        examples = self._read(self.stats)
        while chunk := list(itertools.islice(examples, TOKENIZE_CHUNK)):
            for column in self.targets:
                targets[column].append(_target_tensor(column, [example[column] for example in chunk]))
            for column in self.columns:
                tokens = self.tokenize([example[column] for example in chunk])
                for key, rows in tokens.items():
                    parts[column].setdefault(key, []).append(_Ragged.from_rows(rows))
            for column in self.text_columns:
                self._texts.setdefault(column, []).extend(example[column] for example in chunk)
        self._size = self.stats.read
        self._check_bad_share()
        if self._size == 0:
            raise CsekitError(f"no training examples in {self._names()} ({self.stats.summary()})")
        self._tokens = {
            column: {key: _Ragged.concat(pieces) for key, pieces in fields.items()}
            for column, fields in parts.items()
        }
        self._targets = {column: torch.cat(pieces) for column, pieces in targets.items()}  # (N,) each

    def _check_bad_share(self) -> None:
        stats = self.stats
        lines = stats.read + stats.bad
        if stats.bad and stats.bad > self.max_bad_share * lines:
            raise CsekitError(f"{stats.bad} of {lines} lines of {self._names()} are bad, more than the "
                              f"{100 * self.max_bad_share:g}% max_bad_share allows: fix the file (first: {stats.first_bad})")  # fmt: skip

    def _names(self) -> str:
        return ", ".join(str(path) for path in self.paths)


class _Ragged:
    """Rows of different lengths as one flat int32 array plus offsets: compact and index-friendly."""

    def __init__(self, values: Tensor | np.ndarray, lengths: Tensor):
        self.values = values  # (total,) int32: a tensor, or a memory-mapped array from the token cache
        self.lengths = lengths  # (N,)
        self.offsets = torch.cumsum(lengths, 0) - lengths  # (N,) where each row starts

    @classmethod
    def from_rows(cls, rows: list[list[int]]) -> _Ragged:
        values = torch.tensor(list(itertools.chain.from_iterable(rows)), dtype=torch.int32)
        return cls(values, torch.tensor([len(row) for row in rows], dtype=torch.long))

    @classmethod
    def concat(cls, pieces: list[_Ragged]) -> _Ragged:
        return cls(
            torch.cat([piece.values for piece in pieces]), torch.cat([piece.lengths for piece in pieces])
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def take(self, indices: Tensor) -> list[list[int]]:
        """The rows at ``indices`` as lists (one tensor lookup for all of them: this runs every step)."""
        starts, lengths = self.offsets[indices].tolist(), self.lengths[indices].tolist()
        return [self.values[start : start + length].tolist() for start, length in zip(starts, lengths)]


def _target_tensor(column: str, texts: list[str]) -> Tensor:
    """(N,) targets of one column from the checked texts the readers yield."""
    return torch.tensor([target_value(column, text) for text in texts], dtype=TARGET_DTYPES[column])


def _embedding_rows(path: str | os.PathLike, examples: int | None) -> np.ndarray:
    """A (N, D) .npy table, memory-mapped, with one row per training example."""
    try:
        table = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as error:
        raise CsekitError(f"embedding file {path}: cannot read it as a .npy array ({error})") from None
    if table.ndim != 2 or len(table) != examples:
        raise CsekitError(f"embedding file {path} holds an array of shape {table.shape}; it needs one row per "
                          f"training example: ({examples}, D)")  # fmt: skip
    return table


def _shuffled(examples: Iterator[dict[str, str]], buffer_size: int, rng: random.Random):
    """A seeded shuffle buffer: each incoming example replaces a random one, which is yielded."""
    buffer: list[dict[str, str]] = []
    for example in examples:
        if len(buffer) < buffer_size:
            buffer.append(example)
            continue
        position = rng.randrange(buffer_size)
        yield buffer[position]
        buffer[position] = example
    rng.shuffle(buffer)
    yield from buffer


def _epoch_seed(seed: int, epoch: int) -> int:
    """A stable 63-bit seed for ``(seed, epoch)``: hashlib, unlike ``hash``, is the same in every process."""
    digest = hashlib.blake2b(f"{seed}:{epoch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
