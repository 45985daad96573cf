"""The teacher-embedding cache: computed once per corpus, content-addressed by teacher and text, read back
without calling the teacher, rebuilt when an entry is corrupt; the real all-MiniLM-L6-v2 as a teacher."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import yaml
from conftest import make_tiny_encoder
from sentence_transformers import SentenceTransformer

from csekit.cli.main import main
from csekit.data.batches import EMBEDDINGS, TrainingData
from csekit.data.teacher_cache import cache_folder, cache_key, cached_embeddings
from csekit.errors import CsekitNote
from csekit.objectives import build_objective
from csekit.objectives.teacher import teacher_key, teacher_output
from csekit.training.teacher_embeddings import encode_texts, precompute_teacher_embeddings, teacher_identity

TEXTS = ["a man plays the guitar .", "two dogs run in a field .", "the stock market fell today .",
         "she slices an onion .", "kids play in the snow .", "a red car .", "the cat sleeps on the mat .",
         "rain falls on the quiet town ."]  # fmt: skip


def save_teacher(folder, *, seed: int = 5) -> str:
    teacher = make_tiny_encoder("mean", seed=seed, hidden_size=48, intermediate_size=96)
    teacher.normalize = True
    teacher.save(folder)
    return str(folder)


def training_data(tmp_path, objective, texts=TEXTS) -> TrainingData:
    path = tmp_path / "train.txt"
    path.write_text("\n".join(texts) + "\n", encoding="utf-8")
    student = make_tiny_encoder("mean")
    return TrainingData(path, columns=objective.columns, tokenize=student.tokenize, pad_token_id=0,
                        text_columns=objective.text_columns)  # fmt: skip


def distill(teacher: str):
    return build_objective("distill_kl", make_tiny_encoder("mean"), options={"teacher": teacher})


class Refuse:
    """A forward pre-hook that fails the test if the teacher runs."""

    def __call__(self, module, args, kwargs):
        raise AssertionError("the teacher was called")


def test_a_second_run_reads_the_cache_and_never_calls_the_teacher(tmp_path):
    teacher, cache = save_teacher(tmp_path / "teacher"), tmp_path / "cache"
    first = distill(teacher)
    calls = []
    first.teacher.module.backbone.register_forward_pre_hook(lambda module, args: calls.append(1))
    data = training_data(tmp_path, first)
    (path,) = precompute_teacher_embeddings(first, data, folder=str(cache)).values()
    assert calls and sorted(cache.iterdir()) == [path.with_suffix(".json"), path]

    second = distill(teacher)  # a new run: the teacher loaded again from its folder
    second.teacher.module.backbone.register_forward_pre_hook(Refuse(), with_kwargs=True)
    data = training_data(tmp_path, second)
    assert precompute_teacher_embeddings(second, data, folder=str(cache)) == {teacher_key("sent0"): path}
    (batch,) = data.batches(0, seed=1, batch_size=len(TEXTS))
    served = batch[EMBEDDINGS][teacher_key("sent0")]  # (B, 48), rows in the batch's order
    online = teacher_output(first.teacher, batch["text"]["sent0"])  # what the objective computes without a cache
    torch.testing.assert_close(served, online, atol=1e-6, rtol=1e-5)
    # A recipe's own embedding file for that column wins: nothing is looked up.
    assert precompute_teacher_embeddings(second, data, folder=str(cache), given=[teacher_key("sent0")]) == {}


def test_a_changed_text_teacher_or_setting_is_another_entry_and_the_same_teacher_anywhere_is_one(tmp_path):
    teacher = distill(save_teacher(tmp_path / "teacher")).teacher
    identity = teacher_identity(teacher)
    key = cache_key(identity, TEXTS)
    assert cache_key(identity, [*TEXTS[:-1], TEXTS[-1] + " !"]) != key  # one text changed
    assert cache_key(identity, TEXTS[::-1]) != key  # another order: other rows
    assert cache_key(identity, ["a man plays", "the guitar ."]) != cache_key(identity, ["a man plays the", "guitar ."])
    assert cache_key(teacher_identity(distill(save_teacher(tmp_path / "other", seed=6)).teacher), TEXTS) != key
    assert cache_key(teacher_identity(distill(save_teacher(tmp_path / "copy")).teacher), TEXTS) == key  # same weights
    teacher.module.max_length = 8  # truncation changes the output
    assert cache_key(teacher_identity(teacher), TEXTS) != key
    teacher.module.max_length, teacher.module.normalize = 64, False
    assert cache_key(teacher_identity(teacher), TEXTS) != key


@pytest.mark.parametrize("damage", ["truncated", "pickled", "altered", "record lost"])
def test_a_corrupt_entry_is_computed_again_with_a_one_line_note(tmp_path, damage):
    identity, calls = {"teacher": "t"}, []

    def encode(texts):
        calls.append(len(texts))
        return np.arange(len(texts) * 3, dtype=np.float32).reshape(len(texts), 3)

    path = cached_embeddings(TEXTS, identity=identity, encode=encode, folder=tmp_path)
    assert cached_embeddings(TEXTS, identity=identity, encode=encode, folder=tmp_path) == path and calls == [8]
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-5])
    elif damage == "pickled":
        np.save(path, np.array([{"not": "an array"}] * 8, dtype=object), allow_pickle=True)
    elif damage == "altered":
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.with_suffix(".json").unlink()
    with pytest.warns(CsekitNote, match=f"teacher embedding cache entry {path} is unusable") as caught:
        assert cached_embeddings(TEXTS, identity=identity, encode=encode, folder=tmp_path) == path
    assert len(caught) == 1 and "\n" not in str(caught[0].message) and calls == [8, 8]
    np.testing.assert_array_equal(np.load(path, allow_pickle=False), encode(TEXTS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sound again: read back silently
        cached_embeddings(TEXTS, identity=identity, encode=encode, folder=tmp_path)
    assert calls == [8, 8, 8]  # the encode above (the comparison), not the cache


def test_the_cache_folder_is_the_option_else_the_environment_else_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CSEKIT_CACHE", str(tmp_path / "user"))
    monkeypatch.delenv("CSEKIT_TEACHER_CACHE", raising=False)
    assert cache_folder() == tmp_path / "user" / "teacher-embeddings"
    monkeypatch.setenv("CSEKIT_TEACHER_CACHE", str(tmp_path / "env"))
    assert cache_folder() == tmp_path / "env"
    assert cache_folder(tmp_path / "option") == tmp_path / "option"


def test_all_minilm_as_teacher_gives_its_sentence_transformers_embeddings_cached(minilm, tmp_path):
    teacher = build_objective("distill_mse", make_tiny_encoder("mean"), options={"teacher": str(minilm)}).teacher
    rows = np.load(cached_embeddings(TEXTS, identity=teacher_identity(teacher), folder=tmp_path,
                                     encode=lambda texts: encode_texts(teacher, texts)), allow_pickle=False)  # fmt: skip
    expected = SentenceTransformer(str(minilm), device="cpu").encode(TEXTS)  # unit rows: it ends with Normalize
    np.testing.assert_allclose(rows, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)


def test_csekit_train_with_a_teacher_cache_key_encodes_the_corpus_once(tmp_path):
    """The recipe key ``teacher_cache``; the second run finds the entry; the saved student (with the
    projection to the teacher's width) loads in sentence-transformers."""
    student = tmp_path / "student"
    make_tiny_encoder("mean").save(student)
    (tmp_path / "train.txt").write_text("\n".join(TEXTS * 2) + "\n", encoding="utf-8")
    recipe = {"model": str(student), "objective": "distill_mse", "pooler": "mean",
              "options": {"teacher": save_teacher(tmp_path / "teacher")}, "train_files": [str(tmp_path / "train.txt")],
              "batch_size": 4, "learning_rate": 1e-3, "max_steps": 3, "eval_steps": 0, "save_steps": 0,
              "output_dir": str(tmp_path / "run"), "teacher_cache": str(tmp_path / "cache")}  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe), encoding="utf-8")
    assert main(["train", str(tmp_path / "recipe.yaml")]) == 0
    (entry,) = (tmp_path / "cache").glob("*.npy")
    written = entry.stat().st_mtime_ns
    assert main(["train", str(tmp_path / "recipe.yaml"), "--overwrite"]) == 0
    assert list((tmp_path / "cache").glob("*.npy")) == [entry] and entry.stat().st_mtime_ns == written
    by_st = SentenceTransformer(str(tmp_path / "run" / "final"), device="cpu").encode(TEXTS)
    assert by_st.shape == (len(TEXTS), 48)
