"""Similarity-distribution distillation: the student learns how the teacher spreads each sentence's
similarity over the other sentences of the batch.

For sentence i of a batch, ``P(i, j) = softmax_j(cos(e_i, e_j) / t)`` over the other sentences j != i
(the diagonal is masked); the loss is ``mean_i KL(P_teacher(i, .) || P_student(i, .))``
(:func:`csekit.losses.similarity_kl`), temperature t = 0.05 on both sides, the temperature of SimCSE's
in-batch distribution that the teacher's similarities are read at. It has the form of the listwise (ListNet)
distillation term of RankCSE (Liu et al., ACL 2023, "RankCSE: Unsupervised Sentence Representations
Learning via Learning to Rank": a teacher's softmax over in-batch similarities as the target of the
student's), here with the teacher's own in-batch similarities of the same sentences, one temperature for
both, and on its own (RankCSE adds it to SimCSE's InfoNCE and a ListMLE term, and builds its teacher's
distribution from two SimCSE-style teachers).

Only similarities are compared, so the student keeps its own width: no projection is trained, and the
saved model is the student as it is. The distribution is over this rank's batch (not gathered across
ranks): under ``torchrun`` each rank distils its own B x B matrix.
"""

from __future__ import annotations

from torch import Tensor

from csekit.losses import similarity_kl
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.teacher import TeacherEmbeddings


class SimilarityDistillation(TeacherEmbeddings, Objective):
    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, teacher: str = "", temperature: float = 0.05):
        super().__init__()
        self.build_teacher(encoder, teacher)
        self.temperature = temperature

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        student, teacher = embeddings["student"].float(), embeddings["teacher"].float()  # (B, H), (B, Ht)
        return {"kl": similarity_kl(student, teacher, temperature=self.temperature)}
