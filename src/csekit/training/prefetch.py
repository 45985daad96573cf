"""Batches assembled ahead of the step by a background thread, off the training loop's critical path.

Cutting a batch out of the pre-tokenised corpus and padding it is Python work on the host; done inline it
leaves the accelerator idle between steps. A thread runs the batch iterator ``depth`` batches ahead,
pinning each batch's tensors on CUDA so that the loop's copy to the device returns at once
(``non_blocking``) and overlaps the previous step's kernels. The batches and their order are the
iterator's own: the thread only runs it earlier.

An exception in the iterator (a bad line found while streaming) is raised in the loop at the batch where
it happened; closing the generator (the loop stops early, or fails) stops the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import torch

_END = object()


def prefetched(batches: Iterator[Any], *, device: torch.device, depth: int = 2) -> Iterator[Any]:
    """``batches``, in order, each made by a background thread up to ``depth`` batches ahead."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    pin = device.type == "cuda"

    def produce() -> None:
        try:
            for batch in batches:
                item = (_pinned(batch) if pin else batch, None)
                while not stop.is_set():
                    try:
                        ready.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put((_END, None))
        except BaseException as error:  # handed to the loop, raised there
            ready.put((_END, error))

    worker = threading.Thread(target=produce, name="csekit-batches", daemon=True)
    worker.start()
    try:
        while True:
            batch, error = ready.get()
            if batch is _END:
                if error is not None:
                    raise error
                return
            yield batch
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue, then let it end
            try:
                ready.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.1)


def _pinned(value: Any) -> Any:
    """A (nested) batch with its tensors in page-locked memory (raw texts stay as they are)."""
    if isinstance(value, dict):
        return {key: _pinned(item) for key, item in value.items()}
    return value.pin_memory() if isinstance(value, torch.Tensor) else value
