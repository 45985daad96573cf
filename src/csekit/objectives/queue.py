"""A FIFO queue of embeddings from earlier steps, used as extra negatives (ESimCSE's momentum keys,
CKD's teacher embeddings).

The queue is checkpointed (persistent buffers: its rows, oldest first, and how many are filled), so a
resumed run continues with the queue it had. ``loss`` stays pure: an objective stages each micro-batch's
rows in ``after_micro_batch`` (:meth:`EmbeddingQueue.stage`) and enqueues them in ``after_step``
(:meth:`EmbeddingQueue.flush`), so a loss never meets rows of its own optimizer step, however the batch is
chunked (gradient cache) or accumulated. Under ``torchrun`` the staged rows are gathered from all ranks in
rank order, so every rank holds the same queue and W ranks x B examples train like one process with W x B.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from csekit.distributed import all_gather_with_grad, get_world_size


class EmbeddingQueue(nn.Module):
    """Up to ``capacity`` (H,) rows; the oldest go first."""

    def __init__(self, capacity: int, width: int, *, dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu"):  # fmt: skip
        super().__init__()
        self.register_buffer("rows", torch.zeros(capacity, width, dtype=dtype, device=device))  # (capacity, H)
        self.register_buffer("length", torch.zeros((), dtype=torch.long, device=device))
        self._staged: list[Tensor] = []  # rows of the micro-batches since the last optimizer step

    @property
    def capacity(self) -> int:
        return self.rows.shape[0]

    def contents(self) -> Tensor:
        """(M, H), M <= capacity, oldest first."""
        return self.rows[: int(self.length)]

    def stage(self, rows: Tensor) -> None:
        """Keep (B, H) rows of one micro-batch for the next :meth:`flush`."""
        self._staged.append(rows.detach())
        # Staged again and again without a step, rows that would be dropped on arrival are dropped now.
        while self._staged and sum(len(staged) for staged in self._staged[1:]) >= self.capacity:
            self._staged.pop(0)

    @torch.no_grad()
    def flush(self) -> None:
        """Enqueue everything staged since the last flush (all ranks' rows, in batch order)."""
        if self._staged:
            self.enqueue(gather_in_batch_order(self._staged))
            self._staged = []

    @torch.no_grad()
    def enqueue(self, rows: Tensor) -> None:
        """Append (K, H) rows after the newest ones; drop the oldest beyond the capacity."""
        joined = torch.cat([self.contents(), rows.to(self.rows.dtype)])  # (M + K, H)
        kept = joined[max(0, joined.shape[0] - self.capacity) :]  # (min(M + K, capacity), H), oldest first
        self.rows[: kept.shape[0]] = kept
        self.length.fill_(kept.shape[0])


def gather_in_batch_order(staged: list[Tensor]) -> Tensor:
    """k micro-batches of (B, H) rows on each of W ranks -> (k * W * B, H): micro-batch by micro-batch,
    ranks in order within each, the row order one process with the W x B batches would have."""
    if get_world_size() == 1:
        return torch.cat(staged)  # (k * B, H)
    stacked = torch.stack(staged)  # (k, B, H): ranks hold equal batches
    gathered = all_gather_with_grad(stacked)  # (W * k, B, H), rank order
    per_rank = gathered.view(get_world_size(), *stacked.shape)  # (W, k, B, H)
    return per_rank.transpose(0, 1).reshape(-1, stacked.shape[-1])  # (k * W * B, H)
