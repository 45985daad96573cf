"""The contract of a search index that ``POST /search`` queries (the index itself lives elsewhere)."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from csekit.models import SentenceEncoder


class SearchIndex(Protocol):
    """Vectors of a corpus, each under an id, searched by the served model's query embeddings."""

    def search(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        """(Q, D) float32 query embeddings -> for each query, up to ``k`` (id, score) pairs, best first."""
        ...

    def check_model(self, encoder: SentenceEncoder) -> None:
        """Raise :class:`~csekit.errors.CsekitError` if the index was built with another model."""
        ...
