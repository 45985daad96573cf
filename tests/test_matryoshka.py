"""Matryoshka, 2D Matryoshka and Starbucks: each loss against a naive reference, the KL teacher detached, bad options."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_encoder
from test_objectives_contract import batch_for

from csekit import CsekitError
from csekit.losses import cosent, feature_kl
from csekit.objectives import build_objective

DIMS = [32, 16, 8]


def cosent_encoder(**config):
    """A dropout-free 3-layer tiny encoder (the same numbers on every pass) and a CoSENT batch."""
    encoder = make_tiny_encoder("cls_before_pooler", num_hidden_layers=3, hidden_dropout_prob=0.0,
                                attention_probs_dropout_prob=0.0, **config).train()  # fmt: skip
    return encoder, batch_for(build_objective("cosent", encoder), encoder)


def at_depth(encoder, layers: int):
    """The same weights with the backbone cut to ``layers`` blocks: an independent way to the layer's embedding."""
    return copy.deepcopy(encoder).keep_layers(layers)


def pair_embeddings(encoder, batch):
    return encoder(**batch["sent0"]), encoder(**batch["sent1"])  # (B, H) each


def kl_by_hand(student, teacher, temperature):
    """mean_i sum_j p_ij log(p_ij / q_ij), p the teacher's softmax over features, q the student's."""
    p = torch.softmax(teacher / temperature, dim=-1)
    q = torch.softmax(student / temperature, dim=-1)
    return (p * (p.log() - q.log())).sum(dim=-1).mean()


def test_feature_kl_is_the_textbook_divergence_and_keeps_the_teacher_out_of_the_gradient():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 12, requires_grad=True), torch.randn(5, 12, requires_grad=True)
    value = feature_kl(student, teacher, temperature=0.3)
    assert value.item() == pytest.approx(kl_by_hand(student, teacher, 0.3).item(), rel=1e-5)
    value.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None


def test_matryoshka_is_the_weighted_sum_of_the_inner_loss_over_prefixes():
    encoder, batch = cosent_encoder()
    weights = [1.0, 0.5, 2.0]
    objective = build_objective("cosent", encoder, wrappers={"matryoshka": {"dims": [16, 32, 8], "weights": [0.5, 1.0, 2.0]}})
    terms = objective(encoder, batch)
    first, second = pair_embeddings(encoder, batch)
    scores = batch["targets"]["score"]
    expected = {f"cosent@{dim}": weight * cosent(first[:, :dim], second[:, :dim], scores, scale=20.0)
                for dim, weight in zip(DIMS, weights)}  # fmt: skip
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-6), name
    # The gradient of the sum is the reference's, parameter by parameter.
    params = [p for p in encoder.parameters() if p.requires_grad]
    got = torch.autograd.grad(sum(terms.values()), params, allow_unused=True)
    want = torch.autograd.grad(sum(expected.values()), params, allow_unused=True)
    for mine, theirs in zip(got, want):
        if theirs is not None:
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_matryoshka_draws_dims_per_step_of_the_widths():
    encoder, batch = cosent_encoder()
    objective = build_objective("cosent", encoder, wrappers={"matryoshka": {"dims": DIMS, "dims_per_step": 1}})
    drawn = set()
    for seed in range(20):
        torch.manual_seed(seed)
        terms = objective(encoder, batch)
        assert len(terms) == 1
        drawn |= set(terms)
    assert drawn == {f"cosent@{dim}" for dim in DIMS}


def test_default_widths_are_the_full_width_and_its_halves_down_to_8():
    encoder, _ = cosent_encoder()
    assert build_objective("cosent", encoder, wrappers={"matryoshka": {}}).dims == [32, 16, 8]


def test_matryoshka2d_is_the_reference_sum_over_layers_widths_and_the_kl_terms():
    """Every layer and width each step (0 = all): ST's AdaptiveLayerLoss over MatryoshkaLoss, by hand, with
    each shallower layer's embedding taken from a model cut to that depth."""
    encoder, batch = cosent_encoder()
    options = {"dims": [32, 8], "weights": [1.0, 0.5], "layers_per_step": 0, "dims_per_step": 0, "kl_temperature": 0.3,
               "kl_weight": 2.0, "last_layer_weight": 1.5, "prior_layers_weight": 0.7, "layer_weighting": "linear"}  # fmt: skip
    objective = build_objective("cosent", encoder, wrappers={"matryoshka2d": options})
    assert objective.layers == [1, 2]
    terms = objective(encoder, batch)
    scores = batch["targets"]["score"]
    expected = {}
    last = pair_embeddings(encoder, batch)
    for layer, model in [(3, encoder), (1, at_depth(encoder, 1)), (2, at_depth(encoder, 2))]:
        first, second = pair_embeddings(model, batch)
        weight = 1.5 if layer == 3 else 0.7 / (1 + layer) / 2  # linear weighting, 2 layers drawn
        for dim, dim_weight in [(32, 1.0), (8, 0.5)]:
            expected[f"cosent@L{layer}/{dim}"] = weight * dim_weight * cosent(first[:, :dim], second[:, :dim], scores)
        if layer < 3:
            student, teacher = torch.cat([first, second]), torch.cat(last)  # (2B, H): every sentence key's rows
            expected[f"kl@L{layer}"] = 2.0 * 0.3 * kl_by_hand(student, teacher, 0.3)
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), name


def test_matryoshka2d_draws_one_layer_and_one_width_a_step_by_default():
    encoder, batch = cosent_encoder()
    objective = build_objective("cosent", encoder, wrappers={"matryoshka2d": {"dims": DIMS}})
    torch.manual_seed(0)
    names = sorted(objective(encoder, batch))
    assert len(names) == 3 and names[0].startswith("cosent@L") and names[2].startswith("kl@L")
    assert names[1].startswith("cosent@L3/")  # the last layer, at one drawn width


@pytest.mark.parametrize("wrapper", ["matryoshka2d", "starbucks"])
def test_no_gradient_reaches_the_teacher_side_of_the_kl_term(wrapper):
    """The KL term pulls layer 1 towards the last layer: the blocks above layer 1 feed only the teacher's side."""
    encoder, batch = cosent_encoder()
    options = {"dims": DIMS, "layers": [1], "kl_temperature": 0.3} if wrapper == "matryoshka2d" else {"pairs": [[1, 16]]}
    objective = build_objective("cosent", encoder, wrappers={wrapper: options})
    torch.manual_seed(0)
    (kl,) = [value for name, value in objective(encoder, batch).items() if name.startswith("kl@")]
    assert kl.item() > 0
    kl.backward()
    above = [p for block in encoder.backbone.encoder.layer[1:] for p in block.parameters()]
    below = list(encoder.backbone.encoder.layer[0].parameters())
    assert all(p.grad is None or not p.grad.any() for p in above)
    assert all(p.grad is not None and p.grad.any() for p in below)


def test_starbucks_is_the_reference_sum_over_its_pairs():
    encoder, batch = cosent_encoder()
    objective = build_objective("cosent", encoder, wrappers={"starbucks": {
        "pairs": [[1, 8], [2, 16], [3, 32], [3, 8]], "last_layer_weight": 2.0, "kl_weight": 0.5, "kl_temperature": 0.3}})  # fmt: skip
    terms = objective(encoder, batch)
    scores = batch["targets"]["score"]
    last = torch.cat(pair_embeddings(encoder, batch))  # (2B, H)
    first, second = pair_embeddings(encoder, batch)
    expected = {"cosent@L3/32": 2.0 * cosent(first, second, scores), "cosent@L3/8": cosent(first[:, :8], second[:, :8], scores)}
    for layer, dim in [(1, 8), (2, 16)]:
        first, second = pair_embeddings(at_depth(encoder, layer), batch)
        expected[f"cosent@L{layer}/{dim}"] = cosent(first[:, :dim], second[:, :dim], scores)
        shallow = torch.cat([first, second])[:, :dim]  # (2B, d)
        expected[f"kl@L{layer}/{dim}"] = 0.5 * 0.3 * kl_by_hand(shallow, last[:, :dim], 1.0)
    assert set(terms) == set(expected)
    for name, value in expected.items():
        assert terms[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-7), name


def test_starbucks_default_pairs_halve_the_width_per_layer_down():
    encoder, _ = cosent_encoder()
    assert build_objective("cosent", encoder, wrappers={"starbucks": {}}).pairs == [(1, 8), (2, 16), (3, 32)]


def test_the_layer_replay_repeats_the_inner_objectives_random_draws():
    """SimCSE's views are its dropout masks: the layer embeddings come from the recorded pass's masks, and the
    RNG leaves the wrapper where the plain embed leaves it."""
    encoder = make_tiny_encoder("cls", num_hidden_layers=3, hidden_dropout_prob=0.1).train()
    objective = build_objective("simcse", encoder, wrappers={"matryoshka2d": {"dims": DIMS, "layers": [2]}})
    batch = batch_for(objective, encoder)
    torch.manual_seed(3)
    embeddings = objective.embed(encoder, batch)
    after = torch.rand(1)
    torch.manual_seed(3)
    plain = objective.inner.embed(encoder, batch)
    assert torch.rand(1) == after  # the RNG leaves the wrapper where the plain embed leaves it
    for key in objective.sentence_keys:
        torch.testing.assert_close(embeddings[key], plain[key])
    # Layer 2 of the same pass: a cut model under the same dropout draws gives the same rows.
    torch.manual_seed(3)
    cut = objective.inner.embed(at_depth(encoder, 2), batch)
    for key in objective.sentence_keys:
        torch.testing.assert_close(embeddings[f"{key}@layer2"], cut[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("wrapper", "options", "message"), [
    ("matryoshka", {"dims": [64]}, r"dim 64 is outside 1\.\.32"),
    ("matryoshka", {"dims": [0, 16]}, r"dim 0 is outside 1\.\.32"),
    ("matryoshka", {"dims": [32, 16], "weights": [1.0]}, "1 weights for 2 dims"),
    ("matryoshka", {"dims": [16, 16]}, "repeat a width"),
    ("matryoshka2d", {"layers": [3]}, r"layer 3 is outside 1\.\.2"),
    ("matryoshka2d", {"layer_weighting": "cubic"}, "layer_weighting must be one of uniform, linear, log"),
    ("starbucks", {"pairs": [[4, 16]]}, r"layer 4 is outside 1\.\.3"),
    ("starbucks", {"pairs": [[1, 48]]}, r"dim 48 is outside 1\.\.32"),
    ("starbucks", {"pairs": [[1]]}, r"a pair is \[layer, dim\]"),
])  # fmt: skip
def test_bad_options_are_one_line_errors_naming_the_range(wrapper, options, message):
    encoder, _ = cosent_encoder()
    with pytest.raises(CsekitError, match=message):
        build_objective("cosent", encoder, wrappers={wrapper: options})


@pytest.mark.parametrize("name", ["sbert_softmax", "esimcse"])
def test_objectives_that_need_the_full_width_are_refused(name):
    with pytest.raises(CsekitError, match="needs the full embedding width"):
        build_objective(name, make_tiny_encoder(), wrappers={"matryoshka": {}})


def test_two_layer_wrappers_on_one_objective_are_refused():
    encoder, batch = cosent_encoder()
    objective = build_objective("cosent", encoder, wrappers={"matryoshka2d": {}, "starbucks": {}})
    with pytest.raises(CsekitError, match="two layer wrappers"):
        objective.embed(encoder, batch)


def test_normalised_prefixes_give_the_inner_loss_sentence_transformers_computes():
    """sentence-transformers normalises each cut embedding; csekit's cosine losses need not (same loss)."""
    encoder, batch = cosent_encoder()
    objective = build_objective("cosent", encoder, wrappers={"matryoshka": {"dims": [8]}})
    first, second = pair_embeddings(encoder, batch)
    normalised = cosent(F.normalize(first[:, :8], dim=-1), F.normalize(second[:, :8], dim=-1), batch["targets"]["score"])
    assert objective(encoder, batch)["cosent@8"].item() == pytest.approx(normalised.item(), rel=1e-6)


@pytest.fixture
def st_pairs(tmp_path):
    """A dropout-free tiny 3-layer model in csekit and, from its saved folder, in sentence-transformers, with
    scored pairs for both."""
    from sentence_transformers import SentenceTransformer

    encoder = make_tiny_encoder("mean", num_hidden_layers=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    encoder.save(tmp_path / "model")
    model = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    first = ["a man plays the guitar .", "two dogs run .", "the market fell today .", "she slices an onion ."]
    second = ["a man plays music .", "dogs are running .", "stocks dropped .", "a woman cuts an onion ."]
    scores = torch.tensor([0.9, 0.7, 0.5, 0.2])
    batch = {"sent0": _padded(encoder, first), "sent1": _padded(encoder, second), "targets": {"score": scores}}
    return encoder, batch, model, [model.preprocess(first), model.preprocess(second)], scores


def _padded(encoder, texts):
    from csekit.data.collate import pad_batch

    ids = encoder.tokenize(texts)
    return pad_batch([{key: ids[key][i] for key in ids} for i in range(len(texts))], encoder.pad_token_id)


def test_matryoshka_equals_sentence_transformers_matryoshka_loss(st_pairs):
    from sentence_transformers.sentence_transformer.losses import CoSENTLoss, MatryoshkaLoss

    encoder, batch, model, features, scores = st_pairs
    reference = MatryoshkaLoss(model, CoSENTLoss(model), [32, 16, 8], matryoshka_weights=[1.0, 0.5, 2.0])(features, scores)
    ours = build_objective("cosent", encoder, wrappers={"matryoshka": {"dims": [32, 16, 8], "weights": [1.0, 0.5, 2.0]}})
    assert sum(ours(encoder, batch).values()).item() == pytest.approx(reference.item(), rel=1e-5)


def test_matryoshka2d_equals_sentence_transformers_matryoshka2d_loss_at_a_drawn_layer(st_pairs):
    """sentence-transformers draws its layer with Python's random (index 0 would be the embedding output, which
    csekit does not train): seeded to draw layer 2, it computes what csekit's wrapper at layer 2 does."""
    import random

    from sentence_transformers.sentence_transformer.losses import CoSENTLoss, Matryoshka2dLoss

    encoder, batch, model, features, scores = st_pairs
    settings = {"last_layer_weight": 1.5, "prior_layers_weight": 0.7, "kl_temperature": 0.3}
    reference_loss = Matryoshka2dLoss(model, CoSENTLoss(model), [32, 16, 8], n_layers_per_step=1, n_dims_per_step=-1,
                                      kl_div_weight=2.0, layer_weighting="linear", **settings)  # fmt: skip
    seed = next(s for s in range(100) if (random.seed(s), random.sample(range(3), 1))[1] == [2])
    random.seed(seed)
    reference = reference_loss(features, scores)
    ours = build_objective("cosent", encoder, wrappers={"matryoshka2d": {
        "dims": [32, 16, 8], "layers": [2], "dims_per_step": 0, "kl_weight": 2.0, "layer_weighting": "linear", **settings}})  # fmt: skip
    assert sum(ours(encoder, batch).values()).item() == pytest.approx(reference.item(), rel=1e-5)
