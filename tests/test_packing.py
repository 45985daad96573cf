"""Packed rows (several sentences a row, block-diagonal attention) give the padded batch's embeddings and
gradients, in fp32 to 1e-5."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_trains_like_the_plain_run, make_tiny_encoder, make_tiny_encoder_with, tiny_roberta

from csekit.errors import CsekitError
from csekit.losses import info_nce

TEXTS = ["a man plays a guitar .", "dogs run .", "a woman slices an onion in the kitchen before dinner .",
         "kids play .", "the train leaves at noon .", "a cat ."]  # fmt: skip


def _embeddings_and_grads(encoder, row_tokens):
    encoder.zero_grad()
    encoder.pack(row_tokens)
    tokens = encoder.tokenizer(TEXTS + TEXTS[::-1], padding=True, return_tensors="pt")  # (12, T)
    embeddings = encoder(**tokens)  # (12, H)
    info_nce(*embeddings.chunk(2), 0.05).backward()
    grads = {name: p.grad.clone() for name, p in encoder.named_parameters() if p.grad is not None}
    return embeddings.detach(), grads


@pytest.mark.parametrize("pooler", ["mean", "cls", "first_last_avg", "last2avg"])
@pytest.mark.parametrize("row_tokens", [16, 64])
def test_packed_equals_padded_in_embeddings_and_gradients(pooler, row_tokens):
    encoder = make_tiny_encoder_with(pooler, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()
    padded, padded_grads = _embeddings_and_grads(encoder, None)
    packed, packed_grads = _embeddings_and_grads(encoder, row_tokens)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)
    assert packed_grads.keys() == padded_grads.keys()
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_roberta_positions_start_after_the_padding_index(tmp_path):
    encoder = tiny_roberta(tmp_path, TEXTS)
    encoder.backbone.config.hidden_dropout_prob = encoder.backbone.config.attention_probs_dropout_prob = 0.0
    encoder.eval()
    padded, _ = _embeddings_and_grads(encoder, None)
    packed, _ = _embeddings_and_grads(encoder, 40)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)


def test_rows_are_filled_and_bad_settings_refused():
    encoder = make_tiny_encoder("mean")
    tokens = encoder.tokenizer(TEXTS, padding=True, return_tensors="pt")
    seen = {}
    hook = encoder.backbone.register_forward_hook(lambda module, args, kwargs, out: seen.update(kwargs), with_kwargs=True)
    encoder.pack(64)(**tokens)
    hook.remove()
    assert seen["input_ids"].shape[0] < len(TEXTS)  # fewer rows than sentences: packed
    with pytest.raises(CsekitError, match="does not fit a packed row of 4"):
        encoder.pack(4)(**tokens)
    left = {key: value.flip(1) for key, value in tokens.items()}
    with pytest.raises(CsekitError, match="right-padded"):
        encoder.pack(64)(**left)
    with pytest.raises(CsekitError, match="reads attention maps"):
        make_tiny_encoder_with("ditto", num_attention_heads=2).pack(64)


def test_training_on_packed_rows_gives_the_padded_runs_weights(tmp_path):
    assert_trains_like_the_plain_run(tmp_path, pack_rows=48)
