"""Model2Vec distillation (Tulkens & van Dongen 2024, https://github.com/MinishLab/model2vec): a static table
from a sentence encoder without any corpus, one forward pass per vocabulary token.

Following ``model2vec/distill/distillation.py::distill_from_model`` and ``distill/inference.py`` (0.10):

1. every vocabulary token but ``[unused\\d+]`` and the special tokens other than pad/unknown
   (:func:`~csekit.static.vocabulary.model2vec_ids`) goes through the teacher's backbone alone, wrapped in
   the tokenizer's special tokens (``[CLS] token [SEP]``: ``tokenizer.turn_tokens_into_ids``);
2. its vector is the mean of the last layer over all those positions, specials included
   (``_encode_mean_with_model``);
3. PCA (``_pca_fit_transform``): centre, eigenvectors of the covariance (divided by n - 1) in decreasing
   order of variance, the first ``dim`` kept, each sign chosen so that its largest score is positive;
4. SIF weights from Zipf's law over the rank r = 0, 1, ... of a token in id order
   (``compute_weights``): ``p_r = (1 / (r + 2)) / sum_k 1 / (k + 2)``, ``w_r = a / (a + p_r)``, a = 1e-4,
   multiplied into the PCA'd rows (the weights fold into the table, as model2vec does without
   vocabulary quantisation);
5. sentences are the normalised mean of their tokens' rows (``StaticModel.encode``, ``normalize=True``).

Departure: the table keeps the teacher's ids, so the tokens model2vec removes stay as zero rows instead
of being renumbered away; no text tokenizes to them, so every embedding is the same. The table stays
float32 (model2vec's ``distill`` rounds to float16 by default; sentence-transformers' own
``StaticEmbedding.from_distillation`` keeps float32).
"""

from __future__ import annotations

import numpy as np
import torch

from csekit.models import SentenceEncoder
from csekit.models.static import StaticEncoder
from csekit.static.vocabulary import model2vec_ids, static_tokenizer, vocabulary_tokens

SIF_COEFFICIENT = 1e-4  # model2vec's default, a in the SIF weight a / (a + p)


def special_wrapping(teacher: SentenceEncoder) -> tuple[list[int], list[int]]:
    """The ids the teacher's tokenizer puts before and after a text (``[CLS]`` and ``[SEP]`` for BERT)."""
    unk = teacher.tokenizer.unk_token_id
    wrapped = teacher.tokenizer(teacher.tokenizer.unk_token, add_special_tokens=True)["input_ids"]
    where = wrapped.index(unk)
    return wrapped[:where], wrapped[where + 1 :]


@torch.inference_mode()
def wrapped_token_states(teacher: SentenceEncoder, token_ids: np.ndarray, *, batch_size: int = 256) -> torch.Tensor:
    """(K,) token ids -> (K, T, H) float32 last-layer states of ``[prefix] token [suffix]``, each token alone."""
    prefix, suffix = special_wrapping(teacher)
    backbone, states = teacher.backbone.eval(), []
    inputs = torch.tensor([[*prefix, int(token), *suffix] for token in token_ids], dtype=torch.long)  # (K, T)
    for start in range(0, len(inputs), batch_size):
        input_ids = inputs[start : start + batch_size].to(teacher.device)  # every row is as long: no padding
        output = backbone(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                          token_type_ids=torch.zeros_like(input_ids))  # fmt: skip
        states.append(output.last_hidden_state.float().cpu())  # (B, T, H)
    return torch.cat(states)


def token_vectors(teacher: SentenceEncoder, token_ids: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """(K,) token ids -> (K, H) float32: the mean over all positions of ``[prefix] token [suffix]``."""
    return wrapped_token_states(teacher, token_ids, batch_size=batch_size).mean(dim=1).numpy()


def pca(vectors: np.ndarray, dim: int | None) -> np.ndarray:
    """model2vec's PCA of (K, H) rows to (K, dim); ``dim`` None leaves them as they are, a ``dim`` of at
    least H rotates without reducing, and one of at least K rows leaves them (as model2vec warns and does)."""
    if dim is None:
        return vectors
    dim = min(dim, vectors.shape[1])
    if dim >= len(vectors):
        return vectors
    centred = vectors - vectors.mean(axis=0)
    covariance = centred.T @ centred / (len(vectors) - 1)  # (H, H)
    _, eigenvectors = np.linalg.eigh(covariance)  # ascending
    components = eigenvectors[:, ::-1][:, :dim].T  # (dim, H), largest variance first
    scores = centred @ components.T  # (K, dim)
    signs = np.sign(scores[np.abs(scores).argmax(axis=0), np.arange(dim)])
    return scores * signs


def sif_weights(count: int, sif_coefficient: float = SIF_COEFFICIENT) -> np.ndarray:
    """(count,) ``a / (a + p_r)`` with Zipf's ``p_r`` proportional to 1 / (r + 2), r the rank from 0."""
    inverse_rank = 1 / np.arange(2, count + 2)
    probability = inverse_rank / inverse_rank.sum()
    return sif_coefficient / (sif_coefficient + probability)


def distill_model2vec(teacher: SentenceEncoder, *, dim: int | None = 256, sif_coefficient: float | None = SIF_COEFFICIENT,
                      batch_size: int = 256) -> StaticEncoder:  # fmt: skip
    """The model2vec table of ``teacher`` (weights folded in), as a normalising :class:`StaticEncoder`."""
    ids = model2vec_ids(teacher.tokenizer)
    rows = pca(token_vectors(teacher, ids, batch_size=batch_size), dim)  # (K, dim)
    if sif_coefficient is not None:
        rows = rows * sif_weights(len(ids), sif_coefficient)[:, None]
    table = np.zeros((len(vocabulary_tokens(teacher.tokenizer)), rows.shape[1]), dtype=np.float32)
    table[ids] = rows
    provenance = {"method": "model2vec", "dim": dim, "sif_coefficient": sif_coefficient, "tokens": len(ids)}
    return StaticEncoder(static_tokenizer(teacher.tokenizer), torch.from_numpy(table), provenance=provenance)
