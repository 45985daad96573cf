"""GCSE: Gaussian-decayed gradients for likely false hard negatives.

Li et al. 2024, "Enhancing Unsupervised Sentence Embeddings via Knowledge-Driven Data Augmentation and
Gaussian-Decayed Contrastive Learning" (GCSE; reference code ``aleversn/GCSE``,
``main/models/gcse.py::cl_forward`` and ``main/trainers/gcse_trainer.py``). The LLM pipeline that
synthesises the training triplets is not part of this objective; it trains on any
(``sent0``, ``sent1``, ``hard_neg``) triplets.

The loss is supervised SimCSE's InfoNCE (anchors against all positives and all hard negatives of the
batch, temperature 0.05) with one change, made exactly as the reference makes it. For anchor i and
its *own* hard negative (column B + i only; in-batch negatives and other anchors' hard negatives are
left alone), with ``l`` the logit cos/t of the model being trained and ``b`` the same logit under a
frozen base model (both in logit units, i.e. divided by the temperature; both detached):

    d = l - b,   added_i = 0 if d > 0 else -l * exp(-d^2 / (2 alpha^2))

is added to that logit. The added term carries no gradient, so the logit becomes ``l (1 - g)`` in
value while its gradient still flows through ``l``: a hard negative the model already scores no
higher than the base does (d <= 0, close to it: g ~ 1) is pushed to logit ~0, which (for a positive
logit) shrinks its softmax share and so its gradient ("Gaussian-decayed gradient"); one scored above
the base (d > 0) is pushed away at full strength. alpha = 0.17 for BERT and 8.58 for RoBERTa (the
reference's ``GCSE`` / ``GCSERoberta`` defaults; their ``beta`` is never read). Here the term enters
through ``info_nce``'s weights as ``weights = exp(added)``, which is the same thing.

Columns: the reference applies the decay only to hard negatives (``num_sent == 3``); without one the
loss is plain unsupervised SimCSE. So this objective takes triplets. A dropout-view positive, as the
reference data uses for its rows whose negative is LLM-generated, is a row with ``sent1 == sent0``.

The base model: the reference trains with ``base_from_pretrained`` = the starting checkpoint
(``train.py``) or a trained SimCSE model, in eval mode, its logits detached. ``base_model: ""`` (the
default) is a frozen copy of the starting encoder; a path loads another model (with its own tokenizer,
if it has one). The reference builds the base model as a model of its own, so its ``cls`` MLP head gets
an initialisation of its own; so does the copy here (``base_head: independent``), drawn after the
student's. ``base_head: copy`` keeps the student's starting head instead.
Not reproduced: the reference's word-duplication of the anchor text in its data loader (an ESimCSE
style augmentation) and its token_type_ids of 1 for the second and third sentence.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from csekit.data.collate import concat_fields
from csekit.errors import CsekitError
from csekit.losses import info_nce
from csekit.models.encoder import SentenceEncoder
from csekit.models.modules import MLPHead
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.frozen import FrozenHelper

BASE_HEADS = ("independent", "copy")


def gaussian_decay_weights(anchors: Tensor, hard_negatives: Tensor, base_anchors: Tensor, base_hard_negatives: Tensor,
                           *, temperature: float, alpha: float) -> Tensor:  # fmt: skip
    """(B,) multipliers of each anchor's own hard-negative exp term (detached).

    anchors, hard_negatives: (B, H) of the model being trained; base_*: (B, H') of the frozen base.
    """
    logits = (torch.nn.functional.cosine_similarity(anchors, hard_negatives, dim=-1) / temperature).detach()  # (B,)
    base = torch.nn.functional.cosine_similarity(base_anchors, base_hard_negatives, dim=-1).detach() / temperature
    difference = logits - base  # (B,)
    added = torch.where(difference > 0, torch.zeros_like(logits),
                        -logits * torch.exp(-difference.square() / (2 * alpha**2)))  # fmt: skip
    return added.exp()  # (B,), exp(added logit)


def place_own_hard_negative_weights(own: Tensor, num_candidates: int) -> Tensor:
    """(B,) weights of each anchor's own hard negative -> (B, N) weights over [B positives; B hard negatives]."""
    size = own.shape[0]
    weights = torch.ones(size, num_candidates, device=own.device, dtype=own.dtype)  # (B, 2B)
    rows = torch.arange(size, device=own.device)
    weights[rows, size + rows] = own
    return weights


class GCSE(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0", "sent1", "hard_neg")
    views: ClassVar[tuple[str, ...]] = ("sent0", "sent1", "hard_neg")
    sentence_keys: ClassVar[tuple[str, ...]] = ("sent0", "sent1", "hard_neg")

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05,
                 alpha: float = 0.17, base_model: str = "", base_head: str = "independent"):  # fmt: skip
        super().__init__()
        if alpha <= 0:
            raise CsekitError(f"gcse: alpha (the Gaussian's width) must be positive, got {alpha}")
        if base_head not in BASE_HEADS:
            raise CsekitError(f"gcse: base_head must be one of {', '.join(BASE_HEADS)}, not {base_head!r}")
        self.temperature = temperature
        self.alpha = alpha
        self.base = FrozenHelper.encoder(encoder, base_model, role="base_model", columns=("sent0", "hard_neg"))
        base = self.base.module
        if not base_model and base_head == "independent" and isinstance(base.head, MLPHead):
            base.head.reset_parameters(getattr(base.backbone.config, "initializer_range", 0.02))

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        size = batch["sent0"]["input_ids"].shape[0]
        stacked = concat_fields([batch[column] for column in self.columns], encoder.pad_token_id)
        outputs = encoder(**stacked)  # (3B, H): anchors, positives, hard negatives in one pass
        embeddings = dict(zip(self.columns, outputs.split(size)))
        # The base model sees the anchors and hard negatives only: the reference reads just that block.
        base_anchors, base_negatives = self.base.embed(batch, "sent0", "hard_neg").split(size)  # 2 x (B, H')
        return {**embeddings, "base_sent0": base_anchors, "base_hard_neg": base_negatives}

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        anchors, positives, negatives = (embeddings[column] for column in self.columns)
        candidates = torch.cat([positives, negatives])  # (2B, H)
        own = gaussian_decay_weights(anchors, negatives, embeddings["base_sent0"], embeddings["base_hard_neg"],
                                     temperature=self.temperature, alpha=self.alpha)  # fmt: skip
        weights = place_own_hard_negative_weights(own, candidates.shape[0])  # (B, 2B)
        return {"contrastive": info_nce(anchors, candidates, self.temperature, weights=weights)}

