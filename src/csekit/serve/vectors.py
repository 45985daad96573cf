"""What a route makes of the model's raw rows: normalization, a Matryoshka prefix, base64."""

from __future__ import annotations

import base64

import numpy as np

from csekit.serve.errors import ApiError


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """(N, D) -> (N, D) rows of length 1 (a zero row stays zero, as torch's ``normalize`` leaves it)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)  # (N, 1)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


def check_dimensions(dimensions: int | None, embedding_dim: int) -> None:
    """A Matryoshka prefix is at most the whole embedding (checked before any text is encoded)."""
    if dimensions is not None and dimensions > embedding_dim:
        raise ApiError(400, f"dimensions={dimensions} is more than the model's {embedding_dim} dimensions",
                       code="invalid_value", param="dimensions")  # fmt: skip


def model_output(vectors: np.ndarray, *, normalize: bool, dimensions: int | None = None) -> np.ndarray:
    """Raw (N, D) rows -> what the model returns: its first ``dimensions`` (a Matryoshka prefix), made unit
    length again when ``normalize`` (the model's ``Normalize`` module comes after any prefix is taken)."""
    if dimensions is not None:
        vectors = vectors[:, :dimensions]  # (N, D) -> (N, k)
    return unit_rows(vectors) if normalize else vectors


def cosine_to_first(vectors: np.ndarray) -> list[float]:
    """(1 + S, D) rows -> the cosine of each of the S last rows with the first."""
    units = unit_rows(vectors)
    return (units[1:] @ units[0]).tolist()  # (S, D) @ (D,) -> (S,)


def to_base64(vector: np.ndarray) -> str:
    """Little-endian float32 bytes, base64: what OpenAI's ``encoding_format="base64"`` returns."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
