"""Encoders: a Hugging Face backbone, a pooler, an optional head, and sentence-transformers I/O."""

from csekit.models.encoder import MLPHead, SentenceEncoder
from csekit.models.io import load_encoder, save_encoder
from csekit.models.pooling import POOLERS

__all__ = ["POOLERS", "MLPHead", "SentenceEncoder", "load_encoder", "save_encoder"]
