"""SG-BERT: self-guided contrastive learning against a frozen copy's own layers.

Kim, Yoo & Lee, ACL 2021, "Self-Guided Contrastive Learning for BERT Sentence Representations"
(reference code ``galsang/SG-BERT``, ``loss.py::Loss`` and ``NTXentLoss``, ``training.py``).

Two copies of the starting model: BERT_F stays frozen (a :class:`FrozenHelper`: eval mode, no gradient,
not saved), BERT_T is trained and gives the sentence embedding, its last layer's [CLS] ``c_i``. For each
sentence, BERT_F's hidden states of every layer k (the embedding output included: the reference's
``lmin=0``, ``lmax=-1``), pooled over tokens, are the guidance ``h_{i,k}`` (Sec. 3). Both go
through one projection head f (Linear-GELU-Linear-GELU, 4096 wide, trained and discarded) and meet in
the redesigned NT-Xent, SG-OPT (the paper's learning-objective optimisation; ``NTXentLoss``): each (c_i, h_{i,k}) is a positive,
and its negatives are every other sentence's guidance of every layer,

    L_base = -1/(B K) sum_i sum_k log  phi(c_i, h_ik) / (phi(c_i, h_ik) + sum_{m != i} sum_n phi(c_i, h_mn)),

``phi(u, v) = exp(cos(f(u), f(v)) / tau)``, tau = 0.01: no [CLS]-[CLS] or guidance-guidance pairs
(the redesign drops them: BERT_F's outputs carry no gradient), all layers at once instead of one sampled
layer. The regulariser keeps BERT_T near where it started (Sec. 3, L_reg):
``L_reg = ||theta_T - theta_0||^2`` (squared L2 over every backbone parameter; theta_0 is BERT_F), and
``L = L_base + lambda L_reg``, lambda = 0.1. The reference also freezes BERT_T's embedding layer
(``--freeze``, default on): ``freeze_embeddings``.

Equation numbers are not cited: the formulas above are written out as the reference code computes them.

Departures: the pooling over tokens is ``max``, as the paper describes it; the reference script's
default ``--pooling2`` is ``mean`` (``layer_pooling: mean``). Negatives are this process's batch: the
reference trains on one GPU, and SG-OPT's negatives come from a frozen model (nothing is gathered).
``L_reg`` enters ``embed`` as a row-wise column (every row holds the same squared distance, the loss
takes its mean), so the gradient cache splits it over chunks exactly.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from csekit.errors import CsekitError
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.frozen import FrozenHelper

LAYER_POOLINGS = ("max", "mean")


def self_guided_nt_xent(sentences: Tensor, guidance: Tensor, temperature: float) -> Tensor:
    """SG-OPT's loss: sentences (B, P), guidance (B, K, P) -> scalar, mean over the B * K positives."""
    size, layers, width = guidance.shape
    logits = F.normalize(sentences, dim=-1) @ F.normalize(guidance.reshape(-1, width), dim=-1).T  # (B, B * K)
    logits = logits.reshape(size, size, layers) / temperature  # [i, m, n]: c_i against h_{m, n}
    positives = logits.diagonal(dim1=0, dim2=1).T  # (B, K): [i, k] = c_i against h_{i, k}
    own = torch.eye(size, dtype=torch.bool, device=logits.device)[:, :, None].expand_as(logits)
    negatives = logits.masked_fill(own, float("-inf")).reshape(size, -1).logsumexp(dim=1)  # (B,)
    return (torch.logaddexp(positives, negatives[:, None]) - positives).mean()


def pool_tokens(hidden: Tensor, attention_mask: Tensor, how: str) -> Tensor:
    """(B, K, T, H) hidden states of K layers -> (B, K, H), over the sentence's real tokens."""
    mask = attention_mask[:, None, :, None].to(hidden.dtype)  # (B, 1, T, 1)
    if how == "max":
        return hidden.masked_fill(mask == 0, -1e9).amax(dim=2)
    return (hidden * mask).sum(dim=2) / mask.sum(dim=2)


class SGBERT(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    views: ClassVar[tuple[str, ...]] = ("sent0",)
    sentence_keys: ClassVar[tuple[str, ...]] = ("sentence",)
    truncatable: ClassVar[bool] = False  # the projection head reads the full width

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.01,
                 regularization: float = 0.1, layer_pooling: str = "max", projection_dim: int = 4096,
                 freeze_embeddings: bool = True):  # fmt: skip
        super().__init__()
        if layer_pooling not in LAYER_POOLINGS:
            raise CsekitError(f"sgbert: layer_pooling must be one of {', '.join(LAYER_POOLINGS)}, not {layer_pooling!r}")
        if projection_dim < 1:
            raise CsekitError(f"sgbert: projection_dim must be at least 1, got {projection_dim}")
        self.temperature, self.regularization, self.layer_pooling = temperature, regularization, layer_pooling
        self.guide = FrozenHelper.encoder(encoder, role="sgbert's frozen copy", columns=None)  # BERT_F = theta_0
        if freeze_embeddings:
            encoder.backbone.get_input_embeddings().requires_grad_(False)
            embeddings = getattr(encoder.backbone, "embeddings", None)  # BERT's word, position, type, LayerNorm
            if embeddings is not None:
                embeddings.requires_grad_(False)
        hidden = encoder.backbone.config.hidden_size
        std = getattr(encoder.backbone.config, "initializer_range", 0.02)
        self.projection = nn.Sequential(nn.Linear(hidden, projection_dim), nn.GELU(),
                                        nn.Linear(projection_dim, projection_dim), nn.GELU())  # fmt: skip
        for layer in (self.projection[0], self.projection[2]):  # as the reference initialises its head
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        tokens = batch["sent0"]
        sentence = encoder(**tokens)  # (B, H): BERT_T's [CLS], dropout on
        with torch.no_grad():
            outputs = self.guide.module.backbone(**tokens, output_hidden_states=True, return_dict=True)
            hidden = torch.stack(outputs.hidden_states, dim=1)  # (B, K = layers + 1, T, H)
            guidance = pool_tokens(hidden, tokens["attention_mask"], self.layer_pooling)  # (B, K, H)
        size = sentence.shape[0]
        return {"sentence": sentence, "projected": self.projection(sentence),  # (B, P)
                "guidance": self.projection(guidance),  # (B, K, P): the head is trained through both
                "drift": self.drift(encoder).expand(size)}  # (B,): every row the same squared distance  # fmt: skip

    def drift(self, encoder: SentenceEncoder) -> Tensor:
        """||theta_T - theta_0||^2 over the backbone's parameters (L_reg)."""
        start = dict(self.guide.module.backbone.named_parameters())
        return sum(((parameter - start[name]) ** 2).sum() for name, parameter in encoder.backbone.named_parameters())

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        contrastive = self_guided_nt_xent(embeddings["projected"], embeddings["guidance"], self.temperature)
        return {"contrastive": contrastive, "regularization": self.regularization * embeddings["drift"].mean()}
