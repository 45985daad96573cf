"""SG-BERT: the SG-OPT loss against a loop, the token pooling, the frozen copy and the regulariser."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_encoder

from csekit import CsekitError
from csekit.data.collate import pad_batch
from csekit.objectives import build_objective
from csekit.objectives.sgbert import pool_tokens, self_guided_nt_xent

TEXTS = ["a man plays the guitar .", "two dogs run .", "the market fell today .", "she slices an onion ."]


def naive_self_guided_nt_xent(sentences, guidance, temperature):
    """SG-OPT term by term: each (c_i, h_ik) against its own exp term plus every other sentence's layers."""
    size, layers, _ = guidance.shape

    def phi(u, v):
        return torch.exp(torch.nn.functional.cosine_similarity(u, v, dim=0) / temperature)

    total = 0.0
    for i in range(size):
        negatives = sum(phi(sentences[i], guidance[m, n]) for m in range(size) if m != i for n in range(layers))
        for k in range(layers):
            positive = phi(sentences[i], guidance[i, k])
            total = total - torch.log(positive / (positive + negatives))
    return total / (size * layers)


def test_the_loss_equals_sg_opt_term_by_term_in_value_and_gradient():
    torch.manual_seed(0)
    sentences = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    guidance = torch.randn(5, 3, 7, dtype=torch.float64, requires_grad=True)
    fast = self_guided_nt_xent(sentences, guidance, 0.5)
    slow = naive_self_guided_nt_xent(sentences, guidance, 0.5)
    torch.testing.assert_close(fast, slow, rtol=1e-12, atol=1e-12)
    fast_grads = torch.autograd.grad(fast, (sentences, guidance))
    slow_grads = torch.autograd.grad(slow, (sentences, guidance))
    for fast_grad, slow_grad in zip(fast_grads, slow_grads):
        torch.testing.assert_close(fast_grad, slow_grad, rtol=1e-10, atol=1e-12)


def test_the_loss_has_no_cls_cls_terms_and_the_reference_reduction():
    """One layer, two sentences: the loss is the mean of -log softmax over (own guidance, the other's), nothing else."""
    sentences = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    guidance = torch.tensor([[[1.0, 1.0]], [[0.0, 1.0]]], dtype=torch.float64)
    cos = 1 / math.sqrt(2)
    expected = 0.5 * (-math.log(math.exp(cos) / (math.exp(cos) + math.exp(0.0)))
                      - math.log(math.exp(1.0) / (math.exp(1.0) + math.exp(cos))))  # fmt: skip
    assert self_guided_nt_xent(sentences, guidance, 1.0).item() == pytest.approx(expected, abs=1e-12)


def test_token_pooling_reads_only_the_real_tokens():
    torch.manual_seed(0)
    hidden = torch.randn(3, 2, 5, 4, dtype=torch.float64) - 10.0  # (B, K, T, H), all negative: padding must not win
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    for how, reduce in (("max", lambda t: t.max(dim=0).values), ("mean", lambda t: t.mean(dim=0))):
        pooled = pool_tokens(hidden, mask, how)
        for b in range(3):
            for k in range(2):
                real = hidden[b, k, : int(mask[b].sum())]
                torch.testing.assert_close(pooled[b, k], reduce(real))


def tiny_batch(encoder):
    ids = encoder.tokenize(TEXTS)
    return {"sent0": pad_batch([{k: ids[k][i] for k in ids} for i in range(len(TEXTS))], 0)}


def test_the_frozen_copy_stays_the_starting_model_and_the_regulariser_is_the_squared_distance_to_it():
    encoder = make_tiny_encoder("cls_before_pooler", hidden_dropout_prob=0.1).train()
    start = {name: p.detach().clone() for name, p in encoder.backbone.named_parameters()}
    objective = build_objective("sgbert", encoder, options={"projection_dim": 16, "regularization": 0.3}).train()
    embedding_layer = {name for name, p in encoder.backbone.named_parameters() if not p.requires_grad}
    assert embedding_layer == {name for name in start if name.startswith("embeddings.")}  # --freeze
    optimizer = torch.optim.SGD([p for p in [*encoder.parameters(), *objective.parameters()] if p.requires_grad],
                                lr=0.5)  # fmt: skip
    batch = tiny_batch(encoder)
    for _ in range(2):
        optimizer.zero_grad()
        sum(objective(encoder, batch).values()).backward()
        optimizer.step()
    guide = objective.guide.module
    assert not guide.training and not any(p.requires_grad for p in guide.parameters())
    for name, parameter in guide.backbone.named_parameters():
        torch.testing.assert_close(parameter, start[name], rtol=0, atol=0)  # BERT_F = theta_0, untouched
    moved = {name: p for name, p in encoder.backbone.named_parameters()}
    assert all(torch.equal(moved[name], start[name]) for name in embedding_layer)  # frozen in BERT_T too
    distance = sum(((moved[name] - start[name]) ** 2).sum() for name in start)
    assert distance > 0
    terms = objective.loss(objective.embed(encoder, batch), batch)
    assert terms["regularization"].item() == pytest.approx(0.3 * distance.item(), rel=1e-5)
    # the guidance is the frozen copy's (no dropout): two passes agree, the trained [CLS] does not
    first, second = objective.embed(encoder, batch), objective.embed(encoder, batch)
    torch.testing.assert_close(first["guidance"], second["guidance"])
    assert not torch.allclose(first["sentence"], second["sentence"])
    assert first["guidance"].shape == (len(TEXTS), encoder.num_layers + 1, 16)  # every layer, embeddings included


def test_the_regulariser_pulls_back_with_its_own_gradient():
    """d(lambda ||theta - theta_0||^2)/d theta = 2 lambda (theta - theta_0) on every trained weight."""
    encoder = make_tiny_encoder("cls_before_pooler")
    objective = build_objective("sgbert", encoder, options={"projection_dim": 8, "regularization": 0.25})
    with torch.no_grad():
        for parameter in encoder.backbone.encoder.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    drift = objective.drift(encoder)
    (0.25 * drift).backward()
    start = dict(objective.guide.module.backbone.named_parameters())
    for name, parameter in encoder.backbone.encoder.named_parameters():
        expected = 0.5 * (parameter.detach() - start[f"encoder.{name}"])
        torch.testing.assert_close(parameter.grad, expected, rtol=1e-5, atol=1e-7)


def test_bad_options_are_one_line_errors():
    encoder = make_tiny_encoder("cls_before_pooler")
    with pytest.raises(CsekitError, match="layer_pooling must be one of max, mean"):
        build_objective("sgbert", encoder, options={"layer_pooling": "cls"})
    with pytest.raises(CsekitError, match="projection_dim must be at least 1"):
        build_objective("sgbert", encoder, options={"projection_dim": 0})
