"""The small stages after the pooler: SimCSE's MLP head and affine output maps, each saved as a stock
sentence-transformers ``Dense`` module and read back from one.

- :class:`MLPHead`: dense + tanh, the shape of BERT's pooler and SimCSE's ``MLPLayer`` (Gao et al. 2021,
  Sec. 3); the ``cls`` pooler's head. Saved only when it is kept at inference.
- :class:`AffineMap`: ``x W^T + b`` with no activation, frozen: a statistic fitted after pooling
  (BERT-whitening, :mod:`csekit.postprocess.whitening`), one of the encoder's output modules.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from csekit.errors import CsekitError
from csekit.models.pooling import StockModule

TANH, IDENTITY = "torch.nn.modules.activation.Tanh", "torch.nn.modules.linear.Identity"


def _dense(linear: nn.Linear, activation: str) -> StockModule:
    config = {"in_features": linear.in_features, "out_features": linear.out_features, "bias": True,
              "activation_function": activation}  # fmt: skip
    return StockModule("Dense", config, {"linear.weight": linear.weight, "linear.bias": linear.bias})


def _load_dense(linear: nn.Linear, config: dict[str, Any], weights: dict[str, Tensor], *, where: str) -> None:
    if not config.get("bias", True) or "linear.bias" not in weights:
        raise CsekitError(f"{where}: csekit loads Dense modules with a bias, got {config}")
    with torch.no_grad():
        linear.weight.copy_(weights["linear.weight"])
        linear.bias.copy_(weights["linear.bias"])


def dense_activation(config: dict[str, Any]) -> str:
    """A saved Dense module's activation (sentence-transformers' default is tanh)."""
    return config.get("activation_function", TANH)


class MLPHead(nn.Module):
    """Dense + tanh over the pooled state."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, features: Tensor) -> Tensor:
        return self.activation(self.dense(features))

    def reset_parameters(self, std: float = 0.02) -> MLPHead:
        """BERT's initialisation of a new layer: weights ~ N(0, std), bias 0."""
        nn.init.normal_(self.dense.weight, mean=0.0, std=std)
        nn.init.zeros_(self.dense.bias)
        return self

    def stock_module(self) -> StockModule:
        return _dense(self.dense, TANH)

    @classmethod
    def from_stock(cls, config: dict[str, Any], weights: dict[str, Tensor], *, where: str) -> MLPHead:
        if config.get("in_features") != config.get("out_features") or not dense_activation(config).endswith("Tanh"):
            raise CsekitError(f"{where}: only a square dense + tanh head is supported, got {config}")
        head = cls(config["in_features"])
        _load_dense(head.dense, config, weights, where=where)
        return head


class AffineMap(nn.Linear):
    """``(B, H) -> (B, k)``: an affine map with no activation, frozen (a fitted statistic, not trained)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(in_features, out_features)
        self.requires_grad_(False)

    def stock_module(self) -> StockModule:
        return _dense(self, IDENTITY)

    @classmethod
    def from_stock(cls, config: dict[str, Any], weights: dict[str, Tensor], *, where: str) -> AffineMap:
        affine = cls(config["in_features"], config["out_features"])
        _load_dense(affine, config, weights, where=where)
        return affine
