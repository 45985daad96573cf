"""Rank, world-size and device helpers, and an all-gather that gradients flow back through.

Every helper works without ``torch.distributed``: a single process is rank 0 of a world of 1.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    """Whether a process group is up (and has more than the calling process to talk to)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def resolve_device(name: str | None = None) -> torch.device:
    """``name`` (cpu, cuda, cuda:1, ...), or cuda when there is one, else cpu."""
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def init_distributed(device_name: str | None = None) -> torch.device:
    """Join the process group ``torchrun`` describes in the environment; pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device_name is None or device_name.startswith("cuda"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if device_name and device_name != "cuda":
        return torch.device(device_name)
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def all_gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate ``tensor`` of every rank along dim 0, in rank order: (B, ...) -> (W * B, ...).

    Every rank must pass a tensor of the same shape (``DistributedSampler`` gives equal batches).

    Why the gradient must flow through *every* gathered copy: with a local loss ``L_r`` on each rank
    (its own anchors against all gathered candidates), DDP averages parameter gradients, so it
    optimises ``(1/W) * sum_r L_r``, which equals the loss one process would compute on the whole
    batch (each ``L_r`` is a mean over the same number of anchors). Rank ``q``'s embeddings enter
    every ``L_r``, so their gradient is ``sum_r dL_r/dz_q``; only rank ``q`` can push it into the
    parameters, so it must receive the terms of all ranks. The backward below all-reduces (sums) the
    gradient of the gathered tensor and keeps this rank's slice: exactly that sum.

    The common shortcut (SimCSE's ``cl_forward``; sentence-transformers' ``all_gather`` with its
    default ``with_grad=False``) gathers without gradient and puts the local tensor back in its own
    slice. Then rank ``q`` gets only ``dL_q/dz_q``: the terms where other ranks use ``z_q`` as a
    negative are dropped, and W processes no longer train like one process with a W-times larger
    batch (``tests/test_distributed.py`` shows both).
    """
    if not is_distributed():
        return tensor
    return _AllGatherWithGrad.apply(tensor)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        ctx.rows = tensor.shape[0]
        gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, tensor.contiguous())
        return torch.cat(gathered)  # (W * B, ...)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # all_reduce works in place on every backend (gloo has no reduce_scatter); clone so the
        # gradient buffer autograd handed us is left untouched.
        grad = grad.contiguous().clone()  # (W * B, ...)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]  # (B, ...)
