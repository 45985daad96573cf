"""Dynamic micro-batching: the texts of concurrent requests encoded together, by one thread.

One worker thread owns the model, so the model never runs twice at once and needs no lock. Request
handlers tokenize their texts (elsewhere: :mod:`csekit.serve.tokens`), :meth:`MicroBatcher.submit`
the rows and await the returned future. Each time the worker is free it takes every request waiting,
up to about one token budget of real tokens (always at least one request, however large), cuts their
rows into padded batches of at most ``max_batch_tokens`` (:func:`token_budget_batches`: longest first,
rows x longest within the budget), and resolves each request with its own rows in its own order as
soon as its last row is encoded. While the model is busy, new requests queue up, so the batches grow
with the load and a lone request waits for nothing.

The rows come back as the model computes them, before any normalization: each route applies the
normalization (and Matryoshka prefix) it was asked for.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from csekit.inference.batching import check_budget, token_budget_batches
from csekit.models import SentenceEncoder

#: Padded tokens per model batch unless told otherwise: 128 rows of 128 tokens.
DEFAULT_MAX_BATCH_TOKENS = 16384

#: The share of a model batch's padded tokens that may be padding: the texts of a few requests have any
#: lengths, and padding them all to the longest cost half the time (benchmarks/results/serve-load.md).
MAX_PADDING = 0.2

#: Called after each model batch with its rows and its padded tokens (rows x longest row).
BatchObserver = Callable[[int, int], None]


class BatcherClosed(RuntimeError):
    """A request submitted after :meth:`MicroBatcher.close` (the server is shutting down)."""


@dataclass(frozen=True)
class _Job:
    rows: Sequence[dict[str, list[int]]]
    future: Future

    @property
    def tokens(self) -> int:
        return sum(len(row["input_ids"]) for row in self.rows)


_STOP = object()  # queued by close(): the worker finishes what is ahead of it, then exits


class MicroBatcher:
    """Encodes submitted token rows on one worker thread, in token-budget batches across requests."""

    def __init__(self, encoder: SentenceEncoder, *, max_batch_tokens: int, on_batch: BatchObserver | None = None):
        check_budget(max_batch_tokens, encoder.max_length)  # else a longest input could never be placed
        self.encoder, self.max_batch_tokens, self.on_batch = encoder, max_batch_tokens, on_batch
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()  # orders submit() against close(): nothing is queued after _STOP
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="csekit-model", daemon=True)

    def start(self) -> MicroBatcher:
        self._thread.start()
        return self

    def submit(self, rows: Sequence[dict[str, list[int]]]) -> Future:
        """A future of the (len(rows), D) float32 embeddings of ``rows``, in their order."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise BatcherClosed("the server is shutting down and takes no new requests")
            self._queue.put(_Job(list(rows), future))
        return future

    @property
    def waiting(self) -> int:
        """Requests queued and not yet taken by the worker."""
        return self._queue.qsize()

    def close(self, timeout: float | None = None) -> None:
        """Take no more requests, finish every one already submitted, and stop the worker."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._queue.put(_STOP)
        if self._thread.ident is not None:
            self._thread.join(timeout)
            return
        while (job := self._queue.get()) is not _STOP:  # never started: nothing will encode them
            job.future.set_exception(BatcherClosed("the server stopped before this request was encoded"))

    # ------------------------------------------------------------------ the worker thread
    def _work(self) -> None:
        stop = False
        while not stop:
            jobs, stop = self._take()
            if jobs:
                self._encode(jobs)

    def _take(self) -> tuple[list[_Job], bool]:
        """The requests to encode next (a blocking wait for the first), and whether close() was reached."""
        jobs: list[_Job] = []
        tokens = 0
        block = True
        while block or tokens < self.max_batch_tokens:
            try:
                job = self._queue.get(block=block)
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            # False: the caller gave up (its client left) before the work began; skip it.
            if job.future.set_running_or_notify_cancel():
                jobs.append(job)
                tokens += job.tokens
                block = not jobs
        return jobs, False

    def _encode(self, jobs: list[_Job]) -> None:
        rows = [row for job in jobs for row in job.rows]
        owner = [number for number, job in enumerate(jobs) for _ in job.rows]  # row -> its job
        starts = [0, *itertools.accumulate(len(job.rows) for job in jobs)]
        left = [len(job.rows) for job in jobs]
        output = np.empty((len(rows), self.encoder.embedding_dim), dtype=np.float32)
        try:
            lengths = [len(row["input_ids"]) for row in rows]
            for batch in token_budget_batches(lengths, max_tokens=self.max_batch_tokens, max_padding=MAX_PADDING):
                output[batch] = self.encoder.embed_tokens([rows[i] for i in batch], normalize=False)  # (B, D)
                if self.on_batch is not None:
                    self.on_batch(len(batch), len(batch) * lengths[batch[0]])  # longest first: batch[0] is longest
                for i in batch:
                    left[owner[i]] -= 1
                for number in sorted({owner[i] for i in batch}):
                    if left[number] == 0:
                        jobs[number].future.set_result(output[starts[number] : starts[number + 1]])
        except Exception as error:  # the model failed (out of memory, ...): those requests fail, the worker goes on
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(error)
