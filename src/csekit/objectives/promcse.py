"""PromCSE (Jiang, Zhang & Wang, EMNLP Findings 2022, "Improved Universal Sentence Embeddings with Prompt-based
Contrastive Learning and Energy-based Learning").

- Soft prompt: the backbone is frozen and only a deep prefix is trained, P key/value vectors in
  every attention layer (P-tuning v2, :mod:`csekit.models.prefix`), with the ``cls`` pooler's MLP head
  (the reference freezes ``self.bert`` only; its ``MLPLayer`` trains). The prefix is part of the encoder:
  it is saved in the model folder and every later ``encode`` runs with it.
- Unsupervised: SimCSE's InfoNCE (its NT-Xent loss) over two dropout views, temperature 0.05 (the
  dropout now also falls on the prefix, as the reference's ``get_prompt`` drops it out).
- Supervised: supervised SimCSE's loss on NLI triplets plus ``eh_weight`` times the
  energy-based hinge loss (:func:`csekit.losses.energy_hinge`, margin 0.2 and weight 10 in the reference's
  ``run_sup_example.sh``).

Reference code: ``promcse/models.py`` (github.com/YJiangcm/PromCSE). The prefix keeps its defaults there:
no reparameterisation MLP (``prefix_projection`` is off in every shipped script), N(0, 0.02) initialisation
(``init_weights`` after the prefix is built), the backbone's hidden dropout on the prefix, and position ids
that start after the prefix (what ``past_key_values`` did in the transformers 4.2.1 the reference pins).
A model that already has a prefix (a PromCSE model trained further) keeps it. The paper's text was not at
hand here (its section and equation numbers are not cited); the reference code fixes every formula above.
"""

from __future__ import annotations

import sys

from torch import Tensor

from csekit.errors import CsekitError
from csekit.losses import energy_hinge
from csekit.models.encoder import SentenceEncoder
from csekit.models.lora import is_lora
from csekit.models.prefix import DeepPrefix
from csekit.objectives.base import Batch, Embeddings, RunContext
from csekit.objectives.simcse import SupervisedSimCSE, UnsupervisedSimCSE


def train_prefix_only(encoder: SentenceEncoder, length: int) -> None:
    """Freeze the backbone and give ``encoder`` a ``length``-token deep prefix (or keep the one it has)."""
    if is_lora(encoder):  # the adapters would be frozen with the rest: refuse rather than train nothing of them
        raise CsekitError("promcse trains a deep prefix over a frozen backbone: it takes no lora adapters "
                          "(remove the recipe's lora key)")  # fmt: skip
    if encoder.prefix is None:
        encoder.set_prefix(DeepPrefix(encoder.backbone.config, length))
    elif encoder.prefix.length != length:
        raise CsekitError(f"the model already has a {encoder.prefix.length}-token prefix; prefix_length is {length}")
    encoder.backbone.requires_grad_(False)
    trainable = sum(p.numel() for p in encoder.parameters() if p.requires_grad)
    backbone = sum(p.numel() for p in encoder.backbone.parameters())
    print(f"promcse: training {trainable:,} parameters (prefix {sum(p.numel() for p in encoder.prefix.parameters()):,}"
          f" + head) over a frozen backbone of {backbone:,} ({100 * trainable / backbone:.2f}%)", file=sys.stderr)  # fmt: skip


class UnsupervisedPromCSE(UnsupervisedSimCSE):
    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05,
                 prefix_length: int = 16):  # fmt: skip
        super().__init__(encoder, context, temperature=temperature)
        train_prefix_only(encoder, prefix_length)


class SupervisedPromCSE(SupervisedSimCSE):
    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05,
                 hard_negative_weight: float = 0.0, prefix_length: int = 12, eh_margin: float = 0.2,
                 eh_weight: float = 10.0):  # fmt: skip
        super().__init__(encoder, context, temperature=temperature, hard_negative_weight=hard_negative_weight)
        if eh_weight < 0:
            raise CsekitError(f"promcse_sup: eh_weight must be >= 0, got {eh_weight}")
        self.eh_margin, self.eh_weight = eh_margin, eh_weight
        train_prefix_only(encoder, prefix_length)

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        anchors, positives, negatives = (embeddings[column] for column in self.columns)
        hinge = energy_hinge(anchors, positives, negatives, margin=self.eh_margin)
        return {**super().loss(embeddings, batch), "energy_hinge": self.eh_weight * hinge}
