"""miCSE: the attention chains as the reference's einops pattern builds them, the mutual-information term
against a per-row numpy estimate, and the attention maps reaching the encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny_encoder

from csekit import CsekitError
from csekit.data.collate import pad_batch
from csekit.objectives import build_objective
from csekit.objectives.micse import MIN_UNEXPLAINED, attention_chains, attention_mutual_information

TEXTS = ["a man plays the guitar .", "two dogs run .", "the market fell today .", "she slices an onion ."]


def test_chains_follow_the_reference_pattern():
    """``(h i) (j m) k t z -> (h k m) i (j t z)`` on one view: row (sentence, head, layer parity), layers m, m + 2, ..."""
    size, layers, heads, length = 2, 4, 3, 2
    attentions = torch.randn(size, layers, heads, length, length)
    chains = attention_chains(attentions)
    assert chains.shape == (size * heads * 2, (layers // 2) * length * length)
    row = 0
    for b in range(size):
        for k in range(heads):
            for m in range(2):
                expected = torch.cat([attentions[b, 2 * j + m, k].flatten() for j in range(layers // 2)])
                torch.testing.assert_close(chains[row], expected, rtol=0, atol=0)
                row += 1


def naive_information(first, second, picks, share):
    """-mean over rows of -1/2 log(1 - r^2), r = numpy's Pearson correlation of the logs, times share^2 + 1e-6."""
    values = []
    for x, y, picked in zip(first, second, picks):
        r = np.corrcoef(np.log(x[picked]), np.log(y[picked]))[0, 1]
        values.append(-0.5 * np.log(max(1 - r**2, MIN_UNEXPLAINED)))
    return -np.mean(values) * (share**2 + 1e-6)


def attention_like(rows, width, zeros, seed):
    """(rows, width) positive weights with ``zeros[r]`` exact zeros in row r (padding), float64."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.rand(rows, width, generator=generator, dtype=torch.float64) + 0.01
    for r, count in enumerate(zeros):
        values[r, :count] = 0.0
    return values


@pytest.mark.parametrize("zeros, samples", [((0, 3, 30, 1), 20), ((25, 30, 28, 26), 20)])
def test_the_information_term_equals_the_per_row_estimate_in_value_and_gradient(zeros, samples):
    """Rows with too few both-positive entries are dropped (first case: row 2); when none has enough (second), all
    rows stay and fewer entries are drawn. The draws: ``samples`` distinct both-positive entries per row."""
    first = attention_like(4, 40, zeros, seed=1).requires_grad_()
    second = attention_like(4, 40, zeros[::-1][:1] + zeros[1:], seed=2).requires_grad_()
    both = (first > 0) & (second > 0)
    counts = both.sum(dim=1)
    kept = counts >= samples
    if not kept.any():
        kept, samples = torch.ones_like(kept), int(counts.min())
    share = (both[kept].sum() / both[kept].numel()).item()
    term = attention_mutual_information(first, second, samples=samples, generator=torch.Generator().manual_seed(7))
    picks = torch.multinomial(both[kept].double(), samples, generator=torch.Generator().manual_seed(7))
    assert all(both[kept][r, picks[r]].all() and len(set(picks[r].tolist())) == samples for r in range(len(picks)))
    x, y = first.detach()[kept].numpy(), second.detach()[kept].numpy()
    expected = naive_information(x, y, picks.numpy(), share)
    assert term.item() == pytest.approx(expected, rel=1e-10)
    # the gradient: the same estimate in torch float64, row by row
    grads = torch.autograd.grad(term, (first, second))
    rows = []
    for r, index in zip(kept.nonzero().flatten().tolist(), picks):
        lx, ly = first[r, index].log(), second[r, index].log()
        lx, ly = lx - lx.mean(), ly - ly.mean()
        rho = (lx * ly).sum() / (lx.norm() * ly.norm())
        rows.append(-0.5 * torch.log(1 - rho**2))
    naive = -torch.stack(rows).mean() * (share**2 + 1e-6)
    for grad, naive_grad in zip(grads, torch.autograd.grad(naive, (first, second))):
        torch.testing.assert_close(grad, naive_grad, rtol=1e-8, atol=1e-12)


def test_identical_views_are_clamped_not_infinite():
    views = attention_like(3, 20, (0, 0, 0), seed=3)
    term = attention_mutual_information(views, views.clone(), samples=10)
    assert torch.isfinite(term) and term.item() == pytest.approx(-0.5 * np.log(1 / MIN_UNEXPLAINED) * (1 + 1e-6))


def tiny_batch(encoder):
    ids = encoder.tokenize(TEXTS)
    return {"sent0": pad_batch([{k: ids[k][i] for k in ids} for i in range(len(TEXTS))], 0)}


def test_the_attention_term_trains_the_encoder_through_eager_attention():
    encoder = make_tiny_encoder(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).train()
    encoder.backbone.set_attn_implementation("sdpa")
    objective = build_objective("micse", encoder, options={"min_layer": 0, "max_layer": 2, "weight": 1.0})
    assert encoder.backbone.config._attn_implementation == "eager"  # the only one that returns attention maps
    batch = tiny_batch(encoder)
    embeddings = objective.embed(encoder, batch)
    length = batch["sent0"]["input_ids"].shape[1]
    assert embeddings["attention1"].shape == (len(TEXTS), 2, 2, length, length)  # (B, layers, heads, T, T)
    assert not torch.equal(embeddings["attention1"], embeddings["attention2"])  # two dropout masks
    objective.loss(embeddings, batch)["attention_mi"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.backbone.encoder.layer[0].attention.parameters())


def test_a_layer_window_the_model_lacks_is_a_one_line_error():
    encoder = make_tiny_encoder()
    for low, high in [(7, 11), (0, 1), (1, 1)]:
        with pytest.raises(CsekitError, match="micse: layers"):
            build_objective("micse", encoder, options={"min_layer": low, "max_layer": high})
