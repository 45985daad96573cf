"""The contract of a search index that ``POST /search`` queries (:class:`csekit.search.SearchIndex` follows it)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from csekit.inference.encode import EncodeSettings
from csekit.models import SentenceEncoder


class SearchIndex(Protocol):
    """Vectors of a corpus, each under an id, searched by the served model's query embeddings."""

    def check_model(self, encoder: SentenceEncoder) -> None:
        """Raise :class:`~csekit.errors.CsekitError` if the index was built with another model."""
        ...

    def query_settings(self, encoder: SentenceEncoder) -> EncodeSettings:
        """How a query must be embedded to compare with the indexed vectors: ``dim`` (a Matryoshka prefix, or
        None for all dimensions) and ``normalize`` (None: as the model does)."""
        ...

    def search(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """(Q, D) float32 query embeddings -> for each query, up to ``k`` (id, score) pairs, best first."""
        ...
