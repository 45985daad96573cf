"""The evaluator contract: a model in, named numbers out."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Encoder(Protocol):
    """Anything with csekit's ``encode``: a :class:`~csekit.SentenceEncoder`, or a wrapper of another library."""

    def encode(self, texts: list[str], *, batch_size: int = ...) -> np.ndarray: ...


class Evaluator(Protocol):
    """``evaluate(model)`` returns flat ``{metric name: value}``; ``primary_metric`` names the headline."""

    primary_metric: str

    def evaluate(self, model: Encoder) -> dict[str, float]: ...
