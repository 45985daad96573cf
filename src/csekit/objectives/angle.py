"""AnglE (Li & Li 2023, "AnglE-optimized Text Embeddings", arXiv 2309.12871; reference code
SeanLee97/AnglE, ``angle_emb``): three objectives on scored pairs, summed with weights (Sec. 3.5)::

    L = w_cos * L_cos + w_ibn * L_ibn + w_angle * L_angle

- ``L_cos`` (Sec. 3.2): CoSENT's ranking of the pairs' cosines, scale 20 (:func:`~csekit.losses.cosent`);
- ``L_ibn`` (Sec. 3.3): in-batch negatives over both sides of the batch, scale 20: a positive pair's
  sentence must pick its partner among the 2B - 1 other sentences (:func:`~csekit.losses.paired_in_batch_negatives`);
- ``L_angle`` (Sec. 3.4): the same ranking over the pairs' similarity in complex space, each embedding
  split into a real and an imaginary half, scale 1 (:func:`~csekit.losses.angle_ranking`).

Weights and scales are the reference's first release (``AngleLoss(w1=1.0, w2=1.0, w3=1.0, cosine_tau=20,
ibn_tau=20, angle_tau=1.0)``, October 2023, and the README's STS-B fine-tuning example of December 2023).
Later releases changed the defaults (``angle_tau`` 20 from April 2024; ``cosine_w=0, ibn_w=1,
angle_w=0.02`` since 2025): every one is an option here. The reference's ``tau`` multiplies the
similarities, so the options are called scales.

Which pairs are positives of ``L_ibn``: the reference truncates the raw label to an integer and takes
the nonzero ones, which on STS-B's 0-5 scale is a score of at least 1, i.e. 0.2 on the [0, 1] scale the
readers give (``positive_threshold``). Its collator also marks the other sentences of the batch with the
same token ids as targets (``similar_matrix``, ``compute_similar_matrix=True``): ``duplicates_as_positives``.
Departure: its target matrix, built from products of row indices and integer labels, also marks
unrelated rows whose products happen to be equal (row 2 of label 3 and the partner row 3 of label 2);
here only the partner and the duplicates are targets.

With several processes each rank ranks and contrasts its own pairs, as the reference does under data
parallelism. The reference pools the [CLS] state (``cls_before_pooler`` in the recipes).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from csekit.data.collate import concat_fields
from csekit.data.labelled import SCORE
from csekit.errors import CsekitError
from csekit.losses import angle_ranking, cosent, paired_in_batch_negatives
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.pairs import PairEmbeddings


def same_text(batch: Batch, pad_token_id: int) -> Tensor:
    """(2B, 2B) bool: which sentences of ``cat([sent0, sent1])`` have the same token ids (the diagonal included)."""
    ids = concat_fields([batch["sent0"], batch["sent1"]], pad_token_id)["input_ids"]  # (2B, T), one padding
    return (ids[:, None, :] == ids[None, :, :]).all(dim=-1)  # (2B, 2B)


class AnglE(PairEmbeddings, Objective):
    targets: ClassVar[tuple[str, ...]] = (SCORE,)

    def __init__(
        self,
        encoder: SentenceEncoder,
        context: RunContext,
        *,
        cosine_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        angle_weight: float = 1.0,
        cosine_scale: float = 20.0,
        contrastive_scale: float = 20.0,
        angle_scale: float = 1.0,
        positive_threshold: float = 0.2,
        duplicates_as_positives: bool = True,
    ):
        super().__init__()
        weights = (cosine_weight, contrastive_weight, angle_weight)
        if min(weights) < 0 or not any(weights):
            raise CsekitError(f"angle: the weights must be >= 0 and not all 0, got {weights}")
        if angle_weight and encoder.embedding_dim % 2:
            raise CsekitError(f"angle: the angle term splits embeddings in halves, but width {encoder.embedding_dim} is odd")
        self.pad_token_id = encoder.pad_token_id
        self.weights = {"cosine": cosine_weight, "contrastive": contrastive_weight, "angle": angle_weight}
        self.cosine_scale, self.contrastive_scale, self.angle_scale = cosine_scale, contrastive_scale, angle_scale
        self.positive_threshold = positive_threshold
        self.duplicates_as_positives = duplicates_as_positives

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        first, second, scores = embeddings["sent0"], embeddings["sent1"], batch["targets"][SCORE]
        # A term weighted 0 is left out, as the reference does (no zero term in the log).
        terms = {}
        if self.weights["cosine"]:
            terms["cosine"] = self.weights["cosine"] * cosent(first, second, scores, scale=self.cosine_scale)
        if self.weights["contrastive"]:
            positive = scores >= self.positive_threshold  # (B,)
            duplicates = same_text(batch, self.pad_token_id) if self.duplicates_as_positives else None
            contrastive = paired_in_batch_negatives(first, second, positive, scale=self.contrastive_scale,
                                                    duplicates=duplicates)  # fmt: skip
            terms["contrastive"] = self.weights["contrastive"] * contrastive
        if self.weights["angle"]:
            terms["angle"] = self.weights["angle"] * angle_ranking(first, second, scores, scale=self.angle_scale)
        return terms
