"""RankCSE: ListNet, ListMLE and the JS divergence against naive loops (value and gradient), the loss term by
term with two weighted teachers, and two gloo ranks training like one process."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_encoder, train_single_and_two_ranks
from test_objectives_contract import batch_for

from csekit.errors import CsekitError
from csekit.losses import jensen_shannon, listmle, listnet
from csekit.objectives import build_objective


def logits(seed: int, rows: int = 4, columns: int = 6) -> torch.Tensor:
    torch.manual_seed(seed)
    return (torch.randn(rows, columns, dtype=torch.float64) * 3).requires_grad_()


def assert_same_value_and_gradient(fast, naive, inputs):
    assert fast.item() == pytest.approx(naive.item(), abs=1e-10)
    for got, want in zip(torch.autograd.grad(fast, inputs), torch.autograd.grad(naive, inputs)):
        torch.testing.assert_close(got, want)


def test_listnet_matches_a_loop_with_the_own_sentence_left_out():
    student, teacher = logits(0), logits(1).detach()
    exclude = torch.zeros(4, 6, dtype=torch.bool)
    exclude[torch.arange(4), torch.arange(4)] = True
    naive = 0.0
    for i in range(4):
        kept = [j for j in range(6) if not exclude[i, j]]
        t_norm = sum(math.exp(teacher[i, j]) for j in kept)
        s_log_norm = torch.log(sum(torch.exp(student[i, j]) for j in kept))
        naive = naive - sum(math.exp(teacher[i, j]) / t_norm * (student[i, j] - s_log_norm) for j in kept)
    assert_same_value_and_gradient(listnet(student, teacher, exclude=exclude), naive / 4, [student])
    with_teacher_grad = logits(1)
    listnet(student, with_teacher_grad, exclude=exclude).backward()
    assert with_teacher_grad.grad is None  # the target carries no gradient


def test_listmle_matches_the_plackett_luce_likelihood_of_the_teachers_order():
    student, teacher = logits(2), logits(3).detach()
    naive = 0.0
    for i in range(4):
        order = sorted(range(6), key=lambda j: -teacher[i, j].item())  # the teacher's ranking, best first
        for k in range(6):
            rest = torch.stack([student[i, order[m]] for m in range(k, 6)])
            naive = naive + torch.log(torch.exp(rest).sum()) - student[i, order[k]]
    assert_same_value_and_gradient(listmle(student, teacher), naive / 4, [student])
    # only the teacher's order counts
    assert listmle(student, teacher * 7 - 2).item() == pytest.approx(listmle(student, teacher).item(), abs=1e-12)


def test_jensen_shannon_matches_its_formula():
    first, second = logits(4), logits(5)
    naive = 0.0
    for i in range(4):
        p, q = torch.softmax(first[i], 0), torch.softmax(second[i], 0)
        m = (p + q) / 2
        naive = naive + 0.5 * (p * (p / m).log()).sum() + 0.5 * (q * (q / m).log()).sum()
    assert_same_value_and_gradient(jensen_shannon(first, second), naive / 4, [first, second])
    assert jensen_shannon(first, first).item() == pytest.approx(0.0, abs=1e-12)
    assert jensen_shannon(first, second).item() <= math.log(2)


@pytest.mark.parametrize("distillation", ["listnet", "listmle"])
def test_the_loss_is_infonce_plus_consistency_plus_distillation_from_weighted_teachers(distillation):
    encoder = make_tiny_encoder(hidden_dropout_prob=0.1).train()
    options = {"teachers": ["", ""], "teacher_weights": [0.25, 0.75], "distillation": distillation,
               "beta": 0.5, "gamma": 2.0, "teacher_temperature": 0.1}  # fmt: skip
    objective = build_objective("rankcse", encoder, options=options).train()
    batch = batch_for(objective, encoder)
    torch.manual_seed(0)
    first, second = torch.randn(6, 32), torch.randn(6, 32)  # precomputed rows of two teachers
    batch["embeddings"] = {"teacher_sent0": first, "teacher2_sent0": second}
    embeddings = objective.embed(encoder, batch)
    assert torch.equal(embeddings["teacher_sent0"], first) and torch.equal(embeddings["teacher2_sent0"], second)
    terms = objective.loss(embeddings, batch)
    z1, z2 = embeddings["view1"], embeddings["view2"]
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a[:, None], b[None, :], dim=-1)  # noqa: E731
    student, reverse = cos(z1, z2) / 0.05, cos(z2, z1) / 0.05
    teacher = (0.25 * cos(first, first) + 0.75 * cos(second, second)) / 0.1
    if distillation == "listnet":
        ranking = listnet(student, teacher, exclude=torch.eye(6, dtype=torch.bool))
    else:
        ranking = listmle(student, teacher)
    infonce = torch.nn.functional.cross_entropy(student, torch.arange(6))
    assert terms["contrastive"].item() == pytest.approx(infonce.item(), abs=1e-5)
    assert terms["consistency"].item() == pytest.approx(0.5 * jensen_shannon(student, reverse).item(), abs=1e-6)
    assert terms["distillation"].item() == pytest.approx(2.0 * ranking.item(), rel=1e-5)
    assert set(objective.precomputed_embeddings()) == {"teacher_sent0", "teacher2_sent0"}


def test_bad_options_are_one_line_errors():
    encoder = make_tiny_encoder()
    with pytest.raises(CsekitError, match="distillation must be one of listnet, listmle"):
        build_objective("rankcse", encoder, options={"distillation": "lambdarank"})
    with pytest.raises(CsekitError, match="teacher_weights gives 1 weights for 2 teachers"):
        build_objective("rankcse", encoder, options={"teachers": ["", ""], "teacher_weights": [1.0]})


def test_two_gloo_ranks_train_like_one_process_with_the_whole_batch(tmp_path):
    """Batch 8 on one process vs 4 + 4 on two ranks: every list runs over all ranks' sentences (teacher rows
    gathered too; ListNet leaves out each row's own column, which moves with the rank). The teacher is a frozen
    copy of the start, its embeddings served from the cache."""
    options = {"teachers": [""], "distillation": "listnet", "gamma": 1.0}
    one, two, losses = train_single_and_two_ranks(tmp_path, objective="rankcse", max_steps=3, options=options,
                                                  pooler="mean")  # fmt: skip
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
