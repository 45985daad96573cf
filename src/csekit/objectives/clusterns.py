"""ClusterNS (Deng, Wan, Yang, Quan & Wang, Findings of ACL 2023, "Clustering-Aware Negative Sampling for
Unsupervised Sentence Representation").

Unsupervised SimCSE (two dropout views, InfoNCE at temperature 0.05) with a k-means clustering of the
sentence embeddings that runs along with training (Sec. 3.2) and serves two ends:

- hard negatives (Sec. 3.3): each anchor's second-nearest centroid (the nearest is its own cluster's) joins the
  candidates, every anchor meeting all anchors' centroids, as SimCSE's supervised hard negatives;
- false negatives (Sec. 3.4): in-batch negatives in the anchor's own cluster stay in the InfoNCE denominator and
  are held by the bidirectional margin loss (:func:`csekit.losses.bidirectional_margin`),
  ``-beta <= cos(h_i, h_j+) - cos(h_i, h_i+) <= -alpha``, weighted by ``bml_weight``: the total is
  ``InfoNCE + bml_weight * BML``.

The clustering, as the reference code (``simcse/models.py``: ``cl_forward``, ``kmeans_cluster``) runs it:

- it starts once the mean cosine similarity of the batch's two views (all B x B pairs) has fallen to
  ``start_cosine`` (0.4); before that the loss is SimCSE's. The ``clusters`` (k = 128) centroids are then drawn
  from that batch's first views by a chain: a random first one, then each next the anchor least similar (to the
  second views) to the last one chosen, never one chosen before (``optimized_centroid_init``);
- from the next batch on, every batch updates the centroids before its loss uses them: each first view goes to
  its most cosine-similar centroid; a centroid with members moves to ``lr * sum(members) + (1 - lr) * centroid``
  (``kmeans_optim=momentum``, ``lr = centroid_lr = 1e-3``; the sum, not the mean, as the reference's), one
  without members stays. ``centroid_update: kmeans`` replaces a centroid by its members' sum instead. The
  clusters of the loss are the nearest centroids after the update; embeddings enter the update without gradient.

Purity and state: ``loss`` computes this batch's updated centroids without storing them; ``after_micro_batch``
computes the same update from the same embeddings and stores it (or starts the clustering), so the loss stays a
pure function and the gradient cache sees what the plain step sees. The centroids and whether they started are
persistent buffers: checkpoints restore them. Under ``torchrun`` the first views of all ranks are gathered for
the update (and the start test), so every rank holds the same centroids and W ranks x B examples train like one
process with W x B; the first centroid is drawn from a generator seeded when the objective is built (the run's
seed, the same on every rank).

Where this departs from the reference code: its ``adamw`` centroid update (an option it does not use) is left
out, and so is its ``hard_negative_weight`` (0 in its scripts). Under DDP the reference computes the whole loss
on every rank from embeddings gathered without gradient; here each rank's anchors meet all ranks' candidates
with gradient (:func:`csekit.distributed.all_gather_with_grad`), which trains like one process.
"""

from __future__ import annotations

import sys
from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from csekit.distributed import all_gather_with_grad, get_rank
from csekit.errors import CsekitError
from csekit.losses import bidirectional_margin, cosine_similarity_matrix, info_nce
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, RunContext
from csekit.objectives.simcse import UnsupervisedSimCSE

#: How a centroid follows its members: a momentum step toward their sum, or their sum itself.
CENTROID_UPDATES = ("momentum", "kmeans")


def chain_init(points: Tensor, similarities: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """(count, H) centroids picked from (N, H) ``points``: a random first, then each next the point whose column of
    ``similarities`` (N, N) is lowest in the last one's row, columns already chosen left out."""
    similarities = similarities.clone()
    index = int(torch.randint(points.shape[0], (1,), generator=generator))
    chosen = [index]
    for _ in range(count - 1):
        similarities[:, index] = float("inf")  # chosen: never the minimum again
        index = int(similarities[index].argmin())
        chosen.append(index)
    return points[chosen].clone()


def nearest(points: Tensor, centroids: Tensor, rank: int = 1) -> Tensor:
    """(N,) the index of each point's ``rank``-th most cosine-similar centroid (1: its own cluster)."""
    return cosine_similarity_matrix(points, centroids).topk(rank, dim=-1).indices[:, rank - 1]


def update_centroids(centroids: Tensor, points: Tensor, *, rate: float, rule: str) -> Tensor:
    """(K, H) the centroids after one batch of (N, H) points: each point joins its nearest centroid; a centroid
    with members moves to ``rate * sum + (1 - rate) * centroid`` (``momentum``) or to the sum (``kmeans``), one
    without members stays."""
    members = F.one_hot(nearest(points, centroids), centroids.shape[0]).T.to(points.dtype)  # (K, N)
    sums = members @ points  # (K, H)
    empty = members.sum(dim=1, keepdim=True) == 0  # (K, 1)
    target = torch.where(empty, centroids, sums)
    return target if rule == "kmeans" else rate * target + (1 - rate) * centroids


class ClusterNS(UnsupervisedSimCSE):
    truncatable: ClassVar[bool] = False  # the centroids are full-width embeddings of earlier batches

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05,
                 clusters: int = 128, start_cosine: float = 0.4, centroid_lr: float = 1e-3,
                 centroid_update: str = "momentum", bml_weight: float = 1e-4, bml_alpha: float = 0.2,
                 bml_beta: float = 0.5):  # fmt: skip
        super().__init__(encoder, context, temperature=temperature)
        contrastive_batch = context.batch_size * context.world_size
        if not 2 <= clusters <= contrastive_batch:
            raise CsekitError(f"clusterns: clusters must be between 2 and the contrastive batch "
                              f"({context.batch_size} x {context.world_size} processes), got {clusters}")  # fmt: skip
        if centroid_update not in CENTROID_UPDATES:
            raise CsekitError(f"clusterns: centroid_update must be one of {', '.join(CENTROID_UPDATES)}, "
                              f"got {centroid_update!r}")  # fmt: skip
        if not 0.0 < centroid_lr <= 1.0:
            raise CsekitError(f"clusterns: centroid_lr must be in (0, 1], got {centroid_lr}")
        self.start_cosine, self.centroid_lr, self.centroid_update = start_cosine, centroid_lr, centroid_update
        self.bml_weight, self.bml_alpha, self.bml_beta = bml_weight, bml_alpha, bml_beta
        device = next(encoder.parameters()).device
        self.register_buffer("centroids", torch.zeros(clusters, encoder.embedding_dim, device=device))  # (K, H)
        self.register_buffer("started", torch.zeros((), dtype=torch.long, device=device))
        self._generator = torch.Generator().manual_seed(torch.initial_seed())  # the run's seed on every rank

    def updated_centroids(self, everyone: Tensor) -> Tensor:
        """(K, H) the centroids after the batch's (W * B, H) first views (graph-free)."""
        return update_centroids(self.centroids, everyone.detach().float(), rate=self.centroid_lr,
                                rule=self.centroid_update)  # fmt: skip

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        anchors, positives = embeddings["view1"], embeddings["view2"]  # (B, H) each
        if not self.started:
            return {"contrastive": info_nce(anchors, positives, self.temperature), "bml": anchors.new_zeros(())}
        size = anchors.shape[0]
        everyone = all_gather_with_grad(anchors.detach())  # (W * B, H) first views of all ranks, rank order
        centroids = self.updated_centroids(everyone)  # (K, H)
        hard_negatives = centroids[nearest(anchors.detach().float(), centroids, rank=2)].to(anchors.dtype)  # (B, H)
        contrastive = info_nce(anchors, torch.cat([positives, hard_negatives]), self.temperature)
        # False negatives: candidates of the anchor's own cluster, its own positive excepted. (B, W * B)
        clusters = nearest(everyone.float(), centroids)  # (W * B,)
        own = torch.arange(size, device=anchors.device) + get_rank() * size  # (B,) each anchor's column
        same_cluster = clusters[own][:, None] == clusters[None, :]  # (B, W * B)
        same_cluster[torch.arange(size), own] = False
        similarities = cosine_similarity_matrix(anchors, all_gather_with_grad(positives))  # (B, W * B)
        margin = bidirectional_margin(similarities, similarities[torch.arange(size), own], same_cluster,
                                      alpha=self.bml_alpha, beta=self.bml_beta)  # fmt: skip
        return {"contrastive": contrastive, "bml": self.bml_weight * margin}

    @torch.no_grad()
    def after_micro_batch(self, embeddings: Embeddings) -> None:
        if not self.training:
            return
        everyone = all_gather_with_grad(embeddings["view1"]).float()  # (W * B, H)
        if self.started:
            self.centroids.copy_(self.updated_centroids(everyone))
            return
        similarities = cosine_similarity_matrix(everyone, all_gather_with_grad(embeddings["view2"]).float())
        if len(everyone) >= len(self.centroids) and similarities.mean() <= self.start_cosine:  # (W * B, W * B)
            self.centroids.copy_(chain_init(everyone, similarities, len(self.centroids), self._generator))
            self.started.fill_(1)
            if get_rank() == 0:  # the reference prints it too: when it starts says how the run went
                print(f"clusterns: clustering started, mean cosine {similarities.mean():.3f}", file=sys.stderr)
