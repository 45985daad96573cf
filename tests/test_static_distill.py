"""Each step of the two static distillations against a plain reference, on tiny random encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SENTENCES, make_tiny_encoder

from csekit.cli.distill_static import METHODS as CLI_METHODS
from csekit.cli.main import build_parser, main
from csekit.errors import CsekitError
from csekit.losses import similarity_kl
from csekit.models import load_encoder
from csekit.static import METHODS, FineTuneSettings, distill_static, fine_tune
from csekit.static.contextual import (
    choose_occurrences,
    contextual_table,
    distill_contextual,
    remove_top_components,
    sentence_means,
)
from csekit.static.finetune import TableStep
from csekit.static.model2vec import distill_model2vec, pca, sif_weights
from csekit.static.vocabulary import model2vec_ids, skipped_ids

CORPUS = [f"{text} and the {word} one too" for text in SENTENCES for word in ("first", "second", "third", "fourth")]


@pytest.fixture(scope="module")
def teacher():
    return make_tiny_encoder("mean").eval()


def test_sif_weights_follow_the_formula():
    count, a = 7, 1e-3
    total = sum(1 / (k + 2) for k in range(count))
    expected = [a / (a + (1 / (rank + 2)) / total) for rank in range(count)]
    assert np.allclose(sif_weights(count, a), expected, rtol=1e-12)
    assert np.all(np.diff(sif_weights(100)) > 0)  # frequent (low-rank) tokens weigh least


def test_pca_is_the_covariance_eigenbasis_with_largest_scores_positive():
    vectors = np.random.default_rng(0).normal(size=(50, 6)) * np.arange(1, 7)
    scores = pca(vectors, 3)
    values, vectors_basis = np.linalg.eig(np.cov(vectors, rowvar=False))  # a different routine, same basis
    top = vectors_basis[:, np.argsort(values)[::-1][:3]]
    reference = (vectors - vectors.mean(axis=0)) @ top
    reference *= np.sign(reference[np.abs(reference).argmax(axis=0), range(3)])
    assert np.allclose(scores, reference, atol=1e-10)
    assert pca(vectors, None) is vectors and pca(vectors[:4], 5) is not None and pca(vectors, 99).shape == (50, 6)
    assert pca(vectors[:5], 8) is not None and np.array_equal(pca(vectors[:5], 8), vectors[:5])  # fewer rows: as is


def test_model2vec_rows_are_each_tokens_mean_state_alone(teacher):
    student = distill_model2vec(teacher, dim=None, sif_coefficient=None)
    table = student.embedding.weight.detach().numpy()
    tokenizer = teacher.tokenizer
    for token in ["red", "##s", "[PAD]", "[UNK]", ".", "sentence"]:
        index = tokenizer.convert_tokens_to_ids(token)
        inputs = torch.tensor([[tokenizer.cls_token_id, index, tokenizer.sep_token_id]])
        with torch.no_grad():
            state = teacher.backbone(input_ids=inputs).last_hidden_state[0].mean(dim=0).numpy()
        assert np.abs(table[index] - state).max() < 1e-5, token
    for token in ["[CLS]", "[SEP]", "[MASK]", "[unused3]"]:
        assert not table[tokenizer.convert_tokens_to_ids(token)].any(), token
    kept = model2vec_ids(tokenizer)
    assert len(kept) == np.count_nonzero(np.abs(table).sum(axis=1))


def test_model2vec_equals_the_model2vec_package(teacher):
    distillation = pytest.importorskip("model2vec.distill.distillation")
    theirs = distillation.distill_from_model(teacher.backbone, teacher.tokenizer, pca_dims=16, quantize_to="float32",
                                             device="cpu")  # fmt: skip
    ours = distill_model2vec(teacher, dim=16)
    table = ours.embedding.weight.detach().numpy()
    their_vocabulary = theirs.tokenizer.get_vocab()
    rows = [(ours.tokenizer.token_to_id(token), index) for token, index in their_vocabulary.items()]
    assert len(rows) == len(model2vec_ids(teacher.tokenizer))
    ours_rows, their_rows = zip(*rows)
    assert np.abs(table[list(ours_rows)] - np.asarray(theirs.embedding)[list(their_rows)]).max() < 1e-5
    texts = [*SENTENCES[:8], "Hello, World! [CLS] unknownwordpieces"]
    assert np.abs(ours.encode(texts) - theirs.encode(texts)).max() < 1e-5


def test_choose_occurrences_takes_each_tokens_first_sentences_and_first_position():
    rows = [[1, 2, 2, 3], [2, 4], [9, 2, 1], [1, 1]]
    skipped = np.zeros(10, dtype=bool)
    skipped[9] = True
    chosen = choose_occurrences(rows, skipped, per_token=2)
    taken = {(s, rows[s][p]): p for s, positions in enumerate(chosen) for p in positions}
    for token in range(10):  # the plain rule, token by token
        containing = [s for s, row in enumerate(rows) if token in row][:2] if not skipped[token] else []
        assert sorted(s for s, t in taken if t == token) == containing
        assert all(taken[(s, token)] == rows[s].index(token) for s in containing)


def test_contextual_averages_equal_one_sentence_at_a_time(teacher):
    per_token = 3
    table, counts, _, used, embeddings = contextual_table(teacher, CORPUS, per_token=per_token, batch_size=7)
    tokenizer, skipped = teacher.tokenizer, skipped_ids(teacher.tokenizer)
    for token in ["red", "number", "first", "says", "the"]:
        index = tokenizer.convert_tokens_to_ids(token)
        states = []
        for text in CORPUS:  # the first sentences that contain it, each encoded alone
            row = tokenizer(text)["input_ids"]
            if index in row and len(states) < per_token:
                with torch.no_grad():
                    output = teacher.backbone(input_ids=torch.tensor([row])).last_hidden_state[0]
                states.append(output[row.index(index)].numpy())
        assert counts[index] == len(states) and np.abs(table[index] - np.mean(states, axis=0)).max() < 1e-5, token
    alone = tokenizer.convert_tokens_to_ids("zebra")
    with torch.no_grad():
        wrapped = torch.tensor([[tokenizer.cls_token_id, alone, tokenizer.sep_token_id]])
        assert np.abs(table[alone] - teacher.backbone(input_ids=wrapped).last_hidden_state[0, 1].numpy()).max() < 1e-5
    assert not table[skipped].any() and counts[tokenizer.convert_tokens_to_ids(".")] == 0
    assert np.abs(embeddings - teacher.encode([CORPUS[i] for i in used], normalize=False)).max() < 1e-5


def test_sentence_means_leave_out_skipped_tokens():
    table = np.arange(12.0).reshape(4, 3)
    skipped = np.array([False, True, False, False])
    means = sentence_means(table, [[0, 1, 2], [1], [3]], skipped)
    assert np.allclose(means, [(table[0] + table[2]) / 2, table[3]])


def test_remove_top_components_against_numpy_pca():
    rng = np.random.default_rng(1)
    sentences = rng.normal(size=(200, 8)) * np.linspace(3, 0.5, 8)
    table = rng.normal(size=(30, 8))
    skipped = np.zeros(30, dtype=bool)
    skipped[[0, 5]] = True
    reduced = remove_top_components(table, sentences, skipped, remove=2, dim=4)
    values, basis = np.linalg.eigh(np.cov(sentences, rowvar=False))
    kept = basis[:, np.argsort(values)[::-1][2:6]]  # components 3..6 by variance
    reference = (table - sentences.mean(axis=0)) @ kept
    reference[skipped] = 0
    assert np.allclose(np.abs(reduced), np.abs(reference), atol=1e-10)  # each component up to its sign
    assert np.allclose(reduced @ reduced.T, reference @ reference.T, atol=1e-10)
    with pytest.raises(CsekitError, match="needs 9 dimensions"):
        remove_top_components(table, sentences, skipped, remove=2, dim=7)


def test_fine_tuning_lowers_the_kl_keeps_the_best_table_and_zero_rows(teacher):
    student, used, embeddings, _ = distill_contextual(teacher, CORPUS, dim=8, remove=2, per_token=5, batch_size=16)
    frozen = skipped_ids(teacher.tokenizer)
    sentences = [CORPUS[i] for i in used]
    settings = FineTuneSettings(batch_size=16, max_steps=60, eval_every=5, patience=100, learning_rate=1e-2)
    record = fine_tune(student, sentences, embeddings, frozen=frozen, settings=settings)
    assert record["best_dev_loss"] < record["initial_dev_loss"] and record["steps"] == 60
    assert record["best_dev_loss"] == min(row["dev_loss"] for row in record["evaluations"])
    table = student.embedding.weight.detach()
    assert not table[torch.from_numpy(frozen)].any()
    dev = np.random.default_rng(settings.seed).permutation(len(sentences))[: record["dev_sentences"]]
    # the kept table is the best one: its dev loss (a mean, as the student computes it) is the best loss
    losses = [similarity_kl(torch.from_numpy(student.encode([sentences[i] for i in chunk], normalize=False)),
                            torch.from_numpy(embeddings[chunk])).item() for chunk in [dev[:256]]]  # fmt: skip
    assert abs(losses[0] - record["best_dev_loss"]) < 1e-4


def test_the_fused_masked_step_equals_the_plain_masked_student(teacher):
    """Fused Adam with the frozen rows' gradient zeroed = plain Adam on the student whose frozen rows are
    multiplied by zero in the forward pass (what the reference's absent rows amount to)."""
    student, used, embeddings, _ = distill_contextual(teacher, CORPUS, dim=8, remove=2, per_token=5, batch_size=16)
    frozen = skipped_ids(teacher.tokenizer)
    settings = FineTuneSettings(learning_rate=1e-2, clip_norm=0.5)  # a clip that bites
    plain = student.embedding.weight.detach().clone().requires_grad_(True)
    rows = student.tokenize([CORPUS[i] for i in used])["input_ids"]
    targets = torch.from_numpy(embeddings)
    fast = TableStep(student, rows, targets, frozen=frozen, settings=settings)
    optimizer = torch.optim.Adam([plain], lr=settings.learning_rate, foreach=False)
    keep = torch.from_numpy(~frozen).float()[:, None]
    batches = np.random.default_rng(0).permutation(len(used)).reshape(-1, 8)[:6]
    for batch in batches:
        fast(batch)
        optimizer.zero_grad()
        ids = [token for i in batch for token in rows[i]]
        offsets = np.cumsum([0, *(len(rows[i]) for i in batch[:-1])])
        embedded = torch.nn.functional.embedding_bag(torch.tensor(ids), plain * keep, torch.tensor(offsets), mode="sum")
        similarity_kl(embedded, targets[batch]).backward()
        torch.nn.utils.clip_grad_norm_([plain], settings.clip_norm)
        optimizer.step()
    assert np.abs(student.embedding.weight.detach().numpy() - plain.detach().numpy()).max() < 1e-5
    assert not student.embedding.weight.detach()[torch.from_numpy(frozen)].any()


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_a_loadable_static_model(teacher, method, tmp_path):
    student, report = distill_static(teacher, method=method, sentences=CORPUS, dim=8, remove=2,
                                     fine_tuning=FineTuneSettings(batch_size=16, max_steps=3, eval_every=2))  # fmt: skip
    assert report["method"] == method and student.embedding_dim == 8
    student.save(tmp_path / method)
    assert np.abs(load_encoder(tmp_path / method).encode(CORPUS[:5]) - student.encode(CORPUS[:5])).max() < 1e-6
    assert set(CLI_METHODS) == set(METHODS)


def test_cli_distils_saves_and_refuses_bad_options(tmp_path, capsys):
    make_tiny_encoder("mean").save(tmp_path / "teacher")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 2) + "\n", encoding="utf-8")
    common = ["distill-static", "--teacher", str(tmp_path / "teacher"), "--dim", "8"]
    assert main([*common, "--method", "model2vec", "--output", str(tmp_path / "a")]) == 0
    assert main([*common, "--method", "contextual", "--output", str(tmp_path / "b"), "--corpus", str(corpus),
                 "--remove", "2", "--steps", "2"]) == 0  # fmt: skip
    assert load_encoder(tmp_path / "b").provenance["fine_tuning"]["steps"] == 2
    assert "evaluate with: csekit eval" in capsys.readouterr().out
    bad = {("--method", "model2vec", "--corpus", str(corpus)): "--corpus is a contextual option",
           ("--method", "contextual"): "needs --corpus FILE",
           ("--method", "contextual", "--corpus", str(tmp_path / "missing.txt")): "does not exist: give unlabelled text",
           ("--method", "model2vec", "--sif", "2"): "--sif must be between 0 and 1"}  # fmt: skip
    for options, message in bad.items():
        assert main([*common, *options, "--output", str(tmp_path / "c")]) == 2
        error = capsys.readouterr().err
        assert message in error and error.count("\n") == 1, error
    assert not (tmp_path / "c").exists()
    with pytest.raises(SystemExit):
        build_parser().parse_args([*common, "--method", "word2vec", "--output", "x"])
    assert "invalid choice: 'word2vec' (choose from 'model2vec', 'contextual')" in capsys.readouterr().err
