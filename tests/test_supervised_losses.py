"""The losses on labelled pairs against naive references (loops over the papers' sums, in float64), in value
and gradient; CoSENT and AnglE against sentence-transformers' own losses; which pair must score higher."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_encoder
from sentence_transformers.sentence_transformer.losses import AnglELoss, CoSENTLoss, MultipleNegativesRankingLoss
from torch.nn import functional as F

from csekit.losses import (
    angle_ranking,
    angle_similarity,
    cosent,
    cosine_regression,
    improved_contrastive,
    paired_in_batch_negatives,
)
from csekit.objectives import build_objective

SIZE, WIDTH = 6, 8
SCORES = torch.tensor([0.9, 0.1, 0.5, 0.5, 1.0, 0.0], dtype=torch.float64)  # a tie, both ends
#: Options for losses on embeddings made up without texts (AnglE otherwise reads the batch's token ids for repeats).
TEXT_FREE = {"angle": {"duplicates_as_positives": False}}


def pairs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    first = torch.randn(SIZE, WIDTH, generator=generator, dtype=torch.float64)
    second = first + 0.8 * torch.randn(SIZE, WIDTH, generator=generator, dtype=torch.float64)
    return first.requires_grad_(), second.requires_grad_()


def cos(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x * y).sum() / (x.norm() * y.norm())


def assert_same_loss_and_gradient(ours, reference, *tensors) -> None:
    """``ours`` and ``reference`` (functions of ``tensors``) agree in value and in gradient w.r.t. each."""
    value = ours(*tensors)
    grads = torch.autograd.grad(value, tensors)
    expected = reference(*tensors)
    expected_grads = torch.autograd.grad(expected, tensors)
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=1e-12)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ naive references
def naive_regression(first, second):
    return sum((cos(first[i], second[i]) - SCORES[i]) ** 2 for i in range(SIZE)) / SIZE


def naive_ranking(similarity, scale):
    """log(1 + sum over (i, j) with s_i > s_j of exp(scale * (sim_j - sim_i))), one term at a time."""
    total = torch.ones((), dtype=torch.float64)
    for i in range(SIZE):
        for j in range(SIZE):
            if SCORES[i] > SCORES[j]:
                total = total + torch.exp(scale * (similarity(j) - similarity(i)))
    return torch.log(total)


def reference_angle(first, second, i):
    """AnglE's reference ``angle_loss`` for pair i, step by step: (a + bi) / (c + di), normalised, summed."""
    a, b = first[i].chunk(2)
    c, d = second[i].chunk(2)
    z = (c**2 + d**2).sum()
    real, imaginary = (a * c + b * d) / z, (b * c - a * d) / z
    dz, dw = (a**2 + b**2).sum().sqrt(), (c**2 + d**2).sum().sqrt()
    return torch.cat([real / (dz / dw), imaginary / (dz / dw)]).sum().abs()


def complex_angle(first, second, i):
    """The same from complex numbers: |Re + Im of sum_k u_k conj(v_k)| / (|u| |v|)."""
    u, v = torch.complex(*first[i].chunk(2)), torch.complex(*second[i].chunk(2))
    product = (u * v.conj()).sum()
    return (product.real + product.imag).abs() / (first[i].norm() * second[i].norm())


def naive_in_batch(first, second, positive, scale, duplicates=None):
    """Per sentence: -log p(partner) when its pair is positive, -log p(k) for every other row k with its text."""
    sentences = [*first, *second]  # row i and row SIZE + i are one pair
    total = torch.zeros((), dtype=torch.float64)
    for row, anchor in enumerate(sentences):
        others = sum(torch.exp(scale * cos(anchor, other)) for k, other in enumerate(sentences) if k != row)
        targets = [(row + SIZE) % (2 * SIZE)] if positive[row % SIZE] else []
        if duplicates is not None:
            targets += [k for k in range(2 * SIZE) if k != row and duplicates[row][k]]
        for target in targets:
            total = total - torch.log(torch.exp(scale * cos(anchor, sentences[target])) / others)
    return total / (2 * SIZE)


def reference_in_batch(first, second, labels, scale, similar=None):
    """AnglE's reference ``in_batch_negative_loss`` for 0/1 labels, transcribed: zigzag rows, the target
    matrix from index products plus ``similar_matrix``, the diagonal pushed down by 1e12, categorical
    cross-entropy, mean."""
    outputs = torch.stack([first, second], dim=1).reshape(2 * SIZE, -1)  # u0, v0, u1, v1, ...
    y_true = labels.repeat_interleave(2)[:, None].int()  # (2B, 1)
    indices = torch.arange(2 * SIZE).int()
    columns = indices[None, :] * y_true.T + (y_true.T == 0).int() * -2
    partners = (indices + 1 - indices % 2 * 2)[:, None] * y_true + (y_true == 0).int() * -1
    target = (columns == partners).to(torch.float64)  # (2B, 2B)
    if similar is not None:
        target = target + similar
    normalized = F.normalize(outputs, dim=1)
    similarities = (normalized @ normalized.T - torch.eye(2 * SIZE, dtype=torch.float64) * 1e12) * scale
    return -(F.log_softmax(similarities, dim=1) * target).sum(dim=1).mean()


def zigzag(matrix):
    """A (2B, 2B) matrix over cat([first, second]) rows, reordered to the reference's u0, v0, u1, v1, ..."""
    order = torch.stack([torch.arange(SIZE), torch.arange(SIZE) + SIZE], dim=1).flatten()
    return matrix[order][:, order]


def naive_improved_contrastive(queries, documents, temperature):
    """GTE's Z_i written out: q_i -> every d_j, q_i -> q_j (j != i), every q_j -> d_i, d_j -> d_i (j != i)."""
    total = torch.zeros((), dtype=torch.float64)
    for i in range(SIZE):
        q, d = queries[i], documents[i]
        partition = sum(torch.exp(cos(q, documents[j]) / temperature) for j in range(SIZE))
        partition = partition + sum(torch.exp(cos(q, queries[j]) / temperature) for j in range(SIZE) if j != i)
        partition = partition + sum(torch.exp(cos(queries[j], d) / temperature) for j in range(SIZE))
        partition = partition + sum(torch.exp(cos(documents[j], d) / temperature) for j in range(SIZE) if j != i)
        total = total - torch.log(torch.exp(cos(q, d) / temperature) / partition)
    return total / SIZE


# ------------------------------------------------------------------ each loss against its reference
def test_cosine_regression_is_the_mean_squared_error_of_the_cosine():
    assert_same_loss_and_gradient(lambda u, v: cosine_regression(u, v, SCORES), naive_regression, *pairs())


@pytest.mark.parametrize("scale", [20.0, 1.0])
def test_cosent_against_its_sum_over_ordered_pairs(scale):
    def naive(u, v):
        return naive_ranking(lambda i: cos(u[i], v[i]), scale)

    assert_same_loss_and_gradient(lambda u, v: cosent(u, v, SCORES, scale=scale), naive, *pairs(1))


def test_angle_similarity_is_the_reference_quotient_and_the_complex_product():
    first, second = pairs(2)
    ours = angle_similarity(first, second)
    for i in range(SIZE):
        torch.testing.assert_close(ours[i], reference_angle(first, second, i), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours[i], complex_angle(first, second, i), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(angle_similarity(first, first), torch.ones(SIZE, dtype=torch.float64))
    with pytest.raises(ValueError, match="odd"):
        angle_similarity(first[:, :7], second[:, :7])


@pytest.mark.parametrize("scale", [1.0, 20.0])
def test_angle_ranking_against_its_sum_over_ordered_pairs(scale):
    def naive(u, v):
        return naive_ranking(lambda i: reference_angle(u, v, i), scale)

    assert_same_loss_and_gradient(lambda u, v: angle_ranking(u, v, SCORES, scale=scale), naive, *pairs(3))


@pytest.mark.parametrize("repeated", [False, True])
def test_paired_in_batch_negatives_against_a_loop_and_the_reference_target_matrix(repeated):
    positive = SCORES >= 0.2
    first, second = pairs(4)
    mask = similar = None
    if repeated:  # sentence 0 recurs as sentence 9 (the second side of pair 3), whose pair is no positive
        mask = torch.zeros(2 * SIZE, 2 * SIZE, dtype=torch.bool)
        mask[0, 9] = mask[9, 0] = True
        similar = zigzag(mask).to(torch.float64)

    def ours(u, v):
        return paired_in_batch_negatives(u, v, positive, scale=20.0, duplicates=mask)

    assert_same_loss_and_gradient(ours, lambda u, v: naive_in_batch(u, v, positive, 20.0, mask), first, second)
    # With 0/1 labels the reference's index products cannot collide: its target matrix is the partner's.
    labels = positive.to(torch.int64)
    assert_same_loss_and_gradient(ours, lambda u, v: reference_in_batch(u, v, labels, 20.0, similar), first, second)


def test_angle_finds_the_batchs_repeated_sentences_as_its_reference_does():
    from csekit.data.collate import pad_batch
    from csekit.objectives.angle import same_text

    encoder = make_tiny_encoder()
    texts = [("a man plays .", "a dog runs ."), ("a dog runs .", "the sun sets ."), ("a man plays .", "a man plays .")]

    def column(side):
        ids = encoder.tokenize([pair[side] for pair in texts])
        return pad_batch([{key: ids[key][i] for key in ids} for i in range(len(texts))], encoder.pad_token_id)

    same = same_text({"sent0": column(0), "sent1": column(1)}, encoder.pad_token_id)  # rows: 3 firsts, 3 seconds
    flat = [pair[0] for pair in texts] + [pair[1] for pair in texts]
    assert same.tolist() == [[a == b for b in flat] for a in flat]


@pytest.mark.parametrize("temperature", [0.01, 0.5])
def test_improved_contrastive_against_the_papers_partition_function(temperature):
    assert_same_loss_and_gradient(lambda q, d: improved_contrastive(q, d, temperature),
                                  lambda q, d: naive_improved_contrastive(q, d, temperature), *pairs(5))  # fmt: skip


# ------------------------------------------------------------------ against sentence-transformers
def test_cosent_angle_and_improved_contrastive_equal_sentence_transformers_losses():
    first, second = (tensor.detach() for tensor in pairs(6))
    torch.testing.assert_close(cosent(first, second, SCORES), CoSENTLoss(None, scale=20.0).compute_loss_from_embeddings(
        [first, second], SCORES))  # fmt: skip
    torch.testing.assert_close(angle_ranking(first, second, SCORES, scale=1.0),
                               AnglELoss(None, scale=1.0).compute_loss_from_embeddings([first, second], SCORES))  # fmt: skip
    joint = MultipleNegativesRankingLoss(None, scale=100.0, partition_mode="joint",
                                         directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc"))  # fmt: skip
    torch.testing.assert_close(improved_contrastive(first, second, 0.01),
                               joint.compute_loss_from_embeddings([first, second], None))  # fmt: skip


# ------------------------------------------------------------------ which pair must score higher
def test_the_ranking_losses_are_lower_when_the_higher_scored_pair_is_the_more_similar():
    close, far = torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    anchors = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    seconds = torch.cat([close + 0.1, far + 0.1])  # pair 0: cosine ~1, pair 1: cosine ~0
    right, flipped = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])  # the gold scores, and the wrong way round
    for loss in (cosent, angle_ranking):
        assert loss(anchors, seconds, right) < loss(anchors, seconds, flipped), loss.__name__
    for name in ("cosent", "angle"):
        objective = build_objective(name, make_tiny_encoder(), options=TEXT_FREE.get(name))
        embeddings = {"sent0": anchors, "sent1": seconds}
        assert (sum(objective.loss(embeddings, {"targets": {"score": right}}).values())
                < sum(objective.loss(embeddings, {"targets": {"score": flipped}}).values())), name  # fmt: skip


@pytest.mark.parametrize("name", ["cosent", "angle", "sbert_regression"])
def test_after_a_gradient_step_the_higher_scored_pair_has_the_higher_cosine(name):
    """Two pairs start equally similar, in orthogonal planes (nothing but the scores tells them apart); one
    step on the loss must leave the pair with the higher gold score the more similar one, either way round."""
    objective = build_objective(name, make_tiny_encoder(), options=TEXT_FREE.get(name))
    eye = torch.eye(32)
    start_first = torch.stack([eye[0], eye[2]])  # (2, 32)
    start_second = torch.stack([0.6 * eye[0] + 0.8 * eye[1], 0.6 * eye[2] + 0.8 * eye[3]])  # both cosines 0.6
    for high in (0, 1):
        first, second = start_first.clone().requires_grad_(), start_second.clone().requires_grad_()
        scores = torch.tensor([0.9, 0.3]) if high == 0 else torch.tensor([0.3, 0.9])
        loss = sum(objective.loss({"sent0": first, "sent1": second}, {"targets": {"score": scores}}).values())
        loss.backward()
        with torch.no_grad():
            cosines = F.cosine_similarity(first - 0.01 * first.grad, second - 0.01 * second.grad, dim=-1)
        assert cosines[high] > cosines[1 - high], (name, high, cosines.tolist())


def test_the_angle_term_raises_the_angle_similarity_of_the_higher_scored_pair():
    torch.manual_seed(1)
    first, second = torch.randn(2, 16, requires_grad=True), torch.randn(2, 16)
    before = angle_similarity(first, second).detach()
    high = int(before.argmin())  # give the higher score to the pair that is less similar now
    scores = torch.zeros(2)
    scores[high] = 1.0
    angle_ranking(first, second, scores, scale=20.0).backward()
    with torch.no_grad():
        after = angle_similarity(first - 0.05 * first.grad, second)
    assert after[high] - before[high] > 0 > after[1 - high] - before[1 - high]
    assert math.isfinite(float(after.sum()))
