"""GTE's improved contrastive loss (Li, Zhang, Zhang, Long, Xie & Zhang 2023, "Towards General Text
Embeddings with Multi-stage Contrastive Learning", arXiv 2308.03281, Sec. 3.3).

Pairs (q, d): the positive ``s(q_i, d_i)`` competes in one partition function with every document of the
batch for the query, the other queries, every query for the document and the other documents
(:func:`~csekit.losses.improved_contrastive`), temperature 0.01 as in the paper. The paper pools by the
mean of the tokens (``pooler: mean`` in the recipes).

Departures: GTE has no public training code, so the partition is the paper's equation (the positive's
term appears in both cross sums; a sentence is never its own negative), checked against a loop over it.
The fine-tuning stage adds one mined hard negative per query; this objective takes pairs only.
"""

from __future__ import annotations

from torch import Tensor

from csekit.losses import improved_contrastive
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.pairs import PairEmbeddings


class GTE(PairEmbeddings, Objective):
    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.01):
        super().__init__()
        self.temperature = temperature

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        return {"contrastive": improved_contrastive(embeddings["sent0"], embeddings["sent1"], self.temperature)}
