"""Embeddings stored smaller: float16, int8 with a per-dimension calibration, or one bit per dimension.

- ``int8``: each dimension's range over the whole corpus (its ``starts`` and ``steps``) maps onto 256
  levels, ``(x - start) / step - 128``, as sentence-transformers' ``quantize_embeddings`` does with
  calibration embeddings, here rounded to the nearest level where it truncates (rounding halves the worst
  error). The calibration is saved with the file, so :func:`dequantize` gives the vectors back within half
  a step.
- ``binary``: the sign of each dimension, 8 dimensions a byte (``np.packbits`` of ``x > 0``, the
  ``ubinary`` of sentence-transformers); compared by Hamming distance.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from csekit.errors import CsekitError

#: precision name -> the numpy dtype it is stored in
PRECISIONS = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "binary": np.uint8}


class Range:
    """Running per-dimension minimum and maximum: the int8 calibration, gathered in one pass."""

    def __init__(self, dim: int):
        self.low = np.full(dim, np.inf, dtype=np.float32)
        self.high = np.full(dim, -np.inf, dtype=np.float32)

    def update(self, vectors: np.ndarray) -> None:
        if len(vectors):
            np.minimum(self.low, vectors.min(axis=0), out=self.low)
            np.maximum(self.high, vectors.max(axis=0), out=self.high)

    def calibration(self) -> dict[str, list[float]]:
        steps = np.maximum((self.high - self.low) / 255, np.finfo(np.float32).tiny)  # a constant dimension
        return {"starts": self.low.tolist(), "steps": steps.tolist()}


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise CsekitError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")


def quantize(vectors: np.ndarray, precision: str, calibration: dict[str, Any] | None = None) -> np.ndarray:
    """(N, D) float32 -> (N, D) in ``precision`` ((N, D / 8) bytes for binary)."""
    if precision == "float32":
        return vectors.astype(np.float32, copy=False)
    if precision == "float16":
        return vectors.astype(np.float16)
    if precision == "int8":
        starts, steps = np.asarray(calibration["starts"], np.float32), np.asarray(calibration["steps"], np.float32)
        levels = np.rint((vectors - starts) / steps) - 128
        return np.clip(levels, -128, 127).astype(np.int8)
    if precision == "binary":
        return np.packbits(vectors > 0, axis=-1)
    raise CsekitError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")


def dequantize(stored: np.ndarray, precision: str, calibration: dict[str, Any] | None = None, *,
               dim: int | None = None) -> np.ndarray:  # fmt: skip
    """The float32 vectors a stored array stands for (binary: +-1 per dimension; ``dim`` unpacks the bits)."""
    if precision in ("float32", "float16"):
        return stored.astype(np.float32)
    if precision == "int8":
        starts, steps = np.asarray(calibration["starts"], np.float32), np.asarray(calibration["steps"], np.float32)
        return (stored.astype(np.float32) + 128) * steps + starts
    if precision == "binary":
        bits = np.unpackbits(stored, axis=-1, count=dim)
        return bits.astype(np.float32) * 2 - 1
    raise CsekitError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
