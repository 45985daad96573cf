"""The gradient cache equals the plain step in loss and gradients, dropout views included.

The equality tests run in float64: the two paths sum the chunks' parameter gradients in different
orders, and in float32 that alone moves gradients of size ~10 by ~1e-6.
"""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch
from conftest import make_tiny_encoder

from csekit.losses import info_nce
from csekit.objectives.base import Objective
from csekit.training import grad_cache
from csekit.training.grad_cache import grad_cache_step, split_batch

SEED = 1234
SENTENCES = [
    "a man is playing a guitar .", "two dogs run in the snow .", "a woman slices an onion .",
    "children play in a park .", "the train leaves at noon .", "a cat sits on the mat .",
    "he reads a long novel .", "the market opens early .", "rain falls on the roof .",
    "she paints the old fence .", "birds sing at dawn .", "the river is very wide .",
]  # fmt: skip


class TwoDropoutViews(Objective):
    """Unsupervised SimCSE in miniature, plus a row-wise term with a graph-free count (like MLM's)."""

    def embed(self, encoder, batch):
        sentences = batch["sent0"]
        view1, view2 = encoder(**sentences), encoder(**sentences)  # (B, H) each: two dropout masks
        return {"view1": view1, "view2": view2, "count": torch.ones(len(view1), dtype=view1.dtype)}  # (B,)

    def loss(self, embeddings, batch):
        norms = embeddings["view1"].norm(dim=-1).sum() / embeddings["count"].sum()
        return {"contrastive": info_nce(embeddings["view1"], embeddings["view2"], 0.05), "norm": 0.01 * norms}


class Unsupported(TwoDropoutViews):
    supports_grad_cache: ClassVar[bool] = False


@pytest.fixture
def encoder():
    return make_tiny_encoder(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).double().train()


@pytest.fixture
def batch(encoder):
    tokens = encoder.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    return {"sent0": dict(tokens), "index": torch.arange(len(SENTENCES))}  # (B, T) fields, a plain (B,)


def plain_step(objective, encoder, batch, chunk_size):
    """Embed the same chunks with a graph (same RNG stream), then one backward through it all."""
    torch.manual_seed(SEED)
    outputs = [objective.embed(encoder, chunk) for chunk in split_batch(batch, chunk_size)]
    embeddings = {key: torch.cat([output[key] for output in outputs]) for key in outputs[0]}  # (B, ...)
    terms = objective.loss(embeddings, batch)
    sum(terms.values()).backward()
    return {name: term.detach() for name, term in terms.items()}


def cached_step(objective, encoder, batch, chunk_size):
    torch.manual_seed(SEED)
    return grad_cache_step(objective, encoder, batch, chunk_size)


def take_grads(encoder):
    grads = {name: param.grad.clone() for name, param in encoder.named_parameters() if param.grad is not None}
    encoder.zero_grad(set_to_none=True)
    return grads


def assert_same(terms, expected_terms, grads, expected_grads, *, rtol=0.0, atol=1e-6):
    assert terms.keys() == expected_terms.keys()
    for name, term in terms.items():
        torch.testing.assert_close(term, expected_terms[name], rtol=rtol, atol=atol)
    assert grads.keys() == expected_grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=rtol, atol=atol, msg=name)


def test_split_batch(batch):
    chunks = split_batch(batch, 5)
    assert [len(chunk["index"]) for chunk in chunks] == [5, 5, 2]
    assert chunks[2]["index"].tolist() == [10, 11]
    torch.testing.assert_close(chunks[1]["sent0"]["input_ids"], batch["sent0"]["input_ids"][5:10])


@pytest.mark.parametrize("chunk_size", [4, 5, 12])
def test_grad_cache_equals_plain_step(encoder, batch, chunk_size):
    objective = TwoDropoutViews()
    expected_terms = plain_step(objective, encoder, batch, chunk_size)
    expected_grads = take_grads(encoder)
    after_plain = torch.rand(3)
    terms = cached_step(objective, encoder, batch, chunk_size)
    grads = take_grads(encoder)
    assert_same(terms, expected_terms, grads, expected_grads)
    # The replay is undone at the end: the caller's RNG stream goes on as after a plain step.
    torch.testing.assert_close(torch.rand(3), after_plain, rtol=0, atol=0)


def test_without_rng_replay_the_gradients_differ(encoder, batch, monkeypatch):
    """The equality above is not vacuous: other dropout masks in the second pass change the gradients."""
    objective = TwoDropoutViews()
    expected_terms = plain_step(objective, encoder, batch, 4)
    expected_grads = take_grads(encoder)
    monkeypatch.setattr(grad_cache, "_set_rng_state", lambda state, device: torch.manual_seed(SEED + 1))
    terms = cached_step(objective, encoder, batch, 4)
    grads = take_grads(encoder)
    torch.testing.assert_close(terms, expected_terms, rtol=0, atol=1e-6)  # pass 1 is untouched
    assert max((grads[name] - grad).abs().max().item() for name, grad in expected_grads.items()) > 1e-4


def test_grad_cache_under_autocast(encoder, batch):
    encoder.float()
    objective = TwoDropoutViews()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_terms = plain_step(objective, encoder, batch, 4)
        expected_grads = take_grads(encoder)
        terms = cached_step(objective, encoder, batch, 4)
        grads = take_grads(encoder)
    # bf16 keeps 8 bits of mantissa, so the different summation orders show at the 1e-2 level.
    assert_same(terms, expected_terms, grads, expected_grads, rtol=2e-2, atol=2e-2)


def test_unsupported_objective_raises(encoder, batch):
    with pytest.raises(ValueError, match="does not support the gradient cache"):
        grad_cache_step(Unsupported(), encoder, batch, 4)
