"""DCLR: instance weighting against false negatives, and noise-based negatives.

Zhou, Zhang, Zhao & Wen, ACL 2022, "Debiased Contrastive Learning of Unsupervised Sentence
Representations" (reference code ``RUCAIBox/DCLR``, ``simcse/models.py::cl_vat_forward``). Unsupervised
SimCSE's dropout views (Sec. 4.1) with two changes to the negatives:

- Instance weighting (Sec. 4.3): a frozen complementary model (the paper: unsupervised SimCSE, fixed)
  scores every in-batch pair; a negative whose cosine similarity to the anchor exceeds ``phi`` is
  taken for a false negative and gets weight 0, every other candidate weight 1 (``weights =
  where(cos_sim_fix > phi * 20, 0, 1)`` in the reference, 20 = 1 / temperature; the anchor's own
  positive is reset to 1). phi = 0.9 for BERT-base, 0.85 for RoBERTa-base (``run.sh``).
- Noise-based negatives (Sec. 4.2): ``int(noise_times * batch)`` vectors drawn from N(0, 1) in the
  embedding space, then ``noise_steps`` = 4 steps of gradient *ascent* on the InfoNCE loss over
  [in-batch candidates; noise], each step adding ``noise_step_size`` (1e-3) times the row-normalised
  gradient, NaNs set to 0 (the reference's ``pgd`` loop). The refined noise is a constant to the
  encoder: it joins every anchor's denominator with weight 1. noise_times = 1 for BERT-base.

Loss: the paper's InfoNCE with the weighted in-batch negatives and the noise negatives in the
denominator, through :func:`csekit.losses.info_nce` (weights 0 drop a candidate). The reference code
differs there: it multiplies the *logits* by the 0/1 weights (a screened negative keeps an exp(0)
term) and takes a binary cross-entropy over the softmax outputs of all B + M columns; that is not
reproduced, the paper's equation is.

The complementary model (``complementary_model``): a path to a saved model (with its own tokenizer, if it
has one), or ``""`` (default) for a frozen copy of the starting model. It runs in eval mode, one
pass per sentence (the reference runs its fixed model with dropout on, two views). A raw pre-trained
model is anisotropic (most pairs above 0.9), so give a trained sentence encoder, as the paper does.

With several ranks the complementary embeddings are gathered so every gathered negative is screened,
as in the reference; each rank draws its own noise, refined against its own anchors.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from csekit.distributed import all_gather_with_grad, get_rank, get_world_size
from csekit.errors import CsekitError
from csekit.losses import cosine_similarity_matrix, info_nce
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.frozen import FrozenHelper


def false_negative_weights(complementary_anchors: Tensor, complementary_candidates: Tensor, phi: float, *,
                           offset: int = 0) -> Tensor:  # fmt: skip
    """(B, N) 0/1 weights: 0 where the complementary cosine exceeds ``phi``; the positives (column
    ``offset + i`` of row i) always 1. complementary_anchors (B, H'), complementary_candidates (N, H')."""
    similarities = cosine_similarity_matrix(complementary_anchors, complementary_candidates)  # (B, N)
    weights = (similarities <= phi).to(similarities.dtype)  # (B, N)
    rows = torch.arange(weights.shape[0], device=weights.device)
    weights[rows, offset + rows] = 1.0
    return weights


def noise_negatives(anchors: Tensor, candidates: Tensor, *, count: int, steps: int, step_size: float,
                    temperature: float, offset: int = 0) -> Tensor:  # fmt: skip
    """(count, H) Gaussian noise moved ``steps`` times up the InfoNCE loss of ``anchors`` (B, H) against
    [``candidates`` (N, H); noise], positives at columns ``offset + i``. No gradient reaches the inputs."""
    anchors, candidates = anchors.detach().float(), candidates.detach().float()
    noise = torch.randn(count, anchors.shape[1], device=anchors.device)  # (M, H) ~ N(0, 1)
    labels = torch.arange(anchors.shape[0], device=anchors.device) + offset  # (B,)
    # Float32 and a graph of its own: under bf16 autocast a 1e-3 step would round away.
    with torch.enable_grad(), torch.autocast(anchors.device.type, enabled=False):
        for _ in range(steps):
            noise.requires_grad_(True)
            logits = cosine_similarity_matrix(anchors, torch.cat([candidates, noise])) / temperature  # (B, N + M)
            (gradient,) = torch.autograd.grad(F.cross_entropy(logits, labels), noise)  # (M, H)
            noise = noise.detach() + step_size * gradient / gradient.norm(dim=-1, keepdim=True)
            noise = torch.nan_to_num(noise, nan=0.0)
    return noise.detach()


class DCLR(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    views: ClassVar[tuple[str, ...]] = ("sent0", "sent0")
    sentence_keys: ClassVar[tuple[str, ...]] = ("view1", "view2")

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05, phi: float = 0.9,
                 noise_times: float = 1.0, noise_steps: int = 4, noise_step_size: float = 1e-3,
                 complementary_model: str = ""):  # fmt: skip
        super().__init__()
        if noise_times < 0 or noise_steps < 0:
            raise CsekitError(f"dclr: noise_times and noise_steps must be >= 0, got {noise_times} and {noise_steps}")
        self.temperature = temperature
        self.phi = phi
        self.noise_times = noise_times
        self.noise_steps = noise_steps
        self.noise_step_size = noise_step_size
        self.complementary = FrozenHelper.encoder(encoder, complementary_model, role="complementary_model")

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        sentences = batch["sent0"]
        size = sentences["input_ids"].shape[0]
        twice = {key: torch.cat([value, value]) for key, value in sentences.items()}  # (2B, T)
        views = encoder(**twice)  # (2B, H): two dropout masks
        complementary = self.complementary.embed(batch, "sent0")  # (B, H'), no dropout
        return {"view1": views[:size], "view2": views[size:], "complementary": complementary}

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        anchors, positives = embeddings["view1"], embeddings["view2"]
        size, world_size = anchors.shape[0], get_world_size()
        offset = get_rank() * size
        complementary = all_gather_with_grad(embeddings["complementary"])  # (W * B, H'), rank order
        weights = false_negative_weights(embeddings["complementary"], complementary, self.phi, offset=offset)  # (B, W*B)
        noise = None
        count = int(self.noise_times * world_size * size)  # the reference: noise_times x the gathered batch
        if count:
            noise = noise_negatives(anchors, all_gather_with_grad(positives.detach()), count=count,
                                    steps=self.noise_steps, step_size=self.noise_step_size,
                                    temperature=self.temperature, offset=offset)  # fmt: skip
        return {"contrastive": info_nce(anchors, positives, self.temperature, weights=weights,
                                        shared_negatives=noise)}  # fmt: skip
