"""csekit's input module for sentence-transformers: a backbone with a pooler that no stock module expresses.

A stock ``Transformer`` module tokenizes plain text and hands on token states only, so it cannot wrap a
sentence in a prompt template (PromptBERT) or pass attention weights to a pooler (Ditto). A folder whose
pooler is one of those names this class as its first module in ``modules.json``; sentence-transformers
imports it by that path, so

    SentenceTransformer(path, trust_remote_code=True)

computes exactly the embeddings ``csekit.load_encoder(path)`` does (the head and output modules that
follow are stock ``Dense`` and ``Normalize`` modules). sentence-transformers asks for
``trust_remote_code=True`` before it imports any class outside its own package; without csekit installed
the import fails with "No module named 'csekit'" (``pip install csekit``).

Nothing in csekit imports this module: it is sentence-transformers' entry point.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from csekit.data.collate import pad_batch
from csekit.models.encoder import SentenceEncoder
from csekit.models.loading import load_input
from csekit.models.saving import write_input


class PooledTransformer(nn.Module):
    """Texts -> ``{"sentence_embedding": (B, H)}`` through a csekit backbone and pooler."""

    def __init__(self, encoder: SentenceEncoder):
        super().__init__()
        self.encoder = encoder
        self.max_seq_length = encoder.max_length

    @classmethod
    def load(cls, model_name_or_path: str, subfolder: str = "", **kwargs: Any) -> PooledTransformer:
        """The input stage of a csekit folder (sentence-transformers applies the modules after it)."""
        path = f"{model_name_or_path}/{subfolder}" if subfolder else model_name_or_path
        encoder, _ = load_input(path)
        if encoder.head is not None:  # a cls model's head is the saved Dense module that follows this one
            encoder.set_pooler("cls_before_pooler")
        return cls(encoder)

    def preprocess(self, inputs: Sequence[str], prompt: str | None = None, **kwargs: Any) -> dict[str, Tensor]:
        """Padded token ids of each text as the pooler reads them at inference."""
        texts = [prompt + text for text in inputs] if prompt else list(inputs)
        pooler = self.encoder.pooler
        tokens = self.encoder.tokenize(pooler.inference_texts(texts), max_length=self.max_seq_length)
        rows = [{key: ids[i] for key, ids in tokens.items()} for i in range(len(texts))]
        return pad_batch(rows, self.encoder.pad_token_id)  # {field: (B, T)}

    def tokenize(self, texts: Sequence[str], **kwargs: Any) -> dict[str, Tensor]:
        return self.preprocess(texts, **kwargs)  # sentence-transformers before 5 calls this name

    def forward(self, features: dict[str, Tensor], **kwargs: Any) -> dict[str, Tensor]:
        inputs = {key: features[key] for key in self.encoder.model_input_names if key in features}
        features["sentence_embedding"] = self.encoder(**inputs)  # (B, H)
        return features

    def get_sentence_embedding_dimension(self) -> int:
        return self.encoder.embedding_dim

    def get_embedding_dimension(self) -> int:
        return self.encoder.embedding_dim

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        write_input(self.encoder, Path(output_path))

    @property
    def device(self) -> torch.device:
        return self.encoder.device
