"""SentenceEncoder contracts: encode's output, the train-only head, the training flag, dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_encoder

# Different lengths on purpose: encode sorts by length, so output order is worth checking.
TEXTS = [
    "a short one",
    "the quick brown fox jumps over the lazy dog while a cat watches from the window .",
    "hi",
    "two dogs run across a field of grass",
    "a man is playing a guitar .",
]
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def _forward(encoder, texts: list[str]) -> torch.Tensor:
    batch = encoder.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return encoder(**batch)


@pytest.mark.parametrize("pooler", ["cls", "mean"])
def test_encode_returns_float32_rows_in_callers_order(pooler):
    encoder = make_tiny_encoder(pooler)
    embeddings = encoder.encode(TEXTS, batch_size=2)
    assert embeddings.dtype == np.float32
    assert embeddings.shape == (len(TEXTS), encoder.embedding_dim)
    # Each row must be the embedding of the text at that position, whatever the internal sort.
    for row, text in zip(embeddings, TEXTS):
        np.testing.assert_allclose(row, encoder.encode([text])[0], atol=1e-5)


def test_encode_does_not_depend_on_batch_size():
    encoder = make_tiny_encoder("mean")
    np.testing.assert_allclose(
        encoder.encode(TEXTS, batch_size=1), encoder.encode(TEXTS, batch_size=64), atol=1e-5
    )


def test_encode_normalize_gives_unit_rows_with_same_direction():
    encoder = make_tiny_encoder("mean")
    raw = encoder.encode(TEXTS)
    unit = encoder.encode(TEXTS, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-5)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1.0), (
        "raw rows are not unit: normalize must change them"
    )


def test_encoder_normalize_attribute_is_the_default_and_can_be_overridden():
    encoder = make_tiny_encoder("mean")
    encoder.normalize = True
    np.testing.assert_allclose(np.linalg.norm(encoder.encode(TEXTS), axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.linalg.norm(encoder.encode(TEXTS, normalize=False), axis=1), 1.0)


def test_encode_empty_list_gives_zero_rows():
    encoder = make_tiny_encoder()
    embeddings = encoder.encode([])
    assert embeddings.shape == (0, encoder.embedding_dim)
    assert embeddings.dtype == np.float32


def test_encode_refuses_a_bare_string():
    # A str is a sequence of characters: without the check it would embed each letter.
    with pytest.raises(TypeError, match="list"):
        make_tiny_encoder().encode("a man is playing a guitar .")


def test_train_only_head_is_used_in_training_and_dropped_at_inference():
    # No dropout, so train and eval modes differ only by whether the head runs.
    encoder = make_tiny_encoder("cls", **NO_DROPOUT)
    encoder.head_at_inference = False
    raw_cls = _cls_state(encoder, TEXTS)

    encoder.train()
    with torch.no_grad():
        expected_train = encoder.head(raw_cls)
    torch.testing.assert_close(_forward(encoder, TEXTS), expected_train, atol=1e-6, rtol=1e-5)

    encoder.eval()
    torch.testing.assert_close(_forward(encoder, TEXTS), raw_cls, atol=1e-6, rtol=1e-5)
    # encode() is the inference path: no head either.
    np.testing.assert_allclose(encoder.encode(TEXTS), raw_cls.numpy(), atol=1e-5)


def test_head_kept_at_inference_runs_in_both_modes():
    encoder = make_tiny_encoder("cls", **NO_DROPOUT)
    assert encoder.head_at_inference
    raw_cls = _cls_state(encoder, TEXTS)
    with torch.no_grad():
        with_head = encoder.head(raw_cls)
    encoder.train()
    in_training = _forward(encoder, TEXTS)
    encoder.eval()
    at_inference = _forward(encoder, TEXTS)
    torch.testing.assert_close(in_training, with_head, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(at_inference, with_head, atol=1e-6, rtol=1e-5)
    np.testing.assert_allclose(encoder.encode(TEXTS), with_head.numpy(), atol=1e-5)


def _cls_state(encoder, texts: list[str]) -> torch.Tensor:
    """The last layer's [CLS] state, straight from the backbone."""
    batch = encoder.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return encoder.backbone(**batch).last_hidden_state[:, 0]  # (B, H)


def test_a_head_with_a_non_cls_pooler_is_refused():
    from csekit import CsekitError
    from csekit.models import MLPHead, SentenceEncoder

    encoder = make_tiny_encoder("mean")
    with pytest.raises(CsekitError, match="cls"):
        SentenceEncoder(
            encoder.backbone, encoder.tokenizer, pooler="mean", head=MLPHead(encoder.embedding_dim)
        )


@pytest.mark.parametrize("training", [True, False])
def test_encode_restores_the_training_flag(training):
    encoder = make_tiny_encoder("cls")
    encoder.train(training)
    encoder.encode(TEXTS)
    assert encoder.training is training
    # Every submodule too: dropout layers deep in the backbone decide SimCSE's augmentation.
    assert all(module.training is training for module in encoder.modules())


def test_encode_in_training_mode_is_deterministic():
    # encode() switches dropout off even when called mid-training (e.g. by an evaluator).
    encoder = make_tiny_encoder("cls", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).train()
    np.testing.assert_array_equal(encoder.encode(TEXTS), encoder.encode(TEXTS))


def test_dropout_makes_two_training_passes_differ_and_eval_passes_agree():
    # Unsupervised SimCSE's only augmentation is dropout: the same batch, passed twice in train mode,
    # must give two different views; in eval mode the passes must be identical.
    encoder = make_tiny_encoder("cls", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    encoder.train()
    first, second = _forward(encoder, TEXTS), _forward(encoder, TEXTS)
    assert (first - second).abs().max() > 1e-4
    encoder.eval()
    torch.testing.assert_close(_forward(encoder, TEXTS), _forward(encoder, TEXTS), atol=0, rtol=0)


def test_forward_gives_batch_by_hidden_with_gradients():
    encoder = make_tiny_encoder("cls").train()
    batch = encoder.tokenizer(TEXTS, padding=True, return_tensors="pt")
    embeddings = encoder(**batch)
    assert embeddings.shape == (len(TEXTS), encoder.embedding_dim)
    embeddings.sum().backward()
    assert encoder.head.dense.weight.grad is not None
    assert encoder.backbone.embeddings.word_embeddings.weight.grad is not None
