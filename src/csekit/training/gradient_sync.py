"""Data-parallel gradient averaging overlapped with the backward pass, in buckets (what DDP's reducer does).

After ``backward`` every rank must hold the mean of all ranks' gradients. All-reducing one flat buffer
once backward has finished leaves the network idle while the gradients are computed and the cores idle
while they travel. DDP instead groups the parameters into buckets in the order backward makes their
gradients final and starts an asynchronous all-reduce of a bucket as soon as every gradient in it is
final, so communication runs while backward computes the earlier layers.

:class:`GradientSync` does the same with per-parameter ``post_accumulate_grad`` hooks, without wrapping
the model (csekit's objectives call the encoder, sometimes more than once, inside ``embed``; DDP wants a
single forward through its wrapper). It is armed for the backward of a step's last micro-batch only:
earlier micro-batches accumulate locally, as under DDP's ``no_sync``. The buckets start in the reverse
order of the parameters (backward reaches the last layers first) and are rebuilt once, after the first
armed step, in the order its gradients became final, rank 0's order for every rank (DDP's bucket
rebuild): parameters that got no gradient then (an unused pooler) go last, where they hold nothing up.

Buckets start in index order on every rank (collectives must be issued in one order across ranks): a
bucket whose gradients are not all final, because a parameter got none this step, holds back the ones
after it, and :meth:`finish` sends what is left, leaving out parameters with no gradient at all, as the
optimizer does. Every element is the same sum of the same ranks' values whichever bucket carries it, so
the result equals one flat all-reduce exactly.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

#: DDP's default bucket size.
BUCKET_BYTES = 25 * 2**20


class GradientSync:
    """Average ``parameters``' gradients over ``world_size`` ranks, bucket by bucket during backward."""

    def __init__(self, parameters: list[nn.Parameter], world_size: int, *, bucket_bytes: int = BUCKET_BYTES):
        self.parameters, self.world_size, self.bucket_bytes = parameters, world_size, bucket_bytes
        self._index = {id(parameter): index for index, parameter in enumerate(parameters)}
        self._set_buckets(list(reversed(range(len(parameters)))))
        self._rebuilt = False
        self._armed = False
        self._ready_order: list[int] = []  # parameter indices, in the order their gradients became final
        self._waiting: list[int] = []  # per bucket: gradients not final yet
        self._next = 0  # the next bucket to start
        self._started: list[tuple[Tensor, list[nn.Parameter], dist.Work]] = []
        self._hooks = [] if world_size == 1 else [p.register_post_accumulate_grad_hook(self._ready) for p in parameters]

    @property
    def started(self) -> int:
        """Buckets whose all-reduce has started (read between backward and :meth:`finish`)."""
        return len(self._started)

    def arm(self) -> None:
        """The next backward is the step's last: start each bucket's all-reduce once its gradients are final."""
        self._armed = self.world_size > 1
        self._ready_order, self._next = [], 0
        self._waiting = [len(bucket) for bucket in self.buckets]

    def finish(self) -> None:
        """Start the buckets not started yet, wait for all, and leave the mean gradient on every rank."""
        if self.world_size == 1:
            return
        while self._next < len(self.buckets):
            self._start_next()
        for flat, bucket, work in self._started:
            work.wait()
            flat /= self.world_size
            offset = 0
            for parameter in bucket:
                parameter.grad.copy_(flat[offset : offset + parameter.numel()].view_as(parameter.grad))
                offset += parameter.numel()
        self._started.clear()
        if self._armed and not self._rebuilt:
            self._rebuild()
        self._armed, self._next = False, 0

    def close(self) -> None:
        """Remove the hooks (the model outlives the run)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    # ------------------------------------------------------------------ internals
    def _set_buckets(self, order: list[int]) -> None:
        """Consecutive parameters of ``order`` (indices) in buckets of at most ``bucket_bytes``, one dtype each."""
        self.buckets: list[list[nn.Parameter]] = []
        size = 0
        for index in order:
            parameter = self.parameters[index]
            bytes_ = parameter.numel() * parameter.element_size()
            if not self.buckets or size + bytes_ > self.bucket_bytes or self.buckets[-1][0].dtype != parameter.dtype:
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(parameter)
            size += bytes_
        self._bucket_of = {id(p): number for number, bucket in enumerate(self.buckets) for p in bucket}

    def _rebuild(self) -> None:
        """Buckets in the order this step's gradients became final (rank 0's), the rest after them."""
        seen = set(self._ready_order)
        order = torch.tensor(self._ready_order + [i for i in range(len(self.parameters)) if i not in seen])
        dist.broadcast(order, src=0)
        self._set_buckets(order.tolist())
        self._rebuilt = True

    def _ready(self, parameter: nn.Parameter) -> None:
        if not self._armed:
            return
        self._ready_order.append(self._index[id(parameter)])
        bucket = self._bucket_of[id(parameter)]
        if bucket < self._next:  # only a second backward in one armed micro-batch gets here
            raise RuntimeError("a gradient changed after its bucket was sent: one backward per armed micro-batch")
        self._waiting[bucket] -= 1
        while self._next < len(self.buckets) and self._waiting[self._next] == 0:
            self._start_next()

    def _start_next(self) -> None:
        bucket = [parameter for parameter in self.buckets[self._next] if parameter.grad is not None]
        self._next += 1
        if bucket:
            flat = torch.cat([parameter.grad.reshape(-1) for parameter in bucket])  # (sum of the numels,)
            self._started.append((flat, bucket, dist.all_reduce(flat, async_op=True)))
