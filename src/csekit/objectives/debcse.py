"""DebCSE: inverse-propensity-weighted choice of positive and negative pairs.

Miao, Du & Zhang, CIKM 2023, "DebCSE: Rethinking Unsupervised Contrastive Sentence Embedding Learning
in the Debiasing Perspective" (arXiv 2309.07396). Its claim: the rules that build unsupervised pairs
bias the model. Dropout positives always share length and words with the anchor (sentence length
bias; the model learns "same surface, same meaning") and random in-batch negatives are surface-
dissimilar and sometimes paraphrases (false negatives). DebCSE selects positive and negative pairs by
inverse propensity weighting (IPW) over their *surface* and *semantic* similarity, so the chosen
pairs look like supervised training data: positives of varied surface form but the same meaning,
negatives that include surface-similar ones but no paraphrases.

No reference code is public, and the method section's formulas could not be consulted when this was
written; what follows is built from the paper's stated principle, and every concrete choice below
is ours (each an option where a number is involved):

- Surface similarity of two token sequences (special tokens and padding left out): the mean of their
  length ratio ``min(n, m) / max(n, m)`` and the Jaccard overlap of their token-id sets; in [0, 1].
- Semantic similarity: the cosine under a frozen ``semantic_model`` (a path of the same vocabulary, since it
  scores the augmented candidates' token ids;
  ``""``: a frozen copy of the starting model; a raw pre-trained model is anisotropic, so a trained
  sentence encoder is the sensible choice).
- Propensity: the share of pairs whose surface similarity falls in the same of ``num_bins`` equal
  bins of [0, 1], among the pairs the rule produced (positive candidates of the embedded batch;
  the batch's negative pairs). IPW divides by it, so every occupied surface bin carries equal mass.
- Positives: for each anchor, three candidates: the sentence itself (the dropout view), a
  word-repetition copy (ESimCSE's rule, ``dup_rate``) and a copy with each inner token deleted with
  probability ``delete_rate`` (one always kept). One is sampled with probability proportional to
  ``max(semantic, 0) / propensity``; anchor and chosen positive then go through the encoder once.
  Under the gradient cache the propensities are those of one chunk's candidates.
- Negatives: sampling a subset of the in-batch negatives with probability proportional to
  ``1 / propensity`` is replaced by its expectation, weights on every negative's exp term
  (self-normalised to mean 1, clipped at ``max_weight``), so the denominator keeps its scale; a
  negative whose semantic similarity exceeds ``phi`` is taken for a false negative: weight 0. Only
  this rank's candidates are weighted; other ranks' columns keep weight 1.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn.functional import cosine_similarity

from csekit.augment.repetition import repeat_tokens
from csekit.data.collate import concat_fields, pad_batch, pad_to
from csekit.errors import CsekitError
from csekit.losses import cosine_similarity_matrix, info_nce
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.frozen import FrozenHelper


def surface_similarity(ids_a: Tensor, ids_b: Tensor, *, ignore: list[int], vocab_size: int) -> Tensor:
    """(B, T), (N, T') token ids -> (B, N): mean of length ratio and token-set Jaccard (``ignore``d ids left out)."""
    def bag(ids: Tensor) -> tuple[Tensor, Tensor]:
        real = ~torch.isin(ids, torch.tensor(ignore, device=ids.device))  # (B, T)
        sets = torch.zeros(ids.shape[0], vocab_size, device=ids.device)  # (B, V)
        sets.scatter_add_(1, torch.where(real, ids, 0), real.float())  # counts; ignored ids add 0
        return sets.clamp_(max=1), real.sum(dim=1).float()  # (B, V) multi-hot, (B,) lengths

    sets_a, lengths_a = bag(ids_a)
    sets_b, lengths_b = bag(ids_b)
    overlap = sets_a @ sets_b.T  # (B, N) shared distinct ids
    union = sets_a.sum(1, keepdim=True) + sets_b.sum(1) - overlap  # (B, N)
    jaccard = overlap / union.clamp(min=1)
    ratio = torch.minimum(lengths_a[:, None], lengths_b) / torch.maximum(lengths_a[:, None], lengths_b).clamp(min=1)
    return (jaccard + ratio) / 2  # (B, N)


def inverse_propensity(surface: Tensor, counted: Tensor, num_bins: int) -> Tensor:
    """1 / (share of the ``counted`` pairs in each pair's surface bin), shape of ``surface``; inf where
    a bin holds no counted pair (never read for them)."""
    bins = (surface * num_bins).long().clamp(0, num_bins - 1)  # same shape as surface
    shares = torch.bincount(bins[counted], minlength=num_bins).float() / counted.sum().clamp(min=1)  # (num_bins,)
    return 1.0 / shares[bins]


def positive_probabilities(surface: Tensor, semantic: Tensor, num_bins: int) -> Tensor:
    """(B, K) candidate scores -> (B, K) sampling probabilities ``max(semantic, 0) / propensity``, row-normalised.
    A row with no positive semantic score falls back to its first candidate (the dropout view)."""
    scores = semantic.clamp(min=0) * inverse_propensity(surface, torch.ones_like(surface, dtype=torch.bool), num_bins)
    empty = scores.sum(dim=1) <= 0  # (B,)
    scores[empty, 0] = 1.0
    return scores / scores.sum(dim=1, keepdim=True)


def negative_weights(surface: Tensor, semantic: Tensor, *, num_bins: int, max_weight: float, phi: float,
                     offset: int = 0) -> Tensor:  # fmt: skip
    """(B, N) surface and semantic similarities of anchor i to candidate j -> (B, N) exp-term weights;
    the positives sit at column ``offset + i`` and keep weight 1."""
    rows = torch.arange(surface.shape[0], device=surface.device)
    negative = torch.ones_like(surface, dtype=torch.bool)  # (B, N)
    negative[rows, offset + rows] = False
    weights = inverse_propensity(surface, negative, num_bins)  # (B, N)
    weights = (weights / weights[negative].mean()).clamp(max=max_weight)
    weights = torch.where(semantic > phi, torch.zeros_like(weights), weights)  # likely false negatives
    return torch.where(negative, weights, torch.ones_like(weights))


def delete_tokens(tokens: dict[str, Tensor], *, rate: float, pad_token_id: int) -> dict[str, Tensor]:
    """Drop each inner token ([CLS]/[SEP] kept) with probability ``rate``, at least one kept; re-padded (B, T')."""
    rows = []
    for row, length in enumerate(tokens["attention_mask"].sum(dim=1).tolist()):
        keep = torch.ones(length, dtype=torch.bool)
        if length > 2:
            draws = torch.rand(length - 2)  # global CPU generator: seeded by the trainer, replayed by the cache
            keep[1:-1] = draws >= rate
            if not keep[1:-1].any():
                keep[1 + int(draws.argmax())] = True
        rows.append({key: value[row, :length][keep.to(value.device)].tolist() for key, value in tokens.items()})
    padded = pad_batch(rows, pad_token_id)  # (B, T')
    return {key: value.to(tokens["input_ids"].device) for key, value in padded.items()}


class DebCSE(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    views: ClassVar[tuple[str, ...]] = ("sent0", "sent0")
    sentence_keys: ClassVar[tuple[str, ...]] = ("anchors", "positives")

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05, phi: float = 0.9, num_bins: int = 10,
                 max_weight: float = 10.0, dup_rate: float = 0.32, delete_rate: float = 0.1,
                 semantic_model: str = ""):  # fmt: skip
        super().__init__()
        if num_bins < 1 or max_weight <= 0 or not 0 <= delete_rate < 1:
            raise CsekitError("debcse: num_bins must be >= 1, max_weight > 0 and delete_rate in [0, 1)")
        self.temperature, self.phi, self.num_bins, self.max_weight = temperature, phi, num_bins, max_weight
        self.dup_rate, self.delete_rate = dup_rate, delete_rate
        # It scores the augmented candidates' token ids, so it must read the student's vocabulary.
        self.semantic = FrozenHelper.encoder(encoder, semantic_model, role="semantic_model", columns=None)
        self.ignore = sorted(set(encoder.tokenizer.all_special_ids))
        self.vocab_size = len(encoder.tokenizer)

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        tokens = batch["sent0"]
        size, pad = tokens["input_ids"].shape[0], encoder.pad_token_id
        candidates = [tokens, repeat_tokens(tokens, dup_rate=self.dup_rate, pad_token_id=pad, max_length=encoder.max_length),
                      delete_tokens(tokens, rate=self.delete_rate, pad_token_id=pad)]  # fmt: skip
        semantic = self.semantic.embed_tokens(concat_fields(candidates, pad)).split(size)  # K x (B, H')
        scores = torch.stack([cosine_similarity(semantic[0], other, dim=-1) for other in semantic], dim=1)  # (B, K)
        surface = torch.stack([self._surface(tokens["input_ids"], c["input_ids"]).diagonal() for c in candidates], 1)
        choice = torch.multinomial(positive_probabilities(surface, scores, self.num_bins), 1).squeeze(1)  # (B,)
        stacked = concat_fields(candidates, pad)  # (K * B, T'): candidate k of row i at k * B + i
        chosen = {key: value[choice * size + torch.arange(size, device=choice.device)] for key, value in stacked.items()}
        views = encoder(**concat_fields([tokens, chosen], pad))  # (2B, H): anchors, chosen positives
        rows = torch.arange(size, device=choice.device)
        width = max(encoder.max_length, chosen["input_ids"].shape[1])  # fixed, so cache chunks concatenate
        return {"anchors": views[:size], "positives": views[size:], "semantic_anchors": semantic[0],
                "semantic_positives": torch.stack(semantic, dim=1)[rows, choice],  # (B, H')
                "anchor_ids": pad_to(tokens["input_ids"], width, pad), "positive_ids": pad_to(chosen["input_ids"], width, pad)}  # fmt: skip

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        surface = self._surface(embeddings["anchor_ids"], embeddings["positive_ids"])  # (B, B)
        semantic = cosine_similarity_matrix(embeddings["semantic_anchors"], embeddings["semantic_positives"])  # (B, B)
        weights = negative_weights(surface, semantic, num_bins=self.num_bins, max_weight=self.max_weight, phi=self.phi)
        return {"contrastive": info_nce(embeddings["anchors"], embeddings["positives"], self.temperature, weights=weights)}

    def _surface(self, ids_a: Tensor, ids_b: Tensor) -> Tensor:
        return surface_similarity(ids_a, ids_b, ignore=self.ignore, vocab_size=self.vocab_size)

