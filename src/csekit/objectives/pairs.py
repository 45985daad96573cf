"""What the objectives on sentence pairs share: two text columns, both sides through the encoder in one pass."""

from __future__ import annotations

from typing import ClassVar

from csekit.data.collate import concat_fields
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings


class PairEmbeddings:
    """A mixin for an :class:`~csekit.objectives.base.Objective` over pairs (``sent0``, ``sent1``): the
    siamese encoder embeds both sides of each pair in one forward pass, ``{"sent0": (B, H), "sent1": (B, H)}``."""

    columns: ClassVar[tuple[str, ...]] = ("sent0", "sent1")
    views: ClassVar[tuple[str, ...]] = ("sent0", "sent1")
    sentence_keys: ClassVar[tuple[str, ...]] = ("sent0", "sent1")

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        size = batch["sent0"]["input_ids"].shape[0]
        stacked = concat_fields([batch["sent0"], batch["sent1"]], encoder.pad_token_id)  # (2B, T)
        first, second = encoder(**stacked).split(size)  # 2 x (B, H)
        return {"sent0": first, "sent1": second}
