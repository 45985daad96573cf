"""The objective contract: a batch in, named loss terms out.

An objective is split in two so that wrappers compose without knowing the method:

- ``embed(encoder, batch) -> {name: (B, ...) tensor}``: every forward pass through the encoder (and
  through the objective's own trainable modules) happens here. Rows follow the batch's rows, so the
  gradient cache can run ``embed`` on slices of a batch and concatenate the results.
- ``loss(embeddings, batch) -> {term: scalar}``: a pure function of the embeddings (cross-device
  gathering happens inside the loss functions). The trainer minimises the sum of the terms and logs
  each one.

``after_step(encoder)`` runs after each optimizer step, for state that follows the weights
(ESimCSE's momentum encoder). ``forward(encoder, batch)`` is ``loss(embed(encoder, batch), batch)``. An objective owns its extra
modules (momentum encoder, generator, prompts); frozen helpers stay in eval mode with no gradients.

A batch is ``{field: {"input_ids": (B, T), "attention_mask": (B, T), ...}}``: one tokenized text
field per column the objective reads (``sent0``, ``sent1``, ``hard_neg``), plus any non-text tensors.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from csekit.data.batches import Batch
from csekit.models.encoder import SentenceEncoder


class Objective(nn.Module):
    #: The text columns a training example must have, in order (``sent0`` is the anchor).
    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    #: Whether every term depends on the batch only through ``embed``'s output (gradient cache needs it).
    supports_grad_cache: ClassVar[bool] = True

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError

    def loss(self, embeddings: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, encoder: SentenceEncoder, batch: Batch) -> dict[str, Tensor]:
        return self.loss(self.embed(encoder, batch), batch)

    def after_step(self, encoder: SentenceEncoder) -> None:
        """Called after every optimizer step (a momentum encoder follows the encoder here)."""

    def train(self, mode: bool = True) -> Objective:
        """Like ``nn.Module.train``, but frozen helpers (``self.frozen_modules()``) stay in eval mode."""
        super().train(mode)
        for module in self.frozen_modules():
            module.eval()
        return self

    def frozen_modules(self) -> list[nn.Module]:
        return []
