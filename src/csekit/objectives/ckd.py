"""CKD, contrastive knowledge distillation (Xu, Gao, Wu, Hu, Wang & Hu 2021/2023, "DistilCSE: Effective
Knowledge Distillation For Contrastive Sentence Embeddings", arXiv 2112.05638, Sec. 3.2; reference code
``caskcsg/sentemb``, ``DistilCSE/ckd_contrastive.py::CSKD`` and ``ckd_contrastive_run.sh``).

InfoNCE with the student's embedding of a sentence as the query and the frozen teacher's embedding of the
*same* sentence as its positive key; the negatives are the teacher's embeddings of the other sentences of
the batch and a FIFO queue of the teacher's embeddings from earlier steps:

    -log exp(s * cos(W h_i, t_i)) / (sum_j exp(s * cos(W h_i, t_j)) + sum_m exp(s * cos(W h_i, q_m)))

As the reference computes it:

- ``W`` is a linear map (``nn.Linear``, with a bias) from the student's width to the teacher's. It is used
  in training only: the reference saves the student's weights alone (``student_model.state_dict()``) and
  evaluates the student's own pooled output, so the saved model here is the student without it.
- ``s`` is ``exp(logit_scale)``, a learnable parameter (``temp_exp=1``) started at ``temp=1``, so the scale
  starts at e = 2.718 (``scale``; ``learnable_scale: false`` keeps it fixed). Both sides are L2-normalised.
- the queue holds ``queue_len = 65536`` teacher embeddings; the batch's own keys join it after the loss
  (they are never negatives of their own step), newest kept, oldest dropped. A teacher is fixed, so unlike
  a momentum encoder's keys, queued embeddings never go stale. Handled as ESimCSE's queue is
  (:mod:`csekit.objectives.queue`): staged per micro-batch, enqueued per optimizer step, checkpointed.

Departures: under ``torchrun`` the reference (``gather=0``) contrasts each rank's batch with its own
queue; here the batch's keys and the queue are gathered from all ranks, so W ranks x B train like one
process with W x B (as every contrastive objective of this library does). The reference's optional MSE
term (``mse=1``, off in its script) is not included: ``distill_mse`` is that loss on its own. Its teacher
(sup-simcse-roberta-large) pools with its pooler output; here the teacher pools as its saved model does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from csekit.errors import CsekitError
from csekit.losses import info_nce
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.queue import EmbeddingQueue
from csekit.objectives.teacher import TeacherEmbeddings


class ContrastiveDistillation(TeacherEmbeddings, Objective):
    truncatable = False  # the projection onto the teacher reads the full width
    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, teacher: str = "", queue_size: int = 65536,
                 scale: float = math.e, learnable_scale: bool = True):  # fmt: skip
        super().__init__()
        if queue_size < 0:
            raise CsekitError(f"ckd: queue_size must be >= 0 (0 turns the queue off), got {queue_size}")
        if scale <= 0:
            raise CsekitError(f"ckd: scale (the multiplier of the cosine similarities) must be positive, got {scale}")
        self.build_teacher(encoder, teacher)
        device = next(encoder.parameters()).device
        self.projection = nn.Linear(encoder.embedding_dim, self.teacher_dim).to(device)  # train-only: see above
        log_scale = torch.tensor(math.log(scale), device=device)
        if learnable_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        self.queue = EmbeddingQueue(queue_size, self.teacher_dim, device=device)

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        queries = self.projection(embeddings["student"])  # (B, Ht)
        temperature = torch.exp(-self.log_scale)  # 1 / s
        return {"contrastive": info_nce(queries, embeddings["teacher"].to(queries.dtype), temperature,
                                        shared_negatives=self.queue.contents().to(queries.dtype))}  # fmt: skip

    def after_micro_batch(self, embeddings: Embeddings) -> None:
        if self.training:
            self.queue.stage(embeddings["teacher"])

    def after_step(self, encoder: SentenceEncoder) -> None:
        self.queue.flush()
