"""info_nce against a naive float64 reference: plain, hard negatives, weights, masks, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from csekit.losses import cosine_similarity_matrix, hard_negative_weights, info_nce


def naive_info_nce(anchors, candidates, temperature, *, weights=None, added=None) -> float:
    """-log(w_ii exp(s_ii / t + a_ii) / sum_j w_ij exp(s_ij / t + a_ij)), averaged, with python loops."""
    anchors, candidates = anchors.detach().double(), candidates.detach().double()
    weights = torch.ones(len(anchors), len(candidates)) if weights is None else weights.detach()
    added = torch.zeros(len(anchors), len(candidates)) if added is None else added.detach()
    losses = []
    for i, anchor in enumerate(anchors):
        terms = []
        for j, candidate in enumerate(candidates):
            cosine = float(anchor @ candidate / (anchor.norm() * candidate.norm()))
            terms.append(float(weights[i, j]) * math.exp(cosine / temperature + float(added[i, j])))
        losses.append(-math.log(terms[i] / sum(terms)))
    return sum(losses) / len(losses)


@pytest.fixture
def embeddings():
    generator = torch.Generator().manual_seed(0)
    anchors = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    # 5 positives, then 5 hard negatives.
    candidates = torch.randn(10, 8, generator=generator, dtype=torch.float64)
    return anchors, candidates


def test_cosine_similarity_matrix(embeddings):
    anchors, candidates = embeddings
    expected = torch.nn.functional.cosine_similarity(anchors[:, None], candidates[None], dim=-1)
    torch.testing.assert_close(cosine_similarity_matrix(anchors, candidates), expected)


@pytest.mark.parametrize("num_candidates", [5, 10], ids=["in-batch", "hard-negatives"])
@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_info_nce_matches_naive(embeddings, num_candidates, temperature):
    anchors, candidates = embeddings[0], embeddings[1][:num_candidates]
    loss = info_nce(anchors, candidates, temperature)
    assert loss.shape == ()
    assert loss.item() == pytest.approx(naive_info_nce(anchors, candidates, temperature), rel=1e-12)


def test_temperature_scales_the_logits(embeddings):
    anchors, candidates = embeddings
    # Dividing by t is the same as stretching cosine similarities: t = 0.1 on s equals t = 1 on 10 s,
    # which the naive reference reaches through the additive term.
    similarities = cosine_similarity_matrix(anchors, candidates)
    stretched = naive_info_nce(anchors, candidates, 1.0, added=9 * similarities)
    assert info_nce(anchors, candidates, 0.1).item() == pytest.approx(stretched, rel=1e-12)
    assert info_nce(anchors, candidates, 0.05).item() != pytest.approx(stretched)


def test_weights_multiply_the_exp_terms(embeddings):
    anchors, candidates = embeddings
    weights = torch.rand(5, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.5
    loss = info_nce(anchors, candidates, 0.05, weights=weights)
    assert loss.item() == pytest.approx(naive_info_nce(anchors, candidates, 0.05, weights=weights), rel=1e-12)


def test_zero_weight_masks_a_candidate_without_nan_gradients(embeddings):
    anchors, candidates = (tensor.clone().requires_grad_() for tensor in embeddings)
    weights = torch.ones(5, 10, dtype=torch.float64)
    weights[0, 3] = weights[2, 7] = 0.0
    weights.requires_grad_()
    loss = info_nce(anchors, candidates, 0.05, weights=weights)
    # Masking == leaving the candidate out of that anchor's denominator.
    assert loss.item() == pytest.approx(naive_info_nce(anchors, candidates, 0.05, weights=weights), rel=1e-12)
    loss.backward()
    for tensor in (anchors, candidates, weights):
        assert torch.isfinite(tensor.grad).all()
    assert weights.grad[0, 3] == 0 and weights.grad[2, 7] == 0


def test_simcse_hard_negative_weight_is_additive_on_the_logit(embeddings):
    anchors, candidates = embeddings
    weight = 0.7
    weights = hard_negative_weights(5, 10, weight, dtype=torch.float64)
    # SimCSE's cl_forward: zeros for the in-batch block, w on the diagonal of the hard-negative block.
    added = torch.zeros(5, 10, dtype=torch.float64)
    added[range(5), [5 + i for i in range(5)]] = weight
    expected = naive_info_nce(anchors, candidates, 0.05, added=added)
    assert info_nce(anchors, candidates, 0.05, weights=weights).item() == pytest.approx(expected, rel=1e-12)


def test_hard_negative_weights_layout():
    weights = hard_negative_weights(2, 6, math.log(3.0))
    expected = torch.tensor([[1.0, 1.0, 3.0, 1.0, 3.0, 1.0], [1.0, 1.0, 1.0, 3.0, 1.0, 3.0]])
    torch.testing.assert_close(weights, expected)


def test_gradcheck():
    generator = torch.Generator().manual_seed(2)
    anchors, candidates, weights = (
        torch.randn(*shape, generator=generator, dtype=torch.float64) for shape in [(3, 4), (5, 4), (3, 5)]
    )
    inputs = (anchors, candidates, weights.abs() + 0.5)
    for tensor in inputs:
        tensor.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, c, w: info_nce(a, c, 0.5, weights=w), inputs)


def test_shape_errors(embeddings):
    anchors, candidates = embeddings
    with pytest.raises(ValueError, match="each anchor needs a positive"):
        info_nce(anchors, candidates[:3])
    with pytest.raises(ValueError, match="weights must be"):
        info_nce(anchors, candidates, weights=torch.ones(5, 5))


def naive_similarity_kl(student, teacher, temperature) -> float:
    """The KL of each row's distribution over the other rows, summed by hand in float64."""
    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    size, total = len(student), 0.0
    for i in range(size):
        others = [j for j in range(size) if j != i]
        s = torch.tensor([cos(student[i], student[j]) / temperature for j in others], dtype=torch.float64)
        t = torch.tensor([cos(teacher[i], teacher[j]) / temperature for j in others], dtype=torch.float64)
        p_t, p_s = torch.softmax(t, 0), torch.softmax(s, 0)
        total += float((p_t * (p_t.log() - p_s.log())).sum())
    return total / size


def test_similarity_kl_matches_naive_and_leaves_the_teacher_alone():
    from csekit.losses import similarity_kl

    torch.manual_seed(0)
    student = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(6, 12, dtype=torch.float64, requires_grad=True)  # another width
    loss = similarity_kl(student, teacher, temperature=0.1)
    assert loss.item() == pytest.approx(naive_similarity_kl(student.detach(), teacher.detach(), 0.1), rel=1e-10)
    loss.backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0
    # A student whose similarities are the teacher's has nothing to learn.
    assert similarity_kl(teacher.detach(), teacher.detach() * 3).item() == pytest.approx(0.0, abs=1e-6)
