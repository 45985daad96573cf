"""Shared fixtures: tiny random encoders (math and contracts) and the local assets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from csekit.models import SentenceEncoder

# Tiny models gain nothing from a second thread, and one thread everywhere (subprocesses included)
# keeps float reductions in the same order, so runs compare bit for bit.
torch.set_num_threads(1)

SHARED = Path(os.environ.get("CSEKIT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
DATA_DIR = SHARED / "data" / "senteval" / "downstream"
BERT_MINI = SHARED / "models" / "bert-mini-mlm"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"


def tiny_config(**overrides) -> BertConfig:
    """A 2-layer, 32-wide BERT over the uncased BERT vocabulary: random weights, milliseconds a step."""
    settings = dict(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    settings.update(overrides)
    return BertConfig(**settings)


def make_tiny_encoder(pooler: str = "cls", *, seed: int = 0, **config_overrides) -> SentenceEncoder:
    torch.manual_seed(seed)
    backbone = BertModel(tiny_config(**config_overrides), add_pooling_layer=False)
    tokenizer = AutoTokenizer.from_pretrained(BERT_MINI)
    return SentenceEncoder(backbone, tokenizer, pooler=pooler, max_length=64)


@pytest.fixture
def tiny_encoder() -> SentenceEncoder:
    return make_tiny_encoder()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA_DIR.is_dir():
        pytest.skip(f"evaluation data not found at {DATA_DIR}")
    return DATA_DIR
