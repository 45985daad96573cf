"""GCSE, DCLR and DebCSE: each weighting against a naive loop, masks without gradient, ones == plain InfoNCE."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_encoder

import csekit.losses
from csekit.data.collate import pad_batch
from csekit.losses import cosine_similarity_matrix, info_nce
from csekit.objectives import build_objective
from csekit.objectives.dclr import false_negative_weights, noise_negatives
from csekit.objectives.debcse import delete_tokens, negative_weights, positive_probabilities, surface_similarity
from csekit.objectives.gcse import gaussian_decay_weights

SENTENCES = ["a man plays the guitar .", "two dogs run in a field .", "the stock market fell today .",
             "a woman is slicing an onion .", "kids play in the snow .", "a red car drives by ."]  # fmt: skip


def cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float(a @ b / (a.norm() * b.norm()))


def naive_loss(anchors, candidates, temperature, *, weights=None, extra=None) -> float:
    """-log(w_ii e^{s_ii/t} / (sum_j w_ij e^{s_ij/t} + sum_m e^{s_im/t})), averaged, with loops."""
    extra = [] if extra is None else list(extra)
    total = 0.0
    for i, anchor in enumerate(anchors):
        terms = [(1.0 if weights is None else float(weights[i, j])) * math.exp(cos(anchor, c) / temperature)
                 for j, c in enumerate(candidates)]  # fmt: skip
        terms += [math.exp(cos(anchor, noise) / temperature) for noise in extra]
        total += -math.log(terms[i] / sum(terms))
    return total / len(anchors)


def tokens(encoder, texts):
    ids = encoder.tokenize(texts)
    return pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], encoder.tokenizer.pad_token_id)


@pytest.fixture
def vectors():
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(6, 8, generator=generator, dtype=torch.float64) for _ in range(4)]


# ----------------------------------------------------------------------------------------- the hook
def test_weights_of_ones_and_no_extras_are_plain_info_nce(vectors):
    anchors, candidates = vectors[0], torch.cat(vectors[1:3])
    plain = info_nce(anchors, candidates, 0.05)
    assert info_nce(anchors, candidates, 0.05, weights=torch.ones(6, 12, dtype=torch.float64)).item() == plain.item()
    noise = vectors[3][:4]
    with_noise = info_nce(anchors, candidates, 0.05, shared_negatives=noise)
    assert with_noise.item() == pytest.approx(info_nce(anchors, torch.cat([candidates, noise]), 0.05).item(), rel=1e-12)
    assert with_noise.item() == pytest.approx(naive_loss(anchors, candidates, 0.05, extra=noise), rel=1e-10)


def test_masked_negative_gets_no_gradient_from_that_anchor(vectors):
    anchors, candidates = (vectors[0].clone().requires_grad_(), vectors[1].clone().requires_grad_())
    weights = torch.ones(6, 6, dtype=torch.float64)
    weights[0, 3] = 0.0
    info_nce(anchors[:1], candidates, 0.05, weights=weights[:1]).backward()
    assert candidates.grad[3].abs().max() == 0  # masked: no push
    assert candidates.grad[2].abs().max() > 0  # an unmasked negative is pushed


def test_weights_may_cover_every_rank_in_rank_order(vectors, monkeypatch):
    """Rank 1 of 2: (B, N) weights sit at its own columns, (B, W * N) ones are taken as they are."""
    anchors, mine, theirs = vectors[0], vectors[1], vectors[2]
    monkeypatch.setattr(csekit.losses, "get_world_size", lambda: 2)
    monkeypatch.setattr(csekit.losses, "get_rank", lambda: 1)
    monkeypatch.setattr(csekit.losses, "all_gather_with_grad", lambda x: torch.cat([theirs, x]))
    local = torch.rand(6, 6, dtype=torch.float64) + 0.5
    everywhere = torch.cat([torch.ones(6, 6, dtype=torch.float64), local], dim=1)  # (B, W * N)
    total = 0.0  # the positive of anchor i is column 6 + i (rank 1's block)
    for i in range(6):
        terms = [float(everywhere[i, j]) * math.exp(cos(anchors[i], c) / 0.05)
                 for j, c in enumerate(torch.cat([theirs, mine]))]  # fmt: skip
        total += -math.log(terms[6 + i] / sum(terms))
    expected = total / 6
    assert info_nce(anchors, mine, 0.05, weights=local).item() == pytest.approx(expected, rel=1e-10)
    assert info_nce(anchors, mine, 0.05, weights=everywhere).item() == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="weights must be"):
        info_nce(anchors, mine, 0.05, weights=torch.ones(6, 7))


# ----------------------------------------------------------------------------------------- GCSE
def naive_gcse_added(anchors, negatives, base_anchors, base_negatives, temperature, alpha) -> list[float]:
    added = []
    for i in range(len(anchors)):
        logit = cos(anchors[i], negatives[i]) / temperature
        difference = logit - cos(base_anchors[i], base_negatives[i]) / temperature
        added.append(0.0 if difference > 0 else -logit * math.exp(-(difference**2) / (2 * alpha**2)))
    return added


def test_gcse_weights_match_the_reference_rule(vectors):
    anchors, negatives = vectors[0].requires_grad_(), vectors[1]
    # Base similarities a little above, equal to and below the model's: both branches of the rule.
    base_negatives = negatives + 0.01 * vectors[2]
    base_negatives[0] = negatives[0]
    weights = gaussian_decay_weights(anchors, negatives, anchors.detach(), base_negatives, temperature=0.05, alpha=0.17)
    assert not weights.requires_grad  # detached, as the reference's z3_weight and neg_labels
    expected = naive_gcse_added(anchors.detach(), negatives, anchors.detach(), base_negatives, 0.05, 0.17)
    torch.testing.assert_close(weights.log(), torch.tensor(expected, dtype=torch.float64))
    assert weights[0].log().item() == pytest.approx(-cos(anchors[0], negatives[0]) / 0.05)  # d = 0: logit -> 0
    assert any(value == 0.0 for value in expected) and any(value != 0.0 for value in expected)


def test_gcse_loss_matches_naive_and_equals_simcse_when_no_negative_decays():
    encoder = make_tiny_encoder(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).eval()
    objective = build_objective("gcse", encoder, options={"temperature": 0.05, "alpha": 0.17, "base_head": "copy"})
    batch = {"sent0": tokens(encoder, SENTENCES), "sent1": tokens(encoder, SENTENCES[::-1]),
             "hard_neg": tokens(encoder, SENTENCES[2:] + SENTENCES[:2])}  # fmt: skip
    embeddings = objective.embed(encoder, batch)
    # With the starting head copied, the base is a frozen copy of the starting model: untrained, it scores
    # exactly as the model does.
    torch.testing.assert_close(embeddings["base_sent0"], embeddings["sent0"])
    anchors, positives, negatives = embeddings["sent0"], embeddings["sent1"], embeddings["hard_neg"]
    added = naive_gcse_added(anchors, negatives, embeddings["base_sent0"], embeddings["base_hard_neg"], 0.05, 0.17)
    weights = torch.ones(6, 12, dtype=torch.float64)
    for i, value in enumerate(added):
        weights[i, 6 + i] = math.exp(value)
    expected = naive_loss(anchors, torch.cat([positives, negatives]), 0.05, weights=weights)
    assert objective.loss(embeddings, batch)["contrastive"].item() == pytest.approx(expected, abs=1e-5)
    # A base that scores every hard negative far lower (d > 0 everywhere): no decay, supervised SimCSE.
    embeddings["base_hard_neg"] = -embeddings["base_sent0"]
    plain = info_nce(anchors, torch.cat([positives, negatives]), 0.05)
    assert objective.loss(embeddings, batch)["contrastive"].item() == pytest.approx(plain.item(), abs=1e-6)


# ----------------------------------------------------------------------------------------- DCLR
def test_dclr_threshold_mask_matches_naive(vectors):
    complementary = vectors[0][:, :3]  # few dimensions: some pairs above 0.5, some below
    weights = false_negative_weights(complementary, complementary, 0.5)
    for i in range(6):
        for j in range(6):
            expected = 1.0 if i == j or cos(complementary[i], complementary[j]) <= 0.5 else 0.0
            assert weights[i, j].item() == expected
    assert (weights == 0).any() and (weights == 1).sum() > 6
    shifted = false_negative_weights(complementary, torch.cat([vectors[1][:, :3], complementary]), 0.5, offset=6)
    assert torch.equal(shifted[:, 6:], weights)  # positives at offset + i stay 1


def test_dclr_noise_ascent_matches_manual_autograd_and_raises_the_loss(vectors):
    anchors, candidates = vectors[0].float(), vectors[1].float()
    torch.manual_seed(5)
    noise = noise_negatives(anchors, candidates, count=4, steps=3, step_size=0.5, temperature=0.05)
    torch.manual_seed(5)
    manual = torch.randn(4, 8).double()
    start = manual.clone()

    def loss_of(points):  # InfoNCE over [candidates; noise], written out
        logits = torch.stack([torch.stack([torch.dot(a, c) / (a.norm() * c.norm()) / 0.05
                                           for c in torch.cat([candidates.double(), points])]) for a in anchors.double()])  # fmt: skip
        return -(logits.diagonal() - torch.logsumexp(logits, dim=1)).mean()

    for _ in range(3):
        manual.requires_grad_(True)
        (gradient,) = torch.autograd.grad(loss_of(manual), manual)
        manual = (manual + 0.5 * gradient / gradient.norm(dim=1, keepdim=True)).detach()
    torch.testing.assert_close(noise.double(), manual, atol=1e-5, rtol=1e-5)
    assert loss_of(manual) > loss_of(start)  # ascent: the noise became harder negatives
    assert not noise.requires_grad


def test_dclr_loss_matches_naive_and_equals_simcse_without_mask_or_noise():
    encoder = make_tiny_encoder(hidden_dropout_prob=0.1).train()
    objective = build_objective("dclr", encoder, options={"temperature": 0.05, "phi": 0.3, "noise_times": 0.5})
    batch = {"sent0": tokens(encoder, SENTENCES)}
    torch.manual_seed(3)
    embeddings = objective.embed(encoder, batch)
    torch.manual_seed(4)
    loss = objective.loss(embeddings, batch)["contrastive"]
    torch.manual_seed(4)
    noise = noise_negatives(embeddings["view1"], embeddings["view2"], count=3, steps=4, step_size=1e-3, temperature=0.05)
    weights = false_negative_weights(embeddings["complementary"], embeddings["complementary"], 0.3)
    assert (weights == 0).any()  # the test exercises the mask
    expected = naive_loss(embeddings["view1"], embeddings["view2"], 0.05, weights=weights, extra=noise)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    plain_objective = build_objective("dclr", encoder, options={"phi": 1.5, "noise_times": 0.0})
    plain = info_nce(embeddings["view1"], embeddings["view2"], 0.05)
    assert plain_objective.loss(embeddings, batch)["contrastive"].item() == pytest.approx(plain.item(), abs=1e-6)


def test_frozen_helper_stays_in_eval_mode_without_gradients():
    encoder = make_tiny_encoder(hidden_dropout_prob=0.1)
    objective = build_objective("dclr", encoder).train()
    assert not objective.complementary.training
    helper = objective.complementary.module
    assert not helper.training and not any(p.requires_grad for p in helper.parameters())
    assert helper.head is not None and helper.head_at_inference  # the training forward, minus dropout
    assert helper.backbone is not encoder.backbone


# ----------------------------------------------------------------------------------------- DebCSE
def naive_surface(a: list[int], b: list[int]) -> float:
    jaccard = len(set(a) & set(b)) / max(len(set(a) | set(b)), 1)
    return (jaccard + min(len(a), len(b)) / max(len(a), len(b), 1)) / 2


def test_debcse_surface_similarity_matches_naive():
    ids = torch.tensor([[101, 7, 8, 9, 102, 0], [101, 7, 7, 8, 102, 0], [101, 5, 102, 0, 0, 0]])
    surface = surface_similarity(ids, ids[[2, 0]], ignore=[0, 101, 102], vocab_size=12)
    words = [[7, 8, 9], [7, 7, 8], [5]]
    for i in range(3):
        for j, other in enumerate([2, 0]):
            assert surface[i, j].item() == pytest.approx(naive_surface(words[i], words[other]))


def naive_bins(values, num_bins):
    return [min(int(value * num_bins), num_bins - 1) for value in values]


def test_debcse_negative_propensity_weights_match_naive():
    generator = torch.Generator().manual_seed(1)
    surface = torch.rand(5, 5, generator=generator, dtype=torch.float64) * 0.6
    semantic = torch.rand(5, 5, generator=generator, dtype=torch.float64)
    weights = negative_weights(surface, semantic, num_bins=4, max_weight=1.5, phi=0.8)
    pairs = [(i, j) for i in range(5) for j in range(5) if i != j]
    bins = dict(zip(pairs, naive_bins([float(surface[p]) for p in pairs], 4)))
    counts = {b: list(bins.values()).count(b) for b in set(bins.values())}
    raw = {p: len(pairs) / counts[bins[p]] for p in pairs}  # 1 / propensity
    mean = sum(raw.values()) / len(raw)
    for i in range(5):
        for j in range(5):
            if i == j:
                expected = 1.0
            elif semantic[i, j] > 0.8:
                expected = 0.0
            else:
                expected = min(raw[i, j] / mean, 1.5)
            assert weights[i, j].item() == pytest.approx(expected)
    assert (weights == 0).any() and (weights == 1.5).any()


def test_debcse_positive_sampling_probabilities_match_naive():
    surface = torch.tensor([[1.0, 0.85, 0.55], [1.0, 0.82, 0.95], [1.0, 0.5, 0.52]])
    semantic = torch.tensor([[1.0, 0.9, 0.4], [1.0, -0.2, 0.8], [1.0, 0.6, 0.7]])
    probabilities = positive_probabilities(surface, semantic, 10)
    bins = naive_bins(surface.flatten().tolist(), 10)
    for i in range(3):
        scores = [max(float(semantic[i, k]), 0.0) * 9 / bins.count(bins[3 * i + k]) for k in range(3)]
        torch.testing.assert_close(probabilities[i], torch.tensor([s / sum(scores) for s in scores]))
    assert probabilities[1, 1] == 0  # a candidate of negative semantic similarity is never chosen


def test_debcse_deletion_is_seeded_never_empties_and_keeps_special_tokens():
    encoder = make_tiny_encoder()
    batch = tokens(encoder, [*SENTENCES, "hi"])
    torch.manual_seed(0)
    first = delete_tokens(batch, rate=0.9, pad_token_id=0)
    torch.manual_seed(0)
    again = delete_tokens(batch, rate=0.9, pad_token_id=0)
    assert torch.equal(first["input_ids"], again["input_ids"])
    for row, length in enumerate(first["attention_mask"].sum(1).tolist()):
        ids = first["input_ids"][row, :length].tolist()
        assert ids[0] == encoder.tokenizer.cls_token_id and ids[-1] == encoder.tokenizer.sep_token_id
        assert length >= 3  # at least one word survives
    assert first["input_ids"].shape[1] < batch["input_ids"].shape[1]


def test_debcse_loss_is_weighted_info_nce_and_plain_when_weights_are_ones():
    encoder = make_tiny_encoder(hidden_dropout_prob=0.1).train()
    objective = build_objective("debcse", encoder, options={"phi": 0.999})
    batch = {"sent0": tokens(encoder, SENTENCES)}
    torch.manual_seed(2)
    embeddings = objective.embed(encoder, batch)
    torch.manual_seed(2)
    assert torch.equal(objective.embed(encoder, batch)["positive_ids"], embeddings["positive_ids"])  # seeded choice
    surface = surface_similarity(embeddings["anchor_ids"], embeddings["positive_ids"], ignore=objective.ignore,
                                 vocab_size=objective.vocab_size)  # fmt: skip
    semantic = cosine_similarity_matrix(embeddings["semantic_anchors"], embeddings["semantic_positives"])
    weights = negative_weights(surface, semantic, num_bins=10, max_weight=10.0, phi=0.999)
    expected = naive_loss(embeddings["anchors"], embeddings["positives"], 0.05, weights=weights)
    assert objective.loss(embeddings, batch)["contrastive"].item() == pytest.approx(expected, abs=1e-5)
    # One surface bin and nothing above phi: every weight is 1 and the loss is SimCSE's.
    single_bin = build_objective("debcse", encoder, options={"num_bins": 1, "phi": 1.5})
    plain = info_nce(embeddings["anchors"], embeddings["positives"], 0.05)
    assert single_bin.loss(embeddings, batch)["contrastive"].item() == pytest.approx(plain.item(), abs=1e-6)


def test_gcse_base_model_gets_a_head_initialisation_of_its_own_as_in_the_reference():
    """The reference builds the base as a second model, whose MLP head is initialised afresh: here the
    copy keeps the starting backbone and draws its head's weights anew (N(0, 0.02), bias 0)."""
    encoder = make_tiny_encoder(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    state = torch.get_rng_state()
    objective = build_objective("gcse", encoder)
    base = objective.base.module
    torch.set_rng_state(state)
    expected = torch.empty_like(encoder.head.dense.weight).normal_(0.0, 0.02)
    torch.testing.assert_close(base.head.dense.weight, expected, rtol=0, atol=0)
    assert not base.head.dense.bias.any()
    assert not torch.equal(base.head.dense.weight, encoder.head.dense.weight)
    pairs = zip(base.backbone.parameters(), encoder.backbone.parameters(), strict=True)
    assert all(torch.equal(ours, theirs) for ours, theirs in pairs)
