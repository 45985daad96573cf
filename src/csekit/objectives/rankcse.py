"""RankCSE (Liu, Liu, Wang, Wang, Wu, Xian, Zhao, Chen & Yan, ACL 2023, "RankCSE: Unsupervised Sentence
Representations Learning via Learning to Rank").

Unsupervised SimCSE (two dropout views h, h', InfoNCE at temperature t1 = 0.05, Sec. 3.1) plus two listwise
terms over each sentence's similarity list ``s_i = [cos(h_i, h'_j) / t1]_j`` of the batch:

- ranking consistency (Sec. 3.2): the Jensen-Shannon divergence between the softmax of ``s_i`` and of the list
  seen from the other view, ``[cos(h'_i, h_j) / t1]_j`` (:func:`csekit.losses.jensen_shannon`), weight beta;
- ranking distillation (Sec. 3.3): frozen teachers' lists ``[cos(t_i, t_j) / t2]_j`` (t2 = 0.05), averaged with
  ``teacher_weights`` (the paper's alpha, 1/3 and 2/3 for its two teachers), are the target of ``s_i``: ListNet
  (:func:`csekit.losses.listnet`, the own sentence left out of both lists) or ListMLE
  (:func:`csekit.losses.listmle`, the full list), weight gamma.

The total is ``InfoNCE + beta * JS + gamma * ranking`` (Sec. 3.4). Teachers are given as model references in
``teachers`` (the paper's are SimCSE and DiffCSE models); each reads the raw text through its own tokenizer and
embeds as its saved model pools, and the trainer computes their embeddings once per corpus and serves them from
the teacher-embedding cache (:mod:`csekit.objectives.teacher`, :mod:`csekit.training.teacher_embeddings`). A
teacher is in eval mode, so its two "views" are one embedding and its list is ``cos(t_i, t_j)``. The defaults are
those of the reference code's ``train.py`` (ListNet, beta 1, gamma 0.1); its run script, whose values
``recipes/rankcse-bert-base-uncased.yaml`` takes, trains ListMLE with gamma 1.
The student's list is at t1 in both variants and the teachers' at t2, as the reference code computes them (its
README's third temperature, t2 / 2, is defined in its ``ListNet`` class and never used).

Where this departs from the reference code (perceptiveshawty/RankCSE, a community implementation: the authors
released none): its consistency term (``Divergence``) clamps the *log* of the mixture at 1e-7, which makes every
entry of it 1e-7 and turns the term into minus the mean entropy of the two lists; here it is the JS divergence
the paper writes. The reference never applies beta to it (beta is 1 in its script, so the two agree there).
ListMLE keeps ties in column order (a stable sort) where the reference shuffles columns before sorting, and takes
the log without the reference's 1e-7 inside it. Under DDP the reference computes the lists over embeddings
gathered without gradient; here each rank's anchors are rows, all ranks' sentences the columns, with gradient
(and teachers' embeddings gathered alike), which trains like one process with the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from csekit.distributed import all_gather_with_grad, get_rank
from csekit.errors import CsekitError
from csekit.losses import cosine_similarity_matrix, info_nce, jensen_shannon, listmle, listnet
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, RunContext
from csekit.objectives.frozen import FrozenHelper
from csekit.objectives.simcse import UnsupervisedSimCSE
from csekit.objectives.teacher import frozen_teacher, teacher_key, teacher_rows

#: The listwise ranking losses of the distillation term.
DISTILLATIONS = ("listnet", "listmle")


def _key(index: int) -> str:
    """``batch["embeddings"]`` name of teacher ``index``'s rows: ``teacher_sent0``, ``teacher2_sent0``, ..."""
    return teacher_key("sent0") if index == 0 else f"teacher{index + 1}_sent0"


class RankCSE(UnsupervisedSimCSE):
    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05,
                 teachers: Sequence[str] = ("",), teacher_weights: Sequence[float] = (),
                 teacher_temperature: float = 0.05, distillation: str = "listnet", beta: float = 1.0,
                 gamma: float = 0.1):  # fmt: skip
        super().__init__(encoder, context, temperature=temperature)
        if distillation not in DISTILLATIONS:
            raise CsekitError(f"rankcse: distillation must be one of {', '.join(DISTILLATIONS)}, got {distillation!r}")
        if not teachers:
            raise CsekitError("rankcse: teachers must name at least one model ('' is a frozen copy of the start)")
        weights = list(teacher_weights) or [1.0 / len(teachers)] * len(teachers)
        if len(weights) != len(teachers):
            raise CsekitError(f"rankcse: teacher_weights gives {len(weights)} weights for {len(teachers)} teachers")
        self.teachers = nn.ModuleList([frozen_teacher(encoder, reference) for reference in teachers])
        self.teacher_weights = weights
        self.teacher_temperature, self.distillation, self.beta, self.gamma = (
            teacher_temperature, distillation, beta, gamma)  # fmt: skip

    def precomputed_embeddings(self) -> dict[str, tuple[FrozenHelper, str]]:
        return {_key(index): (teacher, "sent0") for index, teacher in enumerate(self.teachers)}

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        embeddings = super().embed(encoder, batch)  # view1, view2: (B, H) each
        for index, teacher in enumerate(self.teachers):
            embeddings[_key(index)] = teacher_rows(teacher, batch, "sent0", _key(index))  # (B, Ht)
        return embeddings

    def teacher_logits(self, embeddings: Embeddings) -> Tensor:
        """(B, W * B) the weighted teachers' list of each of this rank's sentences over all ranks' sentences."""
        logits = 0.0
        for index, weight in enumerate(self.teacher_weights):
            rows = embeddings[_key(index)].float()  # (B, Ht)
            logits = logits + weight * cosine_similarity_matrix(rows, all_gather_with_grad(rows))
        return logits / self.teacher_temperature

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        view1, view2 = embeddings["view1"], embeddings["view2"]  # (B, H) each
        size = view1.shape[0]
        student = cosine_similarity_matrix(view1, all_gather_with_grad(view2)) / self.temperature  # (B, W * B)
        reverse = cosine_similarity_matrix(view2, all_gather_with_grad(view1)) / self.temperature  # (B, W * B)
        teacher = self.teacher_logits(embeddings).to(student.dtype)
        if self.distillation == "listnet":
            own = torch.arange(size, device=view1.device) + get_rank() * size  # (B,) each row's own column
            itself = torch.zeros_like(student, dtype=torch.bool)
            itself[torch.arange(size), own] = True
            ranking = listnet(student, teacher, exclude=itself)
        else:
            ranking = listmle(student, teacher)
        return {"contrastive": info_nce(view1, view2, self.temperature),
                "consistency": self.beta * jensen_shannon(student, reverse),
                "distillation": self.gamma * ranking}  # fmt: skip
