"""Run a csekit encoder under MTEB (Muennighoff et al. 2023, "MTEB: Massive Text Embedding Benchmark").

MTEB 2.x asks a model for its ``EncoderProtocol`` (``mteb/models/models_protocols.py``):

- ``encode(inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs) -> array`` with
  ``inputs`` a ``DataLoader`` of batches ``{"text": [...]}``, returning (N, H) in input order;
- ``similarity(a, b)`` (N, M) and ``similarity_pairwise(a, b)`` (N,), which MTEB prefers over its
  own cosine when a model has them (``compute_pairwise_similarity``);
- ``mteb_model_meta``: a ``ModelMeta`` naming the model in MTEB's results.

MTEB 1.x passed the sentences themselves (``encode(sentences, *, task_name, prompt_type, **kwargs)``);
a plain list of strings is accepted too. Every text is encoded in one call, so csekit sorts the whole
set by length once (as its own evaluators do) rather than padding MTEB's batches separately.
Similarities are SentEval's cosine in float64 (:func:`csekit.evaluation.sts.cosine_rows`), so an
STS score from MTEB's ``spearman`` is the number ``csekit eval`` prints for the same pairs.

``mteb`` is optional (``pip install csekit[mteb]``): it is imported only to build the model meta.

    import mteb
    from csekit.evaluation.mteb_adapter import MTEBEncoder
    mteb.evaluate(MTEBEncoder("runs/simcse/best"), mteb.get_tasks(tasks=["STSBenchmark"]))
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np

from csekit.errors import CsekitError
from csekit.evaluation.alignment_uniformity import normalize_rows
from csekit.evaluation.sts import cosine_rows


class MTEBEncoder:
    """A :class:`~csekit.SentenceEncoder` (or the path of a saved one) as an MTEB encoder."""

    def __init__(
        self,
        model: Any,
        revision: str | None = None,
        *,
        device: str | None = None,
        batch_size: int = 128,
        pooler: str | None = None,
        name: str | None = None,
    ):
        if isinstance(model, str | os.PathLike):
            from csekit.models import load_encoder

            name = name or f"csekit/{os.path.basename(os.path.normpath(str(model)))}"
            model = load_encoder(str(model), pooler=pooler)
        if device is not None:
            model = model.to(device)
        self.model = model
        self.batch_size = batch_size
        self.name = name or "csekit/encoder"
        self.revision = revision

    @property
    def mteb_model_meta(self):
        from mteb.models.model_meta import ModelMeta

        return ModelMeta.create_empty({
            "name": self.name, "revision": self.revision or "local", "embed_dim": self.model.embedding_dim,
            "max_tokens": self.model.max_length, "similarity_fn_name": "cosine", "framework": ["PyTorch"],
        })  # fmt: skip

    def encode(self, inputs: Any, *, batch_size: int | None = None, **kwargs: Any) -> np.ndarray:
        """(N, H) float32 embeddings of the texts of ``inputs`` (MTEB's DataLoader, or a list of strings).

        MTEB's other keywords (task_metadata, hf_split, hf_subset, prompt_type, show_progress_bar, ...)
        are accepted and unused: csekit encoders take no prompts.
        """
        return self.model.encode(_texts(inputs), batch_size=batch_size or self.batch_size)

    def similarity(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """(N, M) cosine similarities."""
        first, second = normalize_rows(_rows(embeddings1)), normalize_rows(_rows(embeddings2))
        return first @ second.T  # (N, M)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> np.ndarray:
        """(N,) cosine of row i with row i, exactly as csekit's STS evaluator computes it."""
        return cosine_rows(_rows(embeddings1), _rows(embeddings2))


def _rows(embeddings: Any) -> np.ndarray:
    if hasattr(embeddings, "detach"):  # a torch tensor
        embeddings = embeddings.detach().float().cpu().numpy()
    return np.atleast_2d(np.asarray(embeddings, dtype=np.float64))


def _texts(inputs: Any) -> list[str]:
    if isinstance(inputs, str):
        raise TypeError("encode() takes a list of texts or MTEB's DataLoader; wrap a single string in a list")
    if isinstance(inputs, list | tuple) and all(isinstance(text, str) for text in inputs):
        return list(inputs)
    texts: list[str] = []
    for batch in _batches(inputs):
        if "text" not in batch:
            raise CsekitError(f"csekit encodes text, but MTEB sent a batch with {sorted(batch)}")
        texts.extend(batch["text"])
    return texts


def _batches(inputs: Iterable) -> Iterable[dict]:
    for batch in inputs:
        if not isinstance(batch, dict):
            raise CsekitError(f"expected MTEB batches of the form {{'text': [...]}}, got {type(batch).__name__}")
        yield batch
