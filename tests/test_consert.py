"""ConSERT: the embedding-layer views, the NT-Xent loss against a naive loop, and the objective."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import make_tiny_encoder
from transformers import RobertaConfig, RobertaModel

import csekit.losses
from csekit.augment.embedding import (
    EMBEDDING_AUGMENTATIONS,
    adversarial_perturbation,
    captured_embedding_output,
    embedding_augmentation,
    embedding_dropout,
    feature_cutoff,
    shuffled_position_ids,
    token_cutoff,
)
from csekit.data.collate import pad_batch
from csekit.errors import CsekitError
from csekit.losses import nt_xent
from csekit.objectives import build_objective

SENTENCES = ["a man plays the guitar .", "two dogs run .", "the stock market fell sharply today , again .",
             "a woman is slicing an onion .", "yes"]  # fmt: skip


def tokens(encoder, texts=SENTENCES):
    ids = encoder.tokenize(texts)
    return pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], encoder.tokenizer.pad_token_id)


def quiet_encoder(pooler: str = "mean"):
    return make_tiny_encoder(pooler, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).train()


def mask_of(lengths, length=12):
    return (torch.arange(length) < torch.tensor(lengths).unsqueeze(1)).long()  # (B, T), right padding


def seeded(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------- the views
AUGMENT = {
    "token_shuffle": lambda x, mask, g: shuffled_position_ids(torch.arange(mask.shape[1]), mask, generator=g),
    "token_cutoff": lambda x, mask, g: token_cutoff(x, mask, 0.15, generator=g),
    "feature_cutoff": lambda x, mask, g: feature_cutoff(x, 0.2, generator=g),
    "dropout": lambda x, mask, g: embedding_dropout(x, mask, 0.2, generator=g),
}


@pytest.mark.parametrize("name", sorted(AUGMENT))
def test_each_view_is_deterministic_given_a_seed_and_differs_across_seeds(name):
    x, mask = torch.randn(4, 12, 16) + 3.0, mask_of([12, 9, 7, 10])
    first, again = AUGMENT[name](x, mask, seeded(1)), AUGMENT[name](x, mask, seeded(1))
    assert torch.equal(first, again)
    assert any(not torch.equal(first, AUGMENT[name](x, mask, seeded(seed))) for seed in range(2, 5))


@pytest.mark.parametrize("name", ["token_cutoff", "feature_cutoff", "dropout"])
def test_padding_is_never_touched_and_special_tokens_are_cut_like_words_as_in_the_reference(name):
    x, mask = torch.randn(3, 12, 16) + 3.0, mask_of([5, 8, 12])
    cls_cut = False
    for seed in range(40):
        out = AUGMENT[name](x, mask, seeded(seed))
        padding = mask == 0
        if name != "feature_cutoff":  # feature cutoff zeroes whole columns, padding rows included
            assert torch.equal(out[padding], x[padding])
        cls_cut |= bool((out[:, 0] == 0).any())
    assert cls_cut  # [CLS] (position 0) is a candidate: the reference counts the attention mask's ones


def test_cutoff_and_dropout_zero_exactly_the_reference_counts():
    x, mask = torch.randn(3, 12, 20) + 3.0, mask_of([5, 8, 12])
    lengths = mask.sum(dim=1)
    rows = (token_cutoff(x, mask, 0.3, generator=seeded(0)) == 0).all(dim=-1).sum(dim=1)
    assert rows.tolist() == [int(n * 0.3) for n in lengths.tolist()]
    columns = (feature_cutoff(x, 0.25, generator=seeded(0)) == 0).all(dim=1).sum(dim=1)
    assert columns.tolist() == [int(20 * 0.25)] * 3
    elements = (embedding_dropout(x, mask, 0.2, generator=seeded(0)) == 0).sum(dim=(1, 2))
    assert elements.tolist() == [int(n * 20 * 0.2) for n in lengths.tolist()]
    kept = embedding_dropout(x, mask, 0.2, generator=seeded(0))
    assert torch.equal(kept[kept != 0], x[kept != 0])  # no 1 / (1 - rate) rescaling, unlike nn.Dropout


@pytest.mark.parametrize("length", [1, 2, 3, 7])
def test_token_cutoff_never_empties_a_sentence(length):
    x, mask = torch.randn(2, 8, 4) + 3.0, mask_of([length, 8], 8)
    for seed in range(20):
        out = token_cutoff(x, mask, 0.99, generator=seeded(seed))
        assert ((out != 0).any(dim=-1) & mask.bool()).sum(dim=1).min() >= 1


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_shuffle_permutes_positions_within_each_sentences_real_tokens(padding_side):
    mask = mask_of([12, 9, 1, 6])
    if padding_side == "left":
        mask = mask.flip(1)
    base = torch.arange(12).expand(4, 12)
    for seed in range(10):
        shuffled = shuffled_position_ids(base, mask, generator=seeded(seed))
        for row in range(4):
            real = mask[row].bool()
            assert sorted(shuffled[row][real].tolist()) == sorted(base[row][real].tolist())
            assert torch.equal(shuffled[row][~real], base[row][~real])
    assert not torch.equal(shuffled_position_ids(base, mask, generator=seeded(0)), base)
    first = mask.argmax(dim=1)  # [CLS]'s slot: it is shuffled with the words, as in the reference
    moved = [shuffled_position_ids(base, mask, generator=seeded(seed))[0, first[0]].item() for seed in range(10)]
    assert any(position != first[0].item() for position in moved)


def test_roberta_positions_start_after_the_padding_index_as_the_model_counts_them():
    from csekit.augment.embedding import _default_position_ids

    config = RobertaConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=32, max_position_embeddings=40, pad_token_id=1)  # fmt: skip
    embeddings = RobertaModel(config).embeddings
    input_ids = torch.tensor([[0, 5, 6, 2, 1, 1], [0, 7, 2, 1, 1, 1]])
    expected = embeddings.create_position_ids_from_input_ids(input_ids, padding_idx=1)
    assert torch.equal(_default_position_ids(embeddings, input_ids, input_ids.ne(1).long()), expected)


# ----------------------------------------------------------------------------------- the hooks
def test_hooks_apply_the_view_to_the_embedding_output_and_are_removed_after_the_block():
    encoder = quiet_encoder()
    batch = tokens(encoder)
    module = encoder.backbone.embeddings
    with torch.no_grad():
        plain = encoder(**batch)
        with captured_embedding_output(encoder) as clean:
            encoder(**batch)
        with embedding_augmentation(encoder, "feature_cutoff", batch["attention_mask"], generator=seeded(3)):
            with captured_embedding_output(encoder) as seen:  # runs after the augmentation's hook
                augmented = encoder(**batch)
        torch.testing.assert_close(seen[0], feature_cutoff(clean[0], 0.2, generator=seeded(3)))
        assert not torch.allclose(augmented, plain)
        with pytest.raises(RuntimeError, match="inside"):
            with embedding_augmentation(encoder, "token_cutoff", batch["attention_mask"]):
                raise RuntimeError("inside")
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert torch.equal(encoder(**batch), plain)  # the plain forward is unchanged afterwards


def test_shuffle_hook_equals_passing_shuffled_position_ids_to_the_backbone():
    encoder = quiet_encoder()
    batch = tokens(encoder)
    mask = batch["attention_mask"]
    with torch.no_grad(), embedding_augmentation(encoder, "token_shuffle", mask, generator=seeded(5)):
        shuffled = encoder(**batch)
    positions = shuffled_position_ids(torch.arange(mask.shape[1]), mask, generator=seeded(5))
    with torch.no_grad():
        states = encoder.backbone(**batch, position_ids=positions).last_hidden_state
    expected = (states * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)  # (B, H) mean pooling
    torch.testing.assert_close(shuffled, expected)


def test_shuffle_refuses_embeddings_without_position_ids():
    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embeddings = torch.nn.Linear(2, 2)

    holder = torch.nn.Module()
    holder.backbone = Backbone()
    with pytest.raises(CsekitError, match="absolute position embeddings"):
        with embedding_augmentation(holder, "token_shuffle", torch.ones(1, 2)):
            pass


# ----------------------------------------------------------------------------------- the loss
def naive_nt_xent(view1, view2, temperature):
    """Both directions of SimCLR's NT-Xent with loops, in float64: each direction a mean over its B anchors."""

    def sim(a, b):
        return torch.dot(a, b) / (a.norm() * b.norm()) / temperature

    view1, view2 = view1.double(), view2.double()
    size, total = len(view1), 0.0
    for anchors, others in ((view1, view2), (view2, view1)):
        for i in range(size):
            positive = sim(anchors[i], others[i])
            terms = [sim(anchors[i], others[j]) for j in range(size)]
            terms += [sim(anchors[i], anchors[j]) for j in range(size) if j != i]
            total = total - (positive - torch.logsumexp(torch.stack(terms), 0)) / size
    return total


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_nt_xent_matches_a_naive_loop_in_value_and_gradient(temperature):
    torch.manual_seed(0)
    view1, view2 = torch.randn(6, 8, requires_grad=True), torch.randn(6, 8, requires_grad=True)
    loss = nt_xent(view1, view2, temperature, reduction="sum_of_directions")
    expected = naive_nt_xent(view1, view2, temperature)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    grads = torch.autograd.grad(loss, [view1, view2])
    expected_grads = torch.autograd.grad(expected, [view1, view2])
    for grad, reference in zip(grads, expected_grads):
        torch.testing.assert_close(grad, reference.float(), atol=1e-5, rtol=1e-4)


def test_nt_xent_equals_the_reference_formula_with_its_large_number_mask():
    # AdvCLSoftmaxLoss._contrastive_loss_forward: [ab | aa - 1e9 I] and [ba | bb - 1e9 I], two cross-entropies summed.
    torch.manual_seed(2)
    view1, view2 = torch.randn(5, 8), torch.randn(5, 8)
    a, b = torch.nn.functional.normalize(view1, dim=-1), torch.nn.functional.normalize(view2, dim=-1)
    eye, labels = torch.eye(5), torch.arange(5)
    loss_a = torch.nn.functional.cross_entropy(torch.cat([a @ b.T, a @ a.T - eye * 1e9 * 0.1], 1) / 0.1, labels)
    loss_b = torch.nn.functional.cross_entropy(torch.cat([b @ a.T, b @ b.T - eye * 1e9 * 0.1], 1) / 0.1, labels)
    assert nt_xent(view1, view2, 0.1, reduction="sum_of_directions").item() == pytest.approx((loss_a + loss_b).item(), abs=1e-5)


def test_nt_xent_over_two_ranks_averages_to_the_single_process_loss(monkeypatch):
    torch.manual_seed(1)
    view1, view2, size, world = torch.randn(8, 6), torch.randn(8, 6), 4, 2
    rank = {"now": 0}

    def fake_gather(local):  # every rank's candidate block [view 2; view 1], in rank order
        blocks = [torch.cat([view2[k * size : (k + 1) * size], view1[k * size : (k + 1) * size]])
                  for k in range(world)]  # fmt: skip
        blocks[rank["now"]] = local
        return torch.cat(blocks)

    monkeypatch.setattr(csekit.losses, "get_world_size", lambda: world)
    monkeypatch.setattr(csekit.losses, "get_rank", lambda: rank["now"])
    monkeypatch.setattr(csekit.losses, "all_gather_with_grad", fake_gather)
    per_rank = []
    for r in range(world):
        rank["now"] = r
        per_rank.append(nt_xent(view1[r * size : (r + 1) * size], view2[r * size : (r + 1) * size], 0.1,
                                reduction="sum_of_directions"))  # fmt: skip
    monkeypatch.setattr(csekit.losses, "get_world_size", lambda: 1)
    single = nt_xent(view1, view2, 0.1, reduction="sum_of_directions")
    assert (sum(per_rank) / world).item() == pytest.approx(single.item(), abs=1e-5)


# ----------------------------------------------------------------------------------- the objective
def test_objective_loss_is_the_weighted_nt_xent_of_its_two_views():
    encoder = quiet_encoder()
    objective = build_objective("consert", encoder, options={"temperature": 0.1})
    assert objective.augmentations == ("feature_cutoff", "token_shuffle") and objective.supports_grad_cache
    embeddings = objective.embed(encoder, {"sent0": tokens(encoder)})
    loss = objective.loss(embeddings, {})["contrastive"]
    expected = 0.15 * naive_nt_xent(embeddings["view1"], embeddings["view2"], 0.1)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("pair", list(itertools.combinations_with_replacement(EMBEDDING_AUGMENTATIONS, 2)))
def test_any_two_augmentations_compose_and_train_the_encoder(pair):
    encoder = make_tiny_encoder("mean").train()
    objective = build_objective("consert", encoder, options={"augmentations": list(pair), "temperature": 0.1})
    terms = objective(encoder, {"sent0": tokens(encoder)})
    assert torch.isfinite(terms["contrastive"])
    terms["contrastive"].backward()
    assert all(p.grad is not None for p in encoder.backbone.encoder.parameters())
    assert objective.supports_grad_cache == ("adversarial" not in pair)
    module = encoder.backbone.embeddings
    assert not module._forward_hooks and not module._forward_pre_hooks


@pytest.mark.parametrize("partner", ["none", "feature_cutoff"])
def test_adversarial_view_equals_a_manual_fast_gradient_value_step(partner):
    encoder = quiet_encoder()
    batch = tokens(encoder)
    mask = batch["attention_mask"]
    objective = build_objective("consert", encoder, options={"augmentations": [partner, "adversarial"],
                                                             "noise_norm": 0.5, "temperature": 0.1})  # fmt: skip
    torch.manual_seed(7)
    views = objective.embed(encoder, {"sent0": batch})
    assert all(p.grad is None for p in encoder.parameters())  # the attack's gradient never reaches the weights

    # By hand: the clean embedding output as a leaf, the loss gradient there, one normalised step.
    leaf = encoder.backbone.embeddings(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"])
    leaf = leaf.detach().requires_grad_()
    torch.manual_seed(7)
    with embedding_augmentation(encoder, partner, mask):
        other = encoder(**batch)
    with embedding_augmentation(encoder, "adversarial", mask, replacement=leaf):
        clean = encoder(**batch)
    attack = nt_xent(other.detach(), clean, 0.1, reduction="sum_of_directions", gather=False)
    (gradient,) = torch.autograd.grad(attack, leaf)
    noise = 0.5 * gradient / (gradient.norm(dim=-1, keepdim=True) + 1e-10)
    with torch.no_grad(), embedding_augmentation(encoder, "adversarial", mask, replacement=leaf + noise):
        expected = encoder(**batch)
    torch.testing.assert_close(views["view2"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(views["view1"], other, atol=1e-5, rtol=1e-5)
    norms = noise.norm(dim=-1)  # (B, T): noise_norm on every real token, nothing on padding
    torch.testing.assert_close(norms[mask.bool()], torch.full_like(norms[mask.bool()], 0.5))
    assert torch.equal(norms[~mask.bool()], torch.zeros_like(norms[~mask.bool()]))


def test_adversarial_perturbation_has_no_graph_and_is_scaled_per_token():
    gradient = torch.randn(2, 3, 4, requires_grad=True) * 5
    noise = adversarial_perturbation(gradient, 2.0)
    assert not noise.requires_grad
    torch.testing.assert_close(noise.norm(dim=-1), torch.full((2, 3), 2.0))


def test_bad_options_are_one_line_errors_and_a_comma_string_is_two_views():
    encoder = quiet_encoder()
    with pytest.raises(CsekitError, match="unknown embedding augmentation 'shufle'"):
        build_objective("consert", encoder, options={"augmentations": ["shufle", "none"]})
    with pytest.raises(CsekitError, match="two augmentations"):
        build_objective("consert", encoder, options={"augmentations": ["none", "dropout", "token_cutoff"]})
    with pytest.raises(CsekitError, match="token_cutoff rate"):
        build_objective("consert", encoder, options={"token_cutoff_rate": 1.0})
    objective = build_objective("consert", encoder, options={"augmentations": "token_shuffle, token_cutoff"})
    assert objective.augmentations == ("token_shuffle", "token_cutoff")
