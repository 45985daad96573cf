"""Ctrl-C and SIGTERM end a training run at the next step boundary, after a checkpoint, not mid-step.

Inside ``with StopRequests() as stop:`` the first SIGINT or SIGTERM only raises a flag, which the loop
reads after each optimizer step (``stop.requested``); a second one stops at once. Under ``torchrun`` every
rank learns of a request on any rank at the same step, so all of them stop together.
"""

from __future__ import annotations

import signal
import threading

import torch

from csekit.distributed import is_distributed
from csekit.errors import Interrupted

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            self._previous = {number: signal.signal(number, self._handle) for number in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame) -> None:
        if self.signal is not None:
            raise Interrupted("stopped at once on a second signal, without a checkpoint of this step")
        self.signal = number

    def requested(self, device: torch.device) -> bool:
        """Whether any rank was asked to stop (one all-reduce under torchrun, nothing otherwise)."""
        if not is_distributed():
            return self.signal is not None
        flag = torch.tensor([self.signal is not None], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
