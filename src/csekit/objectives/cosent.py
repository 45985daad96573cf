"""CoSENT (Su 2022, "CoSENT: a more efficient sentence vector scheme than Sentence-BERT", kexue.fm/archives/8847;
reference code bojone/CoSENT ``cosent.py::cosent_loss``).

Scored pairs are ranked against each other within the batch: for every two pairs where ``s_i > s_j``,
the cosine of pair i should exceed that of pair j,
``log(1 + sum_{s_i > s_j} exp(λ (cos(u_j, v_j) - cos(u_i, v_i))))`` with λ = 20
(:func:`~csekit.losses.cosent`). Only the order of the gold scores counts, so any score scale works.
The reference pools the [CLS] state (``cls_before_pooler`` in the recipes).

With several processes each rank ranks its own pairs, as the reference does under data parallelism.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from csekit.data.labelled import SCORE
from csekit.losses import cosent
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.pairs import PairEmbeddings


class CoSENT(PairEmbeddings, Objective):
    targets: ClassVar[tuple[str, ...]] = (SCORE,)

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, scale: float = 20.0):
        super().__init__()
        self.scale = scale

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        return {"cosent": cosent(embeddings["sent0"], embeddings["sent1"], batch["targets"][SCORE], scale=self.scale)}
