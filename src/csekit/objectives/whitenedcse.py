"""WhitenedCSE: shuffled group whitening of dropout views, several positives per sentence.

Zhuo et al., ACL 2023, "WhitenedCSE: Whitening-based Contrastive Learning of Sentence Embeddings"
(reference code ``SupstarZh/WhitenedCSE``, ``whitenedcse/shuffled_group_whitening.py`` and
``whitenedcse/models.py::cl_forward``; hyper-parameters from ``run_unsup_example.sh``).

Each sentence is encoded three times (three dropout masks); each view's [CLS] block (B, H) goes
through shuffled group whitening (SGW, Sec. 3): its H feature columns are put in a random order
of their own, cut into ``num_groups`` groups of H / G columns, and each group is centred over the batch and
ZCA-whitened, ``x W`` with ``W = U diag(S)^-1/2 U^T`` from the eigendecomposition ``U S U^T`` of the
group's covariance (divided by B, not B - 1); the columns then go back to their order. Different
shuffles whiten different groupings, so the three whitened views differ by more than their dropout:
they are the positives. Then the projection head (dense + tanh, fresh, training only: the reference's
``mlp_only_train``, whose ``MLPLayer`` runs SGW before its dense layer), and the multi-positive
loss of the reference: ``L = sum_{p=2,3} InfoNCE(z_1, z_p)``, each over the in-batch view-p negatives,
temperature 0.05. Equation numbers are not cited: the formulas are written out as the reference code
computes them.

As the reference: the whitening matrix is computed from a detached covariance (its ``transformation``
re-wraps the covariance as a new tensor), so gradients flow through the centring and the product, not
the eigendecomposition. Under DDP each process whitens its own batch (the reference whitens before it
gathers); the InfoNCE then gathers the whitened, projected views. Departures: the reference cuts the
batch into three contiguous row blocks while its rows are interleaved (sentence, view); here each block
is one view, as the paper describes SGW. Eigenvalues are clamped at ``1e-8`` (a group with a rank-deficient
covariance, B <= H / G, would divide by zero).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from csekit.errors import CsekitError
from csekit.losses import info_nce
from csekit.models.encoder import SentenceEncoder
from csekit.models.modules import MLPHead
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext

#: Views per sentence: the reference's SGW splits the batch into exactly three blocks.
VIEWS = 3
MIN_EIGENVALUE = 1e-8


def group_whiten(features: Tensor, num_groups: int, order: Tensor) -> Tensor:
    """(B, H) -> (B, H): columns in ``order`` (a permutation), ZCA-whitened in ``num_groups`` consecutive groups
    over the batch, returned to their own positions."""
    size, width = features.shape
    grouped = features[:, order].reshape(size, num_groups, width // num_groups)  # (B, G, d)
    centred = (grouped - grouped.mean(dim=0, keepdim=True)).transpose(0, 1)  # (G, B, d)
    # (G, d, d), no gradient (as the reference); in float64, where the small eigenvalues' rsqrt stays exact
    covariance = (centred.transpose(1, 2) @ centred).detach().double() / size
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # (G, d), (G, d, d)
    scale = eigenvalues.clamp_min(MIN_EIGENVALUE).rsqrt().diag_embed()  # (G, d, d)
    whitening = (eigenvectors @ scale @ eigenvectors.transpose(1, 2)).to(centred.dtype)  # (G, d, d): ZCA
    whitened = (centred @ whitening).transpose(0, 1).reshape(size, width)  # (B, H), shuffled order
    return whitened[:, torch.argsort(order)]


class WhitenedCSE(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    views: ClassVar[tuple[str, ...]] = ("sent0",) * VIEWS
    sentence_keys: ClassVar[tuple[str, ...]] = tuple(f"view{index + 1}" for index in range(VIEWS))
    truncatable: ClassVar[bool] = False  # the whitening groups span the full width

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05,
                 num_groups: int = 128, shuffle: bool = True):  # fmt: skip
        super().__init__()
        hidden = encoder.backbone.config.hidden_size
        if num_groups < 1 or hidden % num_groups:
            raise CsekitError(f"whitenedcse: num_groups must divide the hidden size {hidden}, got {num_groups}")
        if encoder.head is not None:
            raise CsekitError("whitenedcse whitens the pooled state before its own dense + tanh head: use a pooler "
                              f"without one (cls_before_pooler), not {encoder.pooler.name!r}")  # fmt: skip
        self.temperature, self.num_groups, self.shuffle = temperature, num_groups, shuffle
        std = getattr(encoder.backbone.config, "initializer_range", 0.02)
        self.head = MLPHead(hidden).reset_parameters(std)

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        sentences = batch["sent0"]
        size = sentences["input_ids"].shape[0]
        thrice = {key: torch.cat([value] * VIEWS) for key, value in sentences.items()}  # (3B, T)
        views = encoder(**thrice).split(size)  # 3 x (B, H): three dropout masks
        return dict(zip(self.sentence_keys, views))

    def whitened_views(self, embeddings: Embeddings) -> list[Tensor]:
        """Each view whitened with a column order of its own, then projected: 3 x (B, H)."""
        projected = []
        for key in self.sentence_keys:
            view = embeddings[key]
            width = view.shape[1]
            order = torch.randperm(width, device=view.device) if self.shuffle else torch.arange(width, device=view.device)
            projected.append(self.head(group_whiten(view, self.num_groups, order)))
        return projected

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        anchor, *positives = self.whitened_views(embeddings)
        return {"contrastive": sum(info_nce(anchor, positive, self.temperature) for positive in positives)}
