"""Batches made by the background thread are the iterator's own batches, in its order, with its errors."""

from __future__ import annotations

import threading
from contextlib import closing

import pytest
import torch
from conftest import SENTENCES, make_tiny_encoder

from csekit.data.batches import TrainingData
from csekit.errors import CsekitError
from csekit.training.prefetch import prefetched

CPU = torch.device("cpu")


def _threads() -> int:
    return sum(thread.name == "csekit-batches" for thread in threading.enumerate())


def _data(tmp_path, **options) -> TrainingData:
    encoder = make_tiny_encoder()
    path = tmp_path / "train.txt"
    path.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    return TrainingData([path], columns=("sent0",), tokenize=lambda texts: encoder.tokenize(texts, max_length=16),
                        pad_token_id=encoder.pad_token_id, text_columns=("sent0",), **options)  # fmt: skip


@pytest.mark.parametrize("streaming", [False, True])
def test_the_same_batches_in_the_same_order(tmp_path, streaming):
    data = _data(tmp_path, streaming=streaming, buffer_size=8)
    direct = list(data.batches(3, seed=7, batch_size=4, skip=1))
    ahead = list(prefetched(data.batches(3, seed=7, batch_size=4, skip=1), device=CPU, depth=2))
    assert len(ahead) == len(direct) > 2
    for mine, theirs in zip(ahead, direct):
        assert mine.keys() == theirs.keys() and mine["text"] == theirs["text"]
        for key, value in theirs["sent0"].items():
            assert torch.equal(mine["sent0"][key], value)


def test_an_error_in_the_iterator_is_raised_where_it_happened():
    def batches():
        yield 1
        yield 2
        raise CsekitError("train.txt:3: bad line")

    seen = []
    with pytest.raises(CsekitError, match="train.txt:3"):
        for batch in prefetched(batches(), device=CPU):
            seen.append(batch)
    assert seen == [1, 2]


def test_stopping_early_stops_the_thread():
    produced = []

    def batches():
        for number in range(1000):
            produced.append(number)
            yield number

    before = _threads()
    with closing(prefetched(batches(), device=CPU, depth=2)) as ahead:
        assert [next(ahead) for _ in range(3)] == [0, 1, 2]
    assert _threads() == before
    assert len(produced) <= 3 + 2 + 1  # read ahead by the queue's depth (and the one waiting to go in), no more
