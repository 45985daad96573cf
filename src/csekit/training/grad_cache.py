"""Gradient cache: a contrastive batch of any size in the memory of one chunk.

Gao, Zhang, Han & Callan 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup" (GradCache). The loss couples every row of the batch, but it is cheap: only the encoder is
expensive. So the step is split in two at the embeddings (their Sec. 3.2):

1. embed the batch chunk by chunk without a graph, compute the loss on the concatenated embeddings
   and backpropagate it to them: ``g = dL/dz`` (the "representation gradient cache");
2. embed each chunk again with a graph and backpropagate ``g``'s rows of that chunk: by the chain
   rule, ``sum_chunks g_c . dz_c/dtheta = dL/dtheta`` (their Eq. 6), one chunk's graph at a time.

The second pass must see the same dropout masks as the first (dropout is SimCSE's augmentation,
and ``g`` was computed for those views), so the RNG state before each chunk is saved and replayed.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import torch
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Objective


def grad_cache_step(
    objective: Objective, encoder: SentenceEncoder, batch: Batch, chunk_size: int, *, scale: float = 1.0
) -> dict[str, Tensor]:
    """Accumulate the gradient of the objective's summed terms into ``.grad``; return the terms detached.

    Equal (up to float rounding) to ``sum(objective(encoder, batch).values()).backward()`` when the
    plain step embeds the same chunks in the same order, with peak activation memory of one chunk.
    Runs under the caller's autocast. The RNG leaves in the state a plain step would leave it in. The
    objective's ``after_micro_batch`` hook runs once, with the whole batch's embeddings.
    ``scale`` multiplies the loss before backward (1 / gradient-accumulation steps); the returned
    terms are unscaled.
    """
    if not objective.supports_grad_cache:
        raise ValueError(
            f"{type(objective).__name__} does not support the gradient cache: some loss term depends on "
            "more than its embed() output; train it without grad_cache_chunk"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    device = next(encoder.parameters()).device
    chunks = split_batch(batch, chunk_size)

    # Pass 1: embeddings without a graph, and the RNG state each chunk started from.
    rng_states, cached = [], []
    with torch.no_grad():
        for chunk in chunks:
            rng_states.append(_get_rng_state(device))
            cached.append(objective.embed(encoder, chunk))
    embeddings = {key: _leaf(torch.cat([out[key] for out in cached])) for key in cached[0]}  # (B, ...)

    # The loss on the whole batch, backpropagated to the embeddings (and to any parameter the loss
    # itself uses, e.g. a learned temperature: that part of the gradient is already exact).
    terms = objective.loss(embeddings, batch)
    (sum(terms.values()) * scale).backward()
    objective.after_micro_batch({key: embedding.detach() for key, embedding in embeddings.items()})
    # Embeddings the loss does not use have no gradient to push back.
    grads = {
        key: embedding.grad.split([out[key].shape[0] for out in cached])  # chunks x (chunk, ...)
        for key, embedding in embeddings.items()
        if embedding.grad is not None
    }

    # Pass 2: replay each chunk with a graph and push its rows of the cached gradient through it.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for index, (chunk, state) in enumerate(zip(chunks, rng_states)):
            _set_rng_state(state, device)
            # Under DDP, all-reduce the gradients once, after the last chunk.
            defer_sync = isinstance(encoder, DistributedDataParallel) and index < len(chunks) - 1
            with encoder.no_sync() if defer_sync else nullcontext():
                outputs = objective.embed(encoder, chunk)
                keys = [key for key in grads if outputs[key].requires_grad]  # not graph-free counts
                if keys:
                    torch.autograd.backward(
                        [outputs[key] for key in keys], [grads[key][index] for key in keys]
                    )
    return {name: term.detach() for name, term in terms.items()}


def split_batch(batch: Mapping[str, Any], chunk_size: int) -> list[dict[str, Any]]:
    """Cut every (B, ...) tensor of a (nested) batch into row chunks of ``chunk_size``."""
    size = _batch_size(batch)
    return [_slice(batch, start, start + chunk_size) for start in range(0, size, chunk_size)]


def _slice(value: Any, start: int, stop: int) -> Any:
    if isinstance(value, Tensor | list):
        return value[start:stop]  # (chunk, ...), or a chunk of a column's raw texts
    if isinstance(value, Mapping):
        return {key: _slice(item, start, stop) for key, item in value.items()}
    raise TypeError(f"cannot split a batch holding {type(value).__name__}; batches hold (B, ...) tensors and lists")


def _batch_size(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, Tensor):
            return value.shape[0]
        if isinstance(value, Mapping):
            return _batch_size(value)
    raise ValueError("the batch holds no tensor")


def _leaf(embedding: Tensor) -> Tensor:
    """A graph-free copy the loss can differentiate against (integer tensors carry no gradient)."""
    return embedding.detach().requires_grad_(embedding.is_floating_point())


def _get_rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
