"""The tokenized corpus kept on disk gives the batches of a fresh tokenization, and is found again by content."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import SENTENCES, make_tiny_encoder, make_tiny_encoder_with

from csekit.data import token_cache
from csekit.data.batches import TrainingData
from csekit.data.collate import pad_batch
from csekit.errors import CsekitNote
from csekit.inference.identity import tokenization_digest


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "tokens"
    monkeypatch.setenv("CSEKIT_TOKEN_CACHE", str(folder))
    return folder


def _corpus(tmp_path, name="train.txt", lines=SENTENCES):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _data(path, encoder, *, cached=True, **options) -> TrainingData:
    calls = []

    def tokenize(texts):
        calls.append(len(texts))
        return encoder.tokenize(texts, max_length=12)

    data = TrainingData([path], columns=("sent0",), tokenize=tokenize, pad_token_id=encoder.pad_token_id,
                        tokenization=tokenization_digest(encoder, 12) if cached else None, **options)  # fmt: skip
    data.tokenizer_calls = calls
    return data


def _equal(first: list[dict], second: list[dict]) -> None:
    assert len(first) == len(second) > 0
    for mine, theirs in zip(first, second):
        assert mine.keys() == theirs.keys()
        for key, value in theirs["sent0"].items():
            assert torch.equal(mine["sent0"][key], value), key


def test_a_second_read_tokenizes_nothing_and_gives_the_same_batches(tmp_path, cache):
    encoder, path = make_tiny_encoder(), _corpus(tmp_path)
    first = _data(path, encoder)
    assert first.tokenizer_calls and len(list(cache.iterdir())) == 1
    second = _data(path, encoder)
    assert second.tokenizer_calls == []  # read back from the cache
    assert second.stats == first.stats and second.num_examples == len(SENTENCES)
    plain = _data(path, encoder, cached=False)
    for epoch in (0, 1):
        batches = [list(data.batches(epoch, seed=3, batch_size=4, skip=1)) for data in (first, second, plain)]
        _equal(batches[1], batches[0])
        _equal(batches[1], batches[2])


def test_cached_batches_equal_tokenizing_each_batch_on_the_fly(tmp_path, cache):
    """Pre-tokenised (and cached) batches are exactly the texts tokenized and padded at the step."""
    encoder, path = make_tiny_encoder(), _corpus(tmp_path)
    _data(path, encoder)
    data = _data(path, encoder, text_columns=())  # from the cache
    assert data.tokenizer_calls == []
    for batch in data.batches(0, seed=0, batch_size=4):
        texts = [encoder.tokenizer.decode(ids[mask.bool()], skip_special_tokens=True)
                 for ids, mask in zip(batch["sent0"]["input_ids"], batch["sent0"]["attention_mask"])]  # fmt: skip
        tokens = encoder.tokenize(texts, max_length=12)
        fresh = pad_batch([{key: ids[i] for key, ids in tokens.items()} for i in range(len(texts))], encoder.pad_token_id)
        for key, value in fresh.items():
            assert torch.equal(batch["sent0"][key], value), key


def test_the_entry_follows_the_content_not_the_path(tmp_path, cache):
    encoder = make_tiny_encoder()
    _data(_corpus(tmp_path, "a.txt"), encoder)
    assert _data(_corpus(tmp_path, "b.txt"), encoder).tokenizer_calls == []  # same text elsewhere: same entry
    assert _data(_corpus(tmp_path, "c.txt", [*SENTENCES[:-1], "another line ."]), encoder).tokenizer_calls
    assert _data(_corpus(tmp_path, "a.txt"), make_tiny_encoder_with("mask")).tokenizer_calls  # other pooler settings
    key = token_cache.corpus_key([tmp_path / "a.txt"], tokenization=tokenization_digest(encoder, 13), columns=("sent0",),
                                 targets=(), skip_bad_lines=False)  # fmt: skip
    assert not (cache / key).exists()  # another max length is another entry
    assert len(list(cache.iterdir())) == 3


def test_a_damaged_entry_is_tokenized_again_with_a_note(tmp_path, cache):
    encoder, path = make_tiny_encoder(), _corpus(tmp_path)
    _data(path, encoder)
    (entry,) = cache.iterdir()
    ids = next(entry.glob("sent0.input_ids.ids.npy"))
    ids.write_bytes(ids.read_bytes()[:-4] + b"\x00\x00\x00\x01")
    with pytest.warns(CsekitNote, match="unusable"):
        again = _data(path, encoder)
    assert again.tokenizer_calls
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _data(path, encoder).tokenizer_calls == []  # rewritten whole


def test_columns_read_as_raw_text_are_not_cached(tmp_path, cache):
    encoder, path = make_tiny_encoder(), _corpus(tmp_path)
    _data(path, encoder, text_columns=("sent0",))
    assert not cache.exists() or not list(cache.iterdir())
