"""SimCSE (Gao, Yao & Chen, EMNLP 2021, "SimCSE: Simple Contrastive Learning of Sentence Embeddings").

- Unsupervised (Sec. 3, Eq. 4): each sentence is encoded twice in one forward pass; the two dropout
  masks make two views, and InfoNCE over in-batch negatives pulls the views together, temperature
  0.05. The ``cls`` pooler's MLP head is used in training only (``mlp_only_train``).
- Supervised (Sec. 4, Eq. 5): the entailment hypothesis is the positive and the contradiction the
  hard negative; every anchor sees all positives and all hard negatives of the batch, and
  ``hard_negative_weight`` is added to the logit of its own hard negative (reference code
  ``simcse/models.py::cl_forward``).
- The auxiliary MLM loss (Appendix, ``do_mlm``) is the ``mlm`` wrapper (:mod:`csekit.objectives.mlm`):
  ``wrappers: {mlm: {weight: 0.1}}`` in a recipe.
- The ``cls`` head starts from a fresh initialisation, as the reference's ``MLPLayer`` does (its
  maintainers keep it so on purpose, SimCSE issue #179); the trainer's ``head_init: pretrained`` starts it
  from the checkpoint's own pooler instead.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from csekit.data.collate import concat_fields
from csekit.losses import hard_negative_weights, info_nce
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext


class UnsupervisedSimCSE(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    views: ClassVar[tuple[str, ...]] = ("sent0", "sent0")
    sentence_keys: ClassVar[tuple[str, ...]] = ("view1", "view2")

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        sentences = batch["sent0"]
        size = sentences["input_ids"].shape[0]
        twice = {key: torch.cat([value, value]) for key, value in sentences.items()}  # (2B, T)
        views = encoder(**twice)  # (2B, H): the same sentence under two dropout masks
        return {"view1": views[:size], "view2": views[size:]}

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        return {"contrastive": info_nce(embeddings["view1"], embeddings["view2"], self.temperature)}


class SupervisedSimCSE(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0", "sent1", "hard_neg")
    views: ClassVar[tuple[str, ...]] = ("sent0", "sent1", "hard_neg")
    sentence_keys: ClassVar[tuple[str, ...]] = ("sent0", "sent1", "hard_neg")

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05,
                 hard_negative_weight: float = 0.0):  # fmt: skip
        super().__init__()
        self.temperature = temperature
        self.hard_negative_weight = hard_negative_weight

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        size = batch["sent0"]["input_ids"].shape[0]
        stacked = concat_fields([batch[column] for column in self.columns], encoder.pad_token_id)
        outputs = encoder(**stacked)  # (3B, H): anchors, positives, hard negatives in one pass
        return dict(zip(self.columns, outputs.split(size)))

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        anchors, positives, negatives = (embeddings[column] for column in self.columns)
        size = anchors.shape[0]
        candidates = torch.cat([positives, negatives])  # (2B, H)
        weights = None
        if self.hard_negative_weight:  # exp(w) on its exp term == SimCSE adding w to the logit
            weights = hard_negative_weights(size, 2 * size, self.hard_negative_weight,
                                            device=anchors.device, dtype=anchors.dtype)  # fmt: skip
        return {"contrastive": info_nce(anchors, candidates, self.temperature, weights=weights)}
