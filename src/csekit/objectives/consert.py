"""ConSERT (Yan et al., ACL 2021, "ConSERT: A Contrastive Framework for Self-Supervised Sentence
Representation Transfer").

- Two views of each sentence, each made by one augmentation of the embedding layer (Sec. 3.2, see
  :mod:`csekit.augment.embedding`): any two of ``none``, ``token_shuffle``, ``token_cutoff``,
  ``feature_cutoff``, ``dropout`` and ``adversarial``, the same one twice included. The paper's best
  pair for unsupervised STS is token shuffle + feature cutoff (Sec. 5, the effect of augmentation
  strategies; ``scripts/unsup-consert-base.sh`` runs ``--da_final_1 feature_cutoff --da_final_2 shuffle``).
- NT-Xent over the 2B views (Sec. 3.1, Eq. 1; :func:`csekit.losses.nt_xent`), temperature 0.1, the
  two directions summed as the reference does (``reduction="sum_of_directions"``), times ``loss_weight``: the reference's ``--cl_rate``
  0.15 scales the contrastive loss even when it is the only term (``cl_loss_only``). With Adam only
  gradient clipping and Adam's epsilon see that factor.
- The sentence is the mean of the last layer's token states (the reference's ``Pooling`` with
  ``pooling_mode_mean_tokens``: recipe ``pooler: mean``), and BERT's own dropout is off (``--no_dropout``:
  recipe ``dropout: 0.0``): the augmentations are the only noise.

The adversarial view. The paper uses it only with supervision (Sec. 3.2): the reference's Fast
Gradient Value step takes the gradient of the supervised NLI loss at the embedding output. With no
labels, this objective takes the gradient of the loss the adversarial view itself enters, evaluated
at zero perturbation: a clean pass ``c`` (no augmentation), ``L = nt_xent(partner, c)`` with the
other view as a constant partner (``c`` itself when both views are adversarial), ``g = dL / d(embedding
output)`` on this process's batch, then a pass from ``embedding output + noise_norm * g / ||g||`` per
token. As in the reference, that pass reuses the clean pass's embedding output (its graph included)
and the attack's gradient never reaches the weights. A ``none`` view next to it is that clean pass.
Its gradient couples the rows of the batch inside ``embed``, so it does not run with the gradient cache.

``temperature`` is ConSERT's own option, 0.1 by default (the reference's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from csekit.augment.embedding import (
    DEFAULT_NOISE_NORM,
    DEFAULT_RATES,
    adversarial_perturbation,
    captured_embedding_output,
    check_augmentation,
    check_rate,
    embedding_augmentation,
)
from csekit.errors import CsekitError
from csekit.losses import nt_xent
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext


class ConSERT(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    views: ClassVar[tuple[str, ...]] = ("sent0", "sent0")
    sentence_keys: ClassVar[tuple[str, ...]] = ("view1", "view2")

    def __init__(
        self,
        encoder: SentenceEncoder,
        context: RunContext,
        *,
        temperature: float = 0.1,
        augmentations: Sequence[str] | str = ("feature_cutoff", "token_shuffle"),
        token_cutoff_rate: float = DEFAULT_RATES["token_cutoff"],
        feature_cutoff_rate: float = DEFAULT_RATES["feature_cutoff"],
        dropout_rate: float = DEFAULT_RATES["dropout"],
        noise_norm: float = DEFAULT_NOISE_NORM,
        loss_weight: float = 0.15,
    ):
        super().__init__()
        if isinstance(augmentations, str):  # --set options.augmentations=token_shuffle,feature_cutoff
            augmentations = [name.strip() for name in augmentations.split(",")]
        if len(augmentations) != 2:
            raise CsekitError(f"consert takes two augmentations, one per view, got {list(augmentations)}")
        self.augmentations = tuple(check_augmentation(name) for name in augmentations)
        self.rates = {
            "token_cutoff": check_rate("token_cutoff", token_cutoff_rate),
            "feature_cutoff": check_rate("feature_cutoff", feature_cutoff_rate),
            "dropout": check_rate("dropout", dropout_rate),
        }
        if temperature <= 0 or noise_norm < 0:
            raise CsekitError(f"consert needs temperature > 0 and noise_norm >= 0, got {temperature} and {noise_norm}")
        self.temperature = temperature
        self.noise_norm = noise_norm
        self.loss_weight = loss_weight
        # The attack's gradient is taken on the batch (or chunk) that embed() sees.
        self.supports_grad_cache = "adversarial" not in self.augmentations

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        inputs = batch["sent0"]
        mask = inputs["attention_mask"]
        views: list[Tensor | None] = [None, None]
        attacked = "adversarial" in self.augmentations
        for index, name in enumerate(self.augmentations):
            if name == "adversarial" or (name == "none" and attacked):
                continue  # made below, from the clean pass
            with embedding_augmentation(encoder, name, mask, rate=self.rates.get(name)):
                views[index] = encoder(**inputs)  # (B, H)
        if attacked:
            partner = next((view for view in views if view is not None), None)
            clean, perturbed = self._attack(encoder, inputs, partner)
            for index, name in enumerate(self.augmentations):
                if name == "none":
                    views[index] = clean
                elif name == "adversarial":
                    with embedding_augmentation(encoder, "adversarial", mask, replacement=perturbed):
                        views[index] = encoder(**inputs)  # (B, H)
        return {"view1": views[0], "view2": views[1]}

    def _attack(
        self, encoder: SentenceEncoder, inputs: dict[str, Tensor], partner: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The clean pass (B, H) and its embedding output moved by one FGV step (B, T, H)."""
        with torch.enable_grad(), captured_embedding_output(encoder) as captured:
            clean = encoder(**inputs)  # (B, H)
            target = (clean if partner is None else partner).detach()
            attack = nt_xent(target, clean, self.temperature, reduction="sum_of_directions", gather=False)
            # retain_graph: the clean pass's graph stays for the final backward (the perturbed view
            # and a ``none`` view go through it).
            (gradient,) = torch.autograd.grad(attack, captured[0], retain_graph=True)  # (B, T, H)
        return clean, captured[0] + adversarial_perturbation(gradient, self.noise_norm)

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        contrastive = nt_xent(embeddings["view1"], embeddings["view2"], self.temperature, reduction="sum_of_directions")
        return {"contrastive": self.loss_weight * contrastive}
