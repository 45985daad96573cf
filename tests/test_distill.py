"""Distillation from a frozen teacher: each loss against a naive reference (value and gradient), both sides
of a parallel pair on the source's teacher embedding, the saved projection, CKD's queue (FIFO, staged,
gathered like one process, restored on resume) and its scale."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import (
    assert_grad_cache_matches_plain_step,
    assert_resume_restores_the_queue,
    make_tiny_encoder,
    train_single_and_two_ranks,
    write_recipe,
)
from sentence_transformers import SentenceTransformer

from csekit import CsekitError, load_encoder
from csekit.data.batches import EMBEDDINGS, TEXT
from csekit.data.collate import pad_batch
from csekit.objectives import build_objective
from csekit.objectives.teacher import teacher_key

TEXTS = ["a man plays the guitar .", "two dogs run in a field .", "the stock market fell today .",
         "she slices an onion .", "kids play in the snow .", "a red car ."]  # fmt: skip
TRANSLATIONS = ["ein mann spielt gitarre .", "zwei hunde rennen .", "die börse fiel heute .",
                "sie schneidet eine zwiebel .", "kinder spielen im schnee .", "ein rotes auto ."]  # fmt: skip


def tokens(encoder, texts):
    ids = encoder.tokenize(texts)
    return pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], encoder.pad_token_id)


@pytest.fixture(autouse=True)
def teacher_cache(tmp_path, monkeypatch):
    """Every run of this module fills a cache of its own (never the user's)."""
    monkeypatch.setenv("CSEKIT_TEACHER_CACHE", str(tmp_path / "teacher-cache"))
    return tmp_path / "teacher-cache"


@pytest.fixture
def wide_teacher(tmp_path) -> str:
    """A tiny random teacher 48 wide (the student is 32), mean-pooled, normalised, as all-MiniLM-L6-v2 is."""
    teacher = make_tiny_encoder("mean", seed=5, hidden_size=48, intermediate_size=96)
    teacher.normalize = True
    teacher.save(tmp_path / "teacher")
    return str(tmp_path / "teacher")


# ------------------------------------------------------------------------------ MSE
def naive_mse(student, teacher) -> torch.Tensor:
    """sum over rows and dimensions of the squared difference, over B x H: nn.MSELoss, one element at a time."""
    total = torch.zeros((), dtype=torch.float64)
    for row in range(student.shape[0]):
        for dim in range(student.shape[1]):
            total = total + (student[row, dim].double() - teacher[row, dim].double()) ** 2
    return total / student.numel()


def test_mse_loss_matches_a_loop_in_value_and_gradient():
    objective = build_objective("distill_mse", make_tiny_encoder())
    student = torch.randn(5, 32, requires_grad=True)
    teacher = torch.randn(5, 32)
    loss = objective.loss({"student": student, "teacher": teacher}, {})["mse"]
    reference = student.detach().double().requires_grad_(True)
    expected = naive_mse(reference, teacher)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward(), expected.backward()
    torch.testing.assert_close(student.grad.double(), reference.grad, rtol=1e-5, atol=1e-8)


def test_parallel_pairs_distil_both_the_source_and_the_translation_onto_the_source(wide_teacher):
    student = make_tiny_encoder("mean").train()
    objective = build_objective("distill_mse", student, options={"teacher": wide_teacher, "parallel": True})
    assert objective.columns == ("source", "translation") and objective.text_columns == ("source",)
    batch = {"source": tokens(student, TEXTS), "translation": tokens(student, TRANSLATIONS),
             TEXT: {"source": TEXTS}}  # fmt: skip
    embeddings = objective.embed(student, batch)
    # The teacher embeds the source only: its own tokenizer, its normalised output.
    np.testing.assert_allclose(embeddings["teacher"].numpy(), load_encoder(wide_teacher).encode(TEXTS), atol=1e-5)
    terms = objective.loss(embeddings, batch)
    assert set(terms) == {"mse_source", "mse_translation"}
    teacher = embeddings["teacher"]
    assert terms["mse_source"].item() == pytest.approx(naive_mse(embeddings["source"], teacher).item(), rel=1e-5)
    assert terms["mse_translation"].item() == pytest.approx(naive_mse(embeddings["translation"], teacher).item(),
                                                            rel=1e-5)  # fmt: skip
    # Each side is pulled by its own term: both carry a gradient to their own embeddings.
    for side, term in (("source", "mse_source"), ("translation", "mse_translation")):
        (grad,) = torch.autograd.grad(terms[term], embeddings[side], retain_graph=True)
        assert grad.abs().sum() > 0, side
    # Changing only the translation changes only the translation's term.
    swapped = objective.loss({**embeddings, "translation": embeddings["source"]}, batch)
    assert swapped["mse_source"].item() == terms["mse_source"].item()
    assert swapped["mse_translation"].item() == pytest.approx(terms["mse_source"].item())


def test_the_projection_to_the_teachers_width_is_trained_saved_and_loads_in_sentence_transformers(tmp_path, wide_teacher):
    student = make_tiny_encoder("mean")
    build_objective("distill_mse", student, options={"teacher": wide_teacher})
    assert student.embedding_dim == 48 and student.outputs[-1].weight.requires_grad
    student.save(tmp_path / "student")
    by_st = SentenceTransformer(str(tmp_path / "student"), device="cpu").encode(TEXTS)
    assert by_st.shape == (len(TEXTS), 48)
    np.testing.assert_allclose(by_st, student.encode(TEXTS), atol=1e-5)
    # Same widths: no projection.
    same = make_tiny_encoder("mean")
    build_objective("distill_mse", same)
    assert len(same.outputs) == 0


def test_a_batch_needs_the_teachers_text_or_its_precomputed_embeddings(wide_teacher):
    student = make_tiny_encoder("mean")
    objective = build_objective("distill_kl", student, options={"teacher": wide_teacher})
    batch = {"sent0": tokens(student, TEXTS)}
    with pytest.raises(CsekitError, match="raw text of column sent0 or its precomputed teacher_sent0"):
        objective.embed(student, batch)
    precomputed = torch.randn(len(TEXTS), 48)
    embeddings = objective.embed(student, {**batch, EMBEDDINGS: {teacher_key("sent0"): precomputed}})
    assert torch.equal(embeddings["teacher"], precomputed)  # read, not recomputed
    with pytest.raises(CsekitError, match="7 wide; the teacher .* gives 48"):
        objective.embed(student, {**batch, EMBEDDINGS: {teacher_key("sent0"): torch.randn(len(TEXTS), 7)}})


# ------------------------------------------------------------------------------ similarity KL
def naive_similarity_kl(student, teacher, temperature) -> torch.Tensor:
    """KL(teacher || student) of each row's softmax over the other rows' cosines, a loop in float64."""
    size = student.shape[0]
    total = torch.zeros((), dtype=torch.float64)
    for i in range(size):
        others = [j for j in range(size) if j != i]
        s = torch.stack([torch.cosine_similarity(student[i].double(), student[j].double(), dim=0) for j in others])
        t = torch.stack([torch.cosine_similarity(teacher[i].double(), teacher[j].double(), dim=0) for j in others])
        p_teacher, log_p_student = torch.softmax(t / temperature, 0), torch.log_softmax(s / temperature, 0)
        total = total + (p_teacher * (p_teacher.log() - log_p_student)).sum()
    return total / size


def test_similarity_kl_objective_matches_a_loop_in_value_and_gradient():
    objective = build_objective("distill_kl", make_tiny_encoder())
    assert objective.temperature == 0.05
    student = torch.randn(6, 32, requires_grad=True)
    teacher = torch.randn(6, 48)  # another width: only similarities are compared
    loss = objective.loss({"student": student, "teacher": teacher}, {})["kl"]
    reference = student.detach().double().requires_grad_(True)
    expected = naive_similarity_kl(reference, teacher, 0.05)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward(), expected.backward()
    torch.testing.assert_close(student.grad.double(), reference.grad, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------------------------ CKD
def naive_ckd(student, weight, bias, teacher, queue, scale) -> torch.Tensor:
    """-log softmax of each query's own teacher key among the batch's keys and the queue, a loop in float64."""
    total = torch.zeros((), dtype=torch.float64)
    keys = torch.cat([teacher, queue]).double()
    for i in range(student.shape[0]):
        query = weight @ student[i] + bias
        logits = torch.stack([scale * torch.cosine_similarity(query, key, dim=0) for key in keys])
        total = total - (logits[i] - torch.logsumexp(logits, 0))
    return total / student.shape[0]


def test_ckd_loss_matches_a_loop_in_value_and_gradient_with_a_queue(wide_teacher):
    objective = build_objective("ckd", make_tiny_encoder("mean"), options={"teacher": wide_teacher, "queue_size": 10})
    assert objective.log_scale.item() == pytest.approx(1.0) and objective.log_scale.requires_grad  # s = e, learnable
    objective.queue.enqueue(torch.randn(7, 48))
    student, teacher = torch.randn(5, 32, requires_grad=True), torch.randn(5, 48)
    loss = objective.loss({"student": student, "teacher": teacher}, {})["contrastive"]
    loss.backward()
    reference = student.detach().double().requires_grad_(True)
    weight = objective.projection.weight.detach().double().requires_grad_(True)
    log_scale = objective.log_scale.detach().double().requires_grad_(True)
    expected = naive_ckd(reference, weight, objective.projection.bias.detach().double(), teacher,
                         objective.queue.contents(), log_scale.exp())  # fmt: skip
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(student.grad.double(), reference.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(objective.projection.weight.grad.double(), weight.grad, rtol=1e-4, atol=1e-6)
    assert objective.log_scale.grad.item() == pytest.approx(log_scale.grad.item(), rel=1e-4, abs=1e-7)


def test_ckd_fixed_scale_and_bad_options():
    objective = build_objective("ckd", make_tiny_encoder(), options={"scale": 20.0, "learnable_scale": False})
    assert not objective.log_scale.requires_grad and math.exp(objective.log_scale.item()) == pytest.approx(20.0)
    assert "log_scale" in objective.trainable_state_dict()  # a buffer: checkpointed all the same
    for options, word in [({"scale": 0.0}, "scale"), ({"queue_size": -1}, "queue_size")]:
        with pytest.raises(CsekitError, match=word):
            build_objective("ckd", make_tiny_encoder(), options=options)


def test_ckd_queue_is_a_fifo_of_teacher_embeddings_entering_after_their_own_step():
    encoder = make_tiny_encoder()
    objective = build_objective("ckd", encoder, options={"queue_size": 10}).train()
    width = objective.teacher_dim
    student = torch.randn(4, width)
    lengths = []
    for step in range(4):
        teacher = torch.arange(4.0 * step, 4.0 * step + 4).unsqueeze(1).expand(4, width)
        before = objective.loss({"student": student, "teacher": teacher}, {})
        objective.after_micro_batch({"student": student, "teacher": teacher})
        # Staged, not yet queued: the loss of this step is unchanged until the optimizer step.
        assert objective.loss({"student": student, "teacher": teacher}, {})["contrastive"] == before["contrastive"]
        objective.after_step(encoder)
        lengths.append(int(objective.queue.length))
    assert lengths == [4, 8, 10, 10]
    assert objective.queue.contents()[:, 0].tolist() == list(range(6, 16))  # the newest 10, oldest first
    objective.eval()
    objective.after_micro_batch({"student": student, "teacher": teacher + 100})  # evaluation stages nothing
    objective.after_step(encoder)
    assert objective.queue.contents()[:, 0].tolist() == list(range(6, 16))


def test_ckd_gradient_cache_with_a_queue_equals_the_plain_step(wide_teacher):
    student = make_tiny_encoder("mean", hidden_dropout_prob=0.1).train()
    objective = build_objective("ckd", student, options={"teacher": wide_teacher, "queue_size": 16}).train()
    objective.queue.enqueue(torch.randn(11, 48))
    batch = {"sent0": tokens(student, TEXTS), TEXT: {"sent0": TEXTS}}
    assert_grad_cache_matches_plain_step(objective, student, batch)


def test_ckd_two_processes_train_like_one_process_with_the_whole_batch(tmp_path):
    """2 gloo ranks x 4 == 1 process x 8: in-batch teacher keys and the queue gathered in rank order
    (eviction included: 12 rows, full from step 2)."""
    one, two, losses = train_single_and_two_ranks(tmp_path, objective="ckd", max_steps=4, pooler="mean",
                                                  options={"queue_size": 12})  # fmt: skip
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_ckd_resumed_run_restores_the_queue_and_the_scale(tmp_path):
    model = tmp_path / "tiny"
    make_tiny_encoder("mean", hidden_dropout_prob=0.1).save(model)
    recipe = write_recipe(tmp_path, model, objective="ckd", pooler="mean", max_steps=6, save_steps=4,
                          options={"queue_size": 20})  # fmt: skip
    saved = assert_resume_restores_the_queue(recipe, tmp_path / "run", "objective.queue.length")
    assert int(saved["objective.queue.length"]) == 20  # 4 steps x 8 keys, the oldest dropped
    assert "objective.log_scale" in saved and not any(key.startswith("objective.teacher.") for key in saved)
