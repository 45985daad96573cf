"""ESimCSE (Wu, Gao, Zang, Han, Wang & Hu, COLING 2022, "ESimCSE: Enhanced Sample Building Method for
Contrastive Learning of Unsupervised Sentence Embedding").

Unsupervised SimCSE with two changes, one to the positives and one to the negatives:

- Word repetition (Sec. 3.1, :mod:`csekit.augment.repetition`): the positive of a sentence is a copy
  with a few subword tokens repeated, so the two views differ in length. Both views go through the
  encoder with dropout on, in one forward pass.
- Momentum contrast (Sec. 3.2): a queue of sentence embeddings from previous batches adds negatives.
  They come from a momentum encoder, ``theta_m <- m * theta_m + (1 - m) * theta`` (m = 0.995), kept
  in eval mode and out of the optimizer. The loss of anchor i is InfoNCE over the batch's positives
  and the queue ``M``: ``-log e^{s(h_i, h_i+) / t} / (sum_j e^{s(h_i, h_j+) / t} + sum_m e^{s(h_i, h_m) / t})``.

What enters the queue, as the reference code does it (``esimcse/models.py::cl_forward``,
``esimcse/trainers.py::compute_loss``): the momentum backbone's embedding of the *original* sentence
(not the repeated one), dropout off, passed through the encoder's *own* MLP head (the reference keeps no
momentum copy of the head); computed with the momentum weights of the current step and enqueued after
the loss, so a batch meets its own keys only from the next step on. The queue holds
``queue_ratio * batch`` embeddings (2.5 x 64 = 160 for BERT-base) and drops the oldest first; it
starts empty and fills up.

Order of the momentum update: the reference updates the momentum encoder inside the forward pass,
with the weights the optimizer is about to change; here ``after_step`` applies the same update with
the new weights, one step earlier, which gives the same momentum weights at every forward pass.

Gradient cache and accumulation: the keys are an ordinary row-wise output of ``embed`` (graph-free),
``after_micro_batch`` stages them (``loss`` is pure), and ``after_step`` enqueues everything staged since
the last step. So a loss never sees keys of its own optimizer step, however the batch is chunked or
accumulated. Under ``torchrun`` the staged keys are gathered from all ranks in rank order, so every rank
holds the same queue and W ranks x B examples train like one process with W x B.

Where this differs from the reference code, on purpose: its momentum encoder is built before the
pretrained weights are loaded and so starts from a random initialisation (its training log lists
every ``momentum_model.*`` weight as newly initialized); here it starts as a copy of the encoder, as
MoCo does (the paper takes momentum contrast from it). The reference empties the queue at each
epoch and, under DDP, keeps a queue of each rank's own keys; here the queue runs across epochs and
holds all ranks' keys. With gradient accumulation the reference updates and enqueues once per
micro-batch, here once per step.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import Tensor

from csekit.augment.repetition import repeat_tokens
from csekit.data.collate import concat_fields
from csekit.errors import CsekitError
from csekit.losses import info_nce
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.queue import gather_in_batch_order


class ESimCSE(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    views: ClassVar[tuple[str, ...]] = ("sent0", "sent0")
    sentence_keys: ClassVar[tuple[str, ...]] = ("anchors", "positives")
    truncatable = False  # the queue holds full-width keys of earlier batches

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05,
                 dup_rate: float = 0.32, queue_ratio: float = 2.5, momentum: float = 0.995):  # fmt: skip
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise CsekitError(f"esimcse: momentum must be between 0 and 1, got {momentum}")
        if not 0.0 <= dup_rate <= 1.0:
            raise CsekitError(f"esimcse: dup_rate must be between 0 and 1, got {dup_rate}")
        if queue_ratio < 0:
            raise CsekitError(f"esimcse: queue_ratio must be >= 0 (0 turns the queue off), got {queue_ratio}")
        self.temperature = temperature
        self.dup_rate = dup_rate
        self.momentum = momentum
        # The queue counts embeddings of the whole contrastive batch (all ranks' rows of one micro-batch).
        capacity = round(queue_ratio * context.batch_size * context.world_size)
        # A copy of the backbone and pooler; the head stays the encoder's own (see the module docstring).
        self.momentum_encoder = copy.deepcopy(encoder)
        self.momentum_encoder.head = None  # its private copy: forward skips the head, embed applies the encoder's
        self.momentum_encoder.requires_grad_(False).eval()
        # Persistent buffers: checkpoints restore the queue, oldest row first, and how full it is.
        parameter = next(encoder.parameters())
        self.register_buffer("queue", torch.zeros(capacity, encoder.embedding_dim, dtype=parameter.dtype,
                                                  device=parameter.device))  # fmt: skip
        self.register_buffer("queue_length", torch.zeros((), dtype=torch.long, device=parameter.device))
        self._staged: list[Tensor] = []  # keys of the micro-batches since the last optimizer step

    def train(self, mode: bool = True) -> ESimCSE:
        super().train(mode)
        self.momentum_encoder.eval()  # dropout off, as the reference's
        return self

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        sentences = batch["sent0"]
        size = sentences["input_ids"].shape[0]
        pad_token_id = encoder.pad_token_id
        # The repeated view may outgrow the data's max_length (the reference does not cut it); only the
        # model's own limit applies.
        repeated = repeat_tokens(sentences, dup_rate=self.dup_rate, pad_token_id=pad_token_id,
                                 max_length=encoder.max_length)  # fmt: skip
        views = encoder(**concat_fields([sentences, repeated], pad_token_id))  # (2B, H): originals, repeats
        with torch.no_grad():
            keys = self.momentum_encoder(**sentences)  # (B, H), dropout off
            if encoder.uses_head:
                keys = encoder.head(keys)  # the same head as the anchors, as in the reference
        return {"anchors": views[:size], "positives": views[size:], "keys": keys.detach()}

    def after_micro_batch(self, embeddings: Embeddings) -> None:
        if not self.training:
            return
        self._staged.append(embeddings["keys"].detach())
        # Called again and again without a step, staged keys that would be dropped on arrival anyway are
        # dropped now.
        while self._staged and sum(len(keys) for keys in self._staged[1:]) >= len(self.queue):
            self._staged.pop(0)

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        queue = self.queue[: int(self.queue_length)]  # (M, H), M <= capacity
        return {"contrastive": info_nce(embeddings["anchors"], embeddings["positives"], self.temperature,
                                        shared_negatives=queue)}  # fmt: skip

    @torch.no_grad()
    def after_step(self, encoder: SentenceEncoder) -> None:
        online = dict(encoder.backbone.named_parameters())
        for name, parameter in self.momentum_encoder.backbone.named_parameters():
            parameter.mul_(self.momentum).add_(online[name].detach(), alpha=1.0 - self.momentum)
        if self._staged:
            self.enqueue(gather_in_batch_order(self._staged))
            self._staged = []

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Append (K, H) keys after the newest ones; drop the oldest beyond the capacity (FIFO)."""
        capacity = self.queue.shape[0]
        joined = torch.cat([self.queue[: int(self.queue_length)], keys.to(self.queue.dtype)])  # (M + K, H)
        kept = joined[max(0, joined.shape[0] - capacity) :]  # (min(M + K, capacity), H), oldest first
        self.queue[: kept.shape[0]] = kept
        self.queue_length.fill_(kept.shape[0])

