"""Fully sharded data parallelism (FSDP2, ``torch.distributed.fsdp.fully_shard``) for backbones too big to
replicate on every device.

Under ``torchrun`` with ``fsdp: true`` each transformer layer of the backbone (the classes transformers marks
as ``_no_split_modules``: a decoder layer, BERT's layer), then the backbone, then the encoder (its head and
pooler) become FSDP units: every rank keeps 1/W of each parameter, gathers a unit's whole weights just before
the unit runs (forward and backward) and frees them after, and gradients are reduce-scattered, averaged over
the ranks as DDP averages them. Each rank still embeds its own slice of the batch and the losses gather the
negatives of all ranks (:func:`csekit.distributed.all_gather_with_grad`), so W ranks train as one process on
the whole batch (``tests/test_fsdp.py``). The objective's own trainable modules (a classifier) stay
replicated and are averaged by :class:`~csekit.training.gradient_sync.GradientSync`.

Saving gathers the full state dict onto rank 0's CPU (``get_model_state_dict(full_state_dict=True,
cpu_offload=True)``) into an unsharded copy of the encoder made before sharding, which saves as any encoder
does. Model selection runs on every rank (each forward needs all of them); resumable checkpoints of sharded
weights are not written (``save_steps`` stays unset, ``--resume`` is refused).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from csekit.distributed import get_rank
from csekit.errors import CsekitError
from csekit.models import SentenceEncoder


def shard(encoder: SentenceEncoder) -> SentenceEncoder | None:
    """Shard ``encoder`` in place across the process group; returns rank 0's unsharded CPU copy for saving
    (None on the other ranks)."""
    from torch.distributed.fsdp import fully_shard

    plain = copy.deepcopy(encoder).cpu() if get_rank() == 0 else None
    model = encoder.backbone.get_base_model() if hasattr(encoder.backbone, "get_base_model") else encoder.backbone
    kinds = set(getattr(model, "_no_split_modules", None) or ())
    layers = [module for module in encoder.backbone.modules() if type(module).__name__ in kinds]
    if not layers:
        raise CsekitError(f"fsdp: {type(model).__name__} names no layer classes (_no_split_modules) to shard by")
    for layer in layers:
        fully_shard(layer)
    fully_shard(encoder.backbone)
    fully_shard(encoder)  # the root: the pooler's and head's parameters, and the order the units run in
    return plain


def gathered(encoder: SentenceEncoder, plain: SentenceEncoder | None) -> SentenceEncoder | None:
    """The full weights of the sharded ``encoder`` in ``plain`` on rank 0 (None elsewhere); call on every rank."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(encoder, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if plain is None:
        return None
    plain.load_state_dict(state)
    plain.train(encoder.training)
    return plain


def replicated(parameters: list[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters FSDP does not shard (and so does not average)."""
    return [parameter for parameter in parameters if not isinstance(parameter, DTensor)]


def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over sharded and replicated parameters together: the norm of all gradients, whole."""
    grads = [parameter.grad for parameter in parameters if parameter.grad is not None]
    norms = [grad.norm() for grad in grads]
    norms = [norm.full_tensor() if isinstance(norm, DTensor) else norm for norm in norms]  # a shard's norm is partial
    total = torch.stack(norms).norm()
    for group in (replicated(parameters), [p for p in parameters if isinstance(p, DTensor)]):
        if group:
            nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return total
