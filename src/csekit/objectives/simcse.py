"""SimCSE (Gao, Yao & Chen, EMNLP 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings").

- Unsupervised (Sec. 3, Eq. 4): each sentence is encoded twice in one forward pass; the two dropout
  masks make two views, and InfoNCE over in-batch negatives pulls the views together, temperature
  0.05. The ``cls`` pooler's MLP head is used in training only (``mlp_only_train``).
- Supervised (Sec. 4, Eq. 5): the entailment hypothesis is the positive and the contradiction the
  hard negative; every anchor sees all positives and all hard negatives of the batch, and
  ``hard_negative_weight`` is added to the logit of its own hard negative (reference code
  ``simcse/models.py::cl_forward``).
- Optional auxiliary MLM loss (Appendix, ``do_mlm``): ``mlm_weight`` times a masked-LM loss on a
  separately masked copy of the anchors.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from csekit.data.collate import concat_fields
from csekit.losses import hard_negative_weights, info_nce
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Objective
from csekit.objectives.mlm import MaskedLMHead


class UnsupervisedSimCSE(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0",)

    def __init__(self, encoder: SentenceEncoder, *, temperature: float = 0.05, mlm_weight: float = 0.0,
                 mlm_probability: float = 0.15, model: str = ""):  # fmt: skip
        super().__init__()
        self.temperature = temperature
        self.mlm_weight = mlm_weight
        self.mlm = MaskedLMHead.from_pretrained(model, encoder, probability=mlm_probability) if mlm_weight else None

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> dict[str, Tensor]:
        sentences = batch["sent0"]
        size = sentences["input_ids"].shape[0]
        twice = {key: torch.cat([value, value]) for key, value in sentences.items()}  # (2B, T)
        views = encoder(**twice)  # (2B, H): the same sentence under two dropout masks
        embeddings = {"view1": views[:size], "view2": views[size:]}
        if self.mlm is not None:
            embeddings.update(self.mlm.per_example_loss(encoder, sentences))
        return embeddings

    def loss(self, embeddings: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        terms = {"contrastive": info_nce(embeddings["view1"], embeddings["view2"], self.temperature)}
        if self.mlm is not None:
            terms["mlm"] = self.mlm_weight * MaskedLMHead.reduce(embeddings)
        return terms


class SupervisedSimCSE(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0", "sent1", "hard_neg")

    def __init__(self, encoder: SentenceEncoder, *, temperature: float = 0.05, hard_negative_weight: float = 0.0,
                 mlm_weight: float = 0.0, mlm_probability: float = 0.15, model: str = ""):  # fmt: skip
        super().__init__()
        self.temperature = temperature
        self.hard_negative_weight = hard_negative_weight
        self.mlm_weight = mlm_weight
        self.mlm = MaskedLMHead.from_pretrained(model, encoder, probability=mlm_probability) if mlm_weight else None

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> dict[str, Tensor]:
        size = batch["sent0"]["input_ids"].shape[0]
        stacked = concat_fields([batch[column] for column in self.columns], encoder.tokenizer.pad_token_id or 0)
        outputs = encoder(**stacked)  # (3B, H): anchors, positives, hard negatives in one pass
        embeddings = dict(zip(self.columns, outputs.split(size)))
        if self.mlm is not None:
            embeddings.update(self.mlm.per_example_loss(encoder, batch["sent0"]))
        return embeddings

    def loss(self, embeddings: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        anchors, positives, negatives = (embeddings[column] for column in self.columns)
        size = anchors.shape[0]
        candidates = torch.cat([positives, negatives])  # (2B, H)
        weights = None
        if self.hard_negative_weight:  # exp(w) on its exp term == SimCSE adding w to the logit
            weights = hard_negative_weights(size, 2 * size, self.hard_negative_weight,
                                            device=anchors.device, dtype=anchors.dtype)  # fmt: skip
        terms = {"contrastive": info_nce(anchors, candidates, self.temperature, weights=weights)}
        if self.mlm is not None:
            terms["mlm"] = self.mlm_weight * MaskedLMHead.reduce(embeddings)
        return terms
