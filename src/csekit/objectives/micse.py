"""miCSE: SimCSE plus mutual information between the two dropout views' attention maps.

Klein & Nabi, ACL 2023, "miCSE: Mutual Information-based Contrastive Learning for Low-shot Sentence
Embeddings" (reference code ``SAP-samples/acl2023-micse``, ``model/models.py::cl_forward``, style
``miCSE``; hyper-parameters from its README commands).

The sentence loss is unsupervised SimCSE's (InfoNCE between two dropout views, temperature 0.05, the
``cls`` pooler's MLP in training only). The attention regulariser (Sec. 3) aligns the views'
attention: for every sentence, every head and each of two layer chains (layers ``min_layer ...
max_layer - 1``, 0-based, taken two by two with stride 2, the reference's einops pattern
``(h i) (j m) k t z -> (h k m) i (j t z)``), the attention probabilities of both views are flattened into
two vectors X, Y of ``(layers / 2) * T * T`` entries. Entries positive in both views are the sample space;
rows with fewer than ``samples`` (150) of them are dropped (when none has that many, every row is kept and
``samples`` shrinks to the smallest count). ``samples`` entries are drawn per row, uniformly without
replacement; their logarithms are taken as Gaussian (attention weights are about log-normal), and the
Gaussian mutual information of the pair, ``I = -1/2 log(1 - rho^2)`` with ``rho`` Pearson's correlation,
is averaged over rows. The term is ``-lambda * mean(I) * s``, ``s = (share of both-positive entries)^2``
(+1e-6), so maximising the views' shared information lowers the loss; ``L = alpha L_SimCSE + that``.
Equation numbers are not cited: the formulas are written out as the reference code computes them.

Departures: the reference replaces a NaN estimate by the constant 100; here ``rho^2`` is clamped below 1
(``1 - 1e-6``), a finite value with a gradient. The reference enumerates views interleaved (sentence,
view) and so does this file's reshape. Under DDP the attention term is per process (the reference
computes it before nothing is gathered: attention maps never leave their rank); the InfoNCE gathers.
The attention maps need the eager attention implementation; the backbone is switched to it.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from csekit.errors import CsekitError
from csekit.losses import info_nce
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext

#: 1 - rho^2 never goes below this (rho = +-1 would make the information infinite).
MIN_UNEXPLAINED = 1e-6


def attention_chains(attentions: Tensor) -> Tensor:
    """(B, L, heads, T, T) attention of L layers -> (B * heads * 2, (L / 2) * T * T): for each sentence, head
    and layer parity m, the layers m, m + 2, ... flattened (the reference's einops pattern)."""
    size, layers, heads, length, _ = attentions.shape
    chains = attentions.reshape(size, layers // 2, 2, heads, length * length)  # [b, j, m, k, tz]
    return chains.permute(0, 3, 2, 1, 4).reshape(size * heads * 2, -1)  # rows (b, k, m), columns (j, t, z)


def attention_mutual_information(first: Tensor, second: Tensor, *, samples: int = 150,
                                 generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """miCSE's attention term before its weight: -mean Gaussian MI of log-attention samples * s.

    first, second: (N, D) attention probabilities of the two views, row for row (:func:`attention_chains`).
    """
    both = (first > 0) & (second > 0)  # (N, D): where both logarithms exist
    counts = both.sum(dim=1)  # (N,)
    enough = counts >= samples
    if enough.any():  # keep the rows with enough entries
        first, second, both = first[enough], second[enough], both[enough]
    else:  # none has: keep all, draw fewer
        samples = int(counts.min())
    if samples < 2:  # no correlation to estimate
        return first.sum() * 0.0
    picked = torch.multinomial(both.double(), samples, generator=generator).sort(dim=1).values  # (N', samples)
    x = first.gather(1, picked).log()  # (N', samples), in column order as the reference's boolean mask takes them
    y = second.gather(1, picked).log()
    x, y = x - x.mean(dim=1, keepdim=True), y - y.mean(dim=1, keepdim=True)
    rho = torch.nn.functional.cosine_similarity(x, y, dim=1, eps=1e-6)  # (N',) Pearson's correlation
    information = -0.5 * torch.log((1.0 - rho**2).clamp_min(MIN_UNEXPLAINED))  # (N',)
    share = both.sum() / both.numel()
    return -information.mean() * (share.to(information.dtype) ** 2 + 1e-6)


class MiCSE(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    views: ClassVar[tuple[str, ...]] = ("sent0", "sent0")
    sentence_keys: ClassVar[tuple[str, ...]] = ("view1", "view2")

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05,
                 weight: float = 0.0005, contrastive_weight: float = 1.0, min_layer: int = 7, max_layer: int = 11,
                 samples: int = 150):  # fmt: skip
        super().__init__()
        low, high = min(min_layer, max_layer), max(min_layer, max_layer)
        layers = encoder.num_layers
        if low < 0 or high > layers or (high - low) % 2 or high == low:
            raise CsekitError(f"micse: layers {low}..{high - 1} must lie in the model's 0..{layers - 1} and be an "
                              f"even, nonzero number of layers (min_layer, max_layer)")  # fmt: skip
        if samples < 2:
            raise CsekitError(f"micse: samples must be at least 2, got {samples}")
        self.temperature, self.weight, self.contrastive_weight = temperature, weight, contrastive_weight
        self.layers, self.samples = slice(low, high), samples
        if getattr(encoder.backbone.config, "_attn_implementation", "eager") != "eager":
            try:
                encoder.backbone.set_attn_implementation("eager")
            except (AttributeError, ValueError) as error:
                raise CsekitError(f"micse needs attention weights, which this model cannot return: {error}") from None

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        sentences = batch["sent0"]
        size = sentences["input_ids"].shape[0]
        twice = {key: torch.cat([value, value]) for key, value in sentences.items()}  # (2B, T)
        outputs = encoder.backbone(**twice, output_attentions=True, return_dict=True,
                                   output_hidden_states=encoder.pooler.needs_hidden_states)  # fmt: skip
        views = encoder.pool(outputs, twice)  # (2B, H): the same sentence under two dropout masks
        attentions = torch.stack(outputs.attentions[self.layers], dim=1)  # (2B, L, heads, T, T)
        return {"view1": views[:size], "view2": views[size:],
                "attention1": attentions[:size], "attention2": attentions[size:]}  # fmt: skip

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        contrastive = info_nce(embeddings["view1"], embeddings["view2"], self.temperature)
        information = attention_mutual_information(attention_chains(embeddings["attention1"]),
                                                   attention_chains(embeddings["attention2"]), samples=self.samples)  # fmt: skip
        return {"contrastive": self.contrastive_weight * contrastive, "attention_mi": self.weight * information}
