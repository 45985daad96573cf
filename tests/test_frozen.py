"""Frozen helpers: their own tokenizer (raw text in the batch), precomputed embedding columns, and
checkpoints that leave helpers out and check them on resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SENTENCES, assert_grad_cache_matches_plain_step, make_tiny_encoder, tiny_roberta, write_recipe
from safetensors.torch import load_file

from csekit import CsekitError, load_encoder
from csekit.cli.main import main
from csekit.data.batches import EMBEDDINGS, TEXT, TrainingData
from csekit.data.collate import pad_batch
from csekit.objectives import build_objective
from csekit.training.grad_cache import split_batch

TEXTS = ["a man plays the guitar .", "two dogs run in a field .", "the stock market fell today .",
         "she slices an onion , slowly !", "kids play in the snow .", "a red car ."]  # fmt: skip


def tokens(encoder, texts):
    ids = encoder.tokenize(texts)
    return pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], encoder.pad_token_id)


@pytest.fixture
def other_tokenizer_model(tmp_path):
    path = tmp_path / "roberta"
    tiny_roberta(tmp_path, TEXTS + SENTENCES).save(path)
    return str(path)


def test_a_helper_with_its_own_tokenizer_reads_the_raw_text_of_its_columns(other_tokenizer_model):
    student = make_tiny_encoder(hidden_dropout_prob=0.1).train()
    objective = build_objective("dclr", student, options={"complementary_model": other_tokenizer_model}).train()
    assert objective.text_columns == ("sent0",) and not objective.complementary.shares_vocabulary
    batch = {"sent0": tokens(student, TEXTS), TEXT: {"sent0": TEXTS}}
    embeddings = objective.embed(student, batch)
    expected = load_encoder(other_tokenizer_model).encode(TEXTS)  # its own tokens, its own pooler
    np.testing.assert_allclose(embeddings["complementary"].numpy(), expected, atol=1e-5)
    with pytest.raises(CsekitError, match="its own tokenizer and needs the raw text of column\\(s\\) sent0"):
        objective.embed(student, {"sent0": batch["sent0"]})
    # The gradient cache cuts the raw texts with the rows, so each chunk's helper sees its own sentences.
    assert split_batch(batch, 4)[1][TEXT]["sent0"] == TEXTS[4:]
    assert_grad_cache_matches_plain_step(objective, student, batch)


def test_a_helper_that_reads_the_students_token_ids_needs_its_vocabulary(other_tokenizer_model):
    with pytest.raises(CsekitError, match="semantic_model .* has another vocabulary"):
        build_objective("debcse", make_tiny_encoder(), options={"semantic_model": other_tokenizer_model})


def test_training_data_carries_raw_text_and_precomputed_embeddings(tmp_path):
    data = tmp_path / "train.txt"
    data.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    table = np.arange(len(TEXTS) * 3, dtype=np.float64).reshape(len(TEXTS), 3)  # row i: example i
    np.save(tmp_path / "teacher.npy", table)
    encoder = make_tiny_encoder()
    loaded = TrainingData(data, columns=("sent0",), tokenize=encoder.tokenize, pad_token_id=0,
                          text_columns=("sent0",), embedding_files={"teacher": tmp_path / "teacher.npy"})  # fmt: skip
    (batch,) = loaded.batches(0, seed=3, batch_size=6)
    texts = batch[TEXT]["sent0"]
    assert sorted(texts) == sorted(TEXTS) and texts != TEXTS  # shuffled, every example once
    ids, lengths = batch["sent0"]["input_ids"].tolist(), batch["sent0"]["attention_mask"].sum(dim=1).tolist()
    assert [row[:length] for row, length in zip(ids, lengths)] == encoder.tokenize(texts)["input_ids"]  # row i's text
    rows = [TEXTS.index(text) for text in texts]
    assert batch[EMBEDDINGS]["teacher"].dtype == torch.float32
    torch.testing.assert_close(batch[EMBEDDINGS]["teacher"], torch.from_numpy(table[rows]).float())
    assert torch.equal(split_batch(batch, 4)[1][EMBEDDINGS]["teacher"], batch[EMBEDDINGS]["teacher"][4:])
    np.save(tmp_path / "short.npy", table[:4])
    with pytest.raises(CsekitError, match="one row per training example: \\(6, D\\)"):
        TrainingData(data, columns=("sent0",), tokenize=encoder.tokenize, pad_token_id=0,
                     embedding_files={"teacher": tmp_path / "short.npy"})  # fmt: skip
    (tmp_path / "pickle.npy").write_bytes(b"not an array")
    with pytest.raises(CsekitError, match="cannot read it as a .npy array"):
        TrainingData(data, columns=("sent0",), tokenize=encoder.tokenize, pad_token_id=0,
                     embedding_files={"teacher": tmp_path / "pickle.npy"})  # fmt: skip


def test_checkpoints_leave_helpers_out_and_a_changed_helper_is_refused_on_resume(tmp_path, other_tokenizer_model, capsys):
    model = tmp_path / "student"
    make_tiny_encoder(hidden_dropout_prob=0.1).save(model)
    recipe = write_recipe(tmp_path, model, objective="dclr", max_steps=2, save_steps=2,
                          options={"complementary_model": other_tokenizer_model})  # fmt: skip
    assert main(["train", str(recipe)]) == 0  # trains with raw text for the helper's own tokenizer
    weights = load_file(tmp_path / "run" / "checkpoint" / "weights.safetensors")
    assert weights and not any(key.startswith("objective.complementary.") for key in weights)
    assert main(["train", str(recipe), "--resume", "--set", "max_steps=3"]) == 0  # the same helper: resumes
    (tmp_path / "other").mkdir()
    tiny_roberta(tmp_path / "other", TEXTS).save(other_tokenizer_model)  # the reference now holds another model
    assert main(["train", str(recipe), "--resume", "--set", "max_steps=4"]) == 2
    err = capsys.readouterr().err
    assert "the frozen complementary" in err and "is not the model this checkpoint was trained with" in err
