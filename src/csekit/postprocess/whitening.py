"""BERT-whitening: an affine map after pooling that makes the embeddings' covariance the identity.

Su et al., "Whitening Sentence Representations for Better Semantics and Faster Retrieval",
arXiv:2103.15316, Algorithm 1 (reference code: github.com/bojone/BERT-whitening,
``compute_kernel_bias`` in ``eng/utils.py``). From the embeddings x_i of a fitting set:

    mu = mean_i x_i,   Sigma = cov(x),   U, S, U^T = SVD(Sigma),   W = U sqrt(S^-1)
    x~ = (x - mu) W[:, :k]                                 (k < H keeps the k largest directions)

Sigma is ``np.cov`` (divides by N - 1), as in the reference; the paper writes 1/N, which scales W by a
constant and changes no cosine. One deviation: directions of zero variance are left out. A LayerNorm
output satisfies sum_i (y_i - beta_i) / gamma_i = 0, so mean-pooled states of one layer lie in a
hyperplane and Sigma has an eigenvalue that is float rounding (~1e-16 of the largest, for bert-mini);
the reference would scale that pure-noise direction up to unit variance. Without ``dim``, every
direction above 1e-10 of the largest variance is kept; a ``dim`` that reaches a null direction is an error. The map is a ``Linear`` layer with weight W^T and bias -mu W, applied after
the pooler (and head), before any normalisation, so a saved model is a stock sentence-transformers
``Dense`` (identity activation) that ``SentenceTransformer(path)`` reproduces.

Fitting data: unlabelled sentences only (a .txt file, one sentence a line). The reference's headline
numbers fit on the STS test sentences themselves ("target") or on NLI sentences; WhiteningBERT fits on
each test set too. csekit fits on whatever unlabelled file it is given, and evaluation sets must not be
that file.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from csekit.data.readers import read_examples
from csekit.errors import CsekitError
from csekit.models.modules import AffineMap

if TYPE_CHECKING:
    from csekit.models.encoder import SentenceEncoder

#: Directions whose variance is below this fraction of the largest are noise: whitening would blow them up.
RELATIVE_VARIANCE_FLOOR = 1e-10


def fit_whitening(embeddings: np.ndarray, *, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(N, H) embeddings -> (mu (H,), kernel W (H, k)), float64.

    ``dim`` = k defaults to every direction with non-zero variance: H, or H - 1 for poolers that average
    LayerNorm outputs of one layer.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise CsekitError("whitening needs a non-empty (sentences, dimensions) table of embeddings")
    n, hidden = x.shape
    k = hidden if dim is None else int(dim)
    if not 1 <= k <= hidden:
        raise CsekitError(f"whitening dimension {k} is outside 1..{hidden}, the embedding dimension")
    if n <= k:
        # The centred embeddings span at most N - 1 directions: the rest have zero variance.
        raise CsekitError(f"whitening to {k} dimensions needs more than {k} sentences, got {n}; "
                          "fit on more sentences or choose a smaller dimension")  # fmt: skip
    mu = x.mean(axis=0)  # (H,)
    covariance = np.cov(x, rowvar=False)  # (H, H)
    u, s, _ = np.linalg.svd(covariance)  # u (H, H), s (H,) descending
    if dim is None:  # all directions that vary at all (see the module docstring on null directions)
        k = int((s > s[0] * RELATIVE_VARIANCE_FLOOR).sum())
    if s[k - 1] <= s[0] * RELATIVE_VARIANCE_FLOOR:
        kept = int((s > s[0] * RELATIVE_VARIANCE_FLOOR).sum())
        raise CsekitError(f"the fitting embeddings vary in only {kept} of {hidden} directions, too few to whiten "
                          f"to {k}; fit on more varied sentences or choose a dimension of at most {kept}")  # fmt: skip
    kernel = u[:, :k] / np.sqrt(s[:k])  # (H, k): U sqrt(S^-1), first k columns
    return mu, kernel


def whitening_layer(mu: np.ndarray, kernel: np.ndarray) -> AffineMap:
    """The affine map (x - mu) W: weight W^T (k, H), bias -mu W (k,); frozen (a statistic, not trained)."""
    hidden, k = kernel.shape
    layer = AffineMap(hidden, k)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(kernel.T.copy()))
        layer.bias.copy_(torch.from_numpy(-(mu @ kernel)))
    return layer


def read_fit_sentences(path: str | os.PathLike, *, max_sentences: int | None = None) -> list[str]:
    """The first ``max_sentences`` non-blank sentences of an unlabelled file (a .txt: one a line)."""
    if max_sentences is not None and max_sentences < 1:
        raise CsekitError(f"max sentences must be at least 1, not {max_sentences}")
    examples = read_examples(path, columns=("sent0",))
    sentences = [example["sent0"] for example in itertools.islice(examples, max_sentences)]
    if not sentences:
        raise CsekitError(f"{path}: no sentences to fit on (the file is empty or blank)")
    return sentences


def whiten(
    encoder: SentenceEncoder, sentences: list[str], *, dim: int | None = None, batch_size: int = 64
) -> SentenceEncoder:
    """Fit whitening on ``encoder``'s embeddings of ``sentences`` and append it to the encoder.

    A whitening the encoder already has is replaced: the new one is fitted on the pooled embeddings
    before it, so whitening twice is whitening once.
    """
    others = [module for module in encoder.outputs if not isinstance(module, AffineMap)]
    encoder.set_outputs(others)
    if dim is not None and not 1 <= dim <= encoder.embedding_dim:
        raise CsekitError(f"whitening dimension {dim} is outside 1..{encoder.embedding_dim}, this model's embedding dimension")
    embeddings = encoder.encode(sentences, batch_size=batch_size, normalize=False)  # (N, H)
    mu, kernel = fit_whitening(embeddings, dim=dim)
    encoder.set_outputs([*others, whitening_layer(mu, kernel)])
    return encoder
