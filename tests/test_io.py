"""Saved folders load in stock sentence-transformers with the same embeddings, and back into csekit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_POOLER_SETTINGS, make_tiny_encoder, make_tiny_encoder_with
from sentence_transformers import SentenceTransformer

from csekit import POOLERS, CsekitError, SentenceEncoder, load_encoder

TEXTS = [
    "a man is playing a guitar .",
    "hi",
    "the quick brown fox jumps over the lazy dog while a cat watches from the window .",
    "two dogs run across a field of grass",
]


def _module_kinds(folder) -> list[str]:
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    return [module["type"].rsplit(".", 1)[-1] for module in modules]


def _saved_pooler(folder) -> str:
    return json.loads((folder / "csekit_config.json").read_text(encoding="utf-8"))["pooler"]["name"]


def _stock(name: str) -> bool:
    """Whether stock modules express the pooler with its defaults (tests/test_poolers_contract.py has them all)."""
    return name not in TINY_POOLER_SETTINGS and make_tiny_encoder_with(name).pooler.stock_modules(32, 3) is not None


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


@pytest.mark.parametrize("pooler", [name for name in POOLERS if _stock(name)])
def test_every_stock_pooler_round_trips_through_sentence_transformers(tmp_path, pooler):
    # The prompt poolers and Ditto have no stock modules: tests/test_poolers_contract.py checks their folders.
    # Three layers, so first_last_avg and last2avg select different layers (see test_pooling).
    encoder = make_tiny_encoder(pooler, num_hidden_layers=3)
    expected = encoder.encode(TEXTS)
    folder = tmp_path / "model"
    encoder.save(folder)

    # A user with no csekit: stock sentence-transformers modules only.
    by_st = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert _max_diff(by_st, expected) < 1e-5

    reloaded = load_encoder(folder)
    assert reloaded.pooler.name == pooler
    assert _max_diff(reloaded.encode(TEXTS), expected) < 1e-5


def test_real_bert_mini_with_mean_pooling_round_trips(tmp_path, bert_mini):
    encoder = SentenceEncoder.from_pretrained(str(bert_mini), pooler="mean")
    expected = encoder.encode(TEXTS)
    encoder.save(tmp_path / "mini")
    by_st = SentenceTransformer(str(tmp_path / "mini"), device="cpu").encode(TEXTS)
    assert _max_diff(by_st, expected) < 1e-5
    reloaded = load_encoder(tmp_path / "mini")
    assert reloaded.pooler.name == "mean"
    assert _max_diff(reloaded.encode(TEXTS), expected) < 1e-5


def test_train_only_head_is_saved_as_cls_before_pooler_without_dense(tmp_path):
    encoder = make_tiny_encoder("cls")
    encoder.head_at_inference = False
    expected = encoder.encode(TEXTS)  # inference path: [CLS] state, no head
    encoder.save(tmp_path / "model")

    assert "Dense" not in _module_kinds(tmp_path / "model")
    assert not list((tmp_path / "model").glob("*_Dense"))
    assert _saved_pooler(tmp_path / "model") == "cls_before_pooler"
    by_st = SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(TEXTS)
    assert _max_diff(by_st, expected) < 1e-5
    reloaded = load_encoder(tmp_path / "model")
    assert reloaded.pooler.name == "cls_before_pooler"
    assert reloaded.head is None
    assert _max_diff(reloaded.encode(TEXTS), expected) < 1e-5


def test_head_kept_at_inference_is_saved_as_dense(tmp_path):
    encoder = make_tiny_encoder("cls")
    encoder.save(tmp_path / "model")
    assert _module_kinds(tmp_path / "model") == ["Transformer", "Pooling", "Dense"]
    assert _saved_pooler(tmp_path / "model") == "cls"


def test_normalize_adds_a_normalize_module(tmp_path):
    encoder = make_tiny_encoder("mean")
    encoder.normalize = True
    expected = encoder.encode(TEXTS)
    np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, atol=1e-5)
    encoder.save(tmp_path / "model")

    assert _module_kinds(tmp_path / "model")[-1] == "Normalize"
    assert (
        _max_diff(SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(TEXTS), expected) < 1e-5
    )
    reloaded = load_encoder(tmp_path / "model")
    assert reloaded.normalize is True
    assert _max_diff(reloaded.encode(TEXTS), expected) < 1e-5


def test_without_normalize_there_is_no_normalize_module(tmp_path):
    make_tiny_encoder("mean").save(tmp_path / "model")
    assert "Normalize" not in _module_kinds(tmp_path / "model")
    assert load_encoder(tmp_path / "model").normalize is False


def test_minilm_loads_with_its_own_pooling_and_normalization(minilm):
    # A folder csekit did not write (no csekit_config.json): the pooler is read off its modules.
    encoder = load_encoder(str(minilm))
    assert encoder.pooler.name == "mean"
    assert encoder.normalize is True
    expected = SentenceTransformer(str(minilm), device="cpu").encode(TEXTS)
    assert _max_diff(encoder.encode(TEXTS), expected) < 1e-5


def test_saving_over_an_existing_folder_replaces_it(tmp_path):
    folder = tmp_path / "model"
    make_tiny_encoder("first_last_avg", seed=1).save(folder)
    assert list(folder.glob("*_WeightedLayerPooling"))
    (folder / "stale.txt").write_text("left from before", encoding="utf-8")

    second = make_tiny_encoder("mean", seed=2)
    second.save(folder)
    # Nothing of the first model survives, and no staging or backup folder is left beside it.
    assert not list(folder.glob("*_WeightedLayerPooling"))
    assert not (folder / "stale.txt").exists()
    assert _module_kinds(folder) == ["Transformer", "Pooling"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model"]
    assert (
        _max_diff(SentenceTransformer(str(folder), device="cpu").encode(TEXTS), second.encode(TEXTS)) < 1e-5
    )


@pytest.mark.parametrize("path", ["./no/such/model", "/tmp/definitely/missing/x"])
def test_missing_model_path_raises_one_line_error(path):
    with pytest.raises(CsekitError) as caught:
        load_encoder(path)
    message = str(caught.value)
    assert path in message
    assert "\n" not in message
    with pytest.raises(CsekitError):
        SentenceEncoder.from_pretrained(path)


def test_a_file_instead_of_a_model_folder_is_refused(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a folder")
    with pytest.raises(CsekitError, match="is a file"):
        load_encoder(str(weights))


def test_pooler_override_on_load(tmp_path):
    encoder = make_tiny_encoder("mean")
    encoder.save(tmp_path / "model")
    reloaded = load_encoder(tmp_path / "model", pooler="max")
    assert reloaded.pooler.name == "max"
    max_encoder = make_tiny_encoder("max")  # same seed, same weights
    assert _max_diff(reloaded.encode(TEXTS), max_encoder.encode(TEXTS)) < 1e-5
