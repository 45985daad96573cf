"""TrainingData: deterministic, resumable, shardable batches, in memory and streamed."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import shared_file, tiny_tokenizer

from csekit.data.batches import TrainingData
from csekit.errors import CsekitError

TRIPLET = ("sent0", "sent1", "hard_neg")
SIZE = 103  # prime: no batch size divides it, so the partial last batch is always exercised


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def tokenize(tokenizer):
    def tokenize(texts):
        return dict(tokenizer(list(texts), truncation=True, max_length=32))

    return tokenize


@pytest.fixture
def triplets(tmp_path) -> Path:
    """A csv whose rows are easy to recognise and of varied length: 'a b ... {i}'."""
    path = tmp_path / "triplets.csv"
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(TRIPLET)
        for i in range(SIZE):
            words = " ".join("abcdefgh"[: i % 9])
            writer.writerow([f"{words} {i}", f"entailed {i}", f"contradicted {i}"])
    return path


def make(path, tokenize, tokenizer, **options) -> TrainingData:
    return TrainingData(
        path, columns=TRIPLET, tokenize=tokenize, pad_token_id=tokenizer.pad_token_id, **options
    )


def rows(batch, column="sent0") -> list[list[int]]:
    """The unpadded token ids of each row of one column."""
    fields = batch[column]
    return [ids[mask.bool()].tolist() for ids, mask in zip(fields["input_ids"], fields["attention_mask"])]


def all_rows(batches, column="sent0") -> list[list[int]]:
    return [row for batch in batches for row in rows(batch, column)]


def numbers(batches, tokenizer, column="sent0") -> list[int]:
    """The example number (the last word) of each row, in order."""
    return [
        int(tokenizer.decode(row, skip_special_tokens=True).split()[-1]) for row in all_rows(batches, column)
    ]


MODES = [pytest.param({}, id="memory"), pytest.param({"streaming": True, "buffer_size": 16}, id="streaming")]


# ------------------------------------------------------------------ shape and content
@pytest.mark.parametrize("mode", MODES)
def test_batches_are_padded_tensors_of_aligned_columns(triplets, tokenize, tokenizer, mode):
    data = make(triplets, tokenize, tokenizer, **mode)
    batches = list(data.batches(0, seed=0, batch_size=8))
    assert len(batches) == SIZE // 8
    for batch in batches:
        assert set(batch) == set(TRIPLET)
        for fields in batch.values():
            assert set(fields) == {"input_ids", "attention_mask", "token_type_ids"}
            assert all(tensor.dtype == torch.long and tensor.shape == (8, fields["input_ids"].shape[1])
                       for tensor in fields.values())  # fmt: skip
            # Padded to this batch's longest row, not to max_length.
            assert fields["input_ids"].shape[1] == fields["attention_mask"].sum(1).max()
            assert (fields["input_ids"][fields["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    # Row i of every column comes from the same example.
    assert numbers(batches, tokenizer, "sent0") == numbers(batches, tokenizer, "sent1")
    assert numbers(batches, tokenizer, "sent0") == numbers(batches, tokenizer, "hard_neg")


@pytest.mark.parametrize("mode", MODES)
def test_an_epoch_is_a_permutation_of_the_examples(triplets, tokenize, tokenizer, mode):
    data = make(triplets, tokenize, tokenizer, **mode)
    batches = list(data.batches(3, seed=7, batch_size=10, drop_last=False))
    assert [len(rows(batch)) for batch in batches] == [10] * 10 + [3]
    order = numbers(batches, tokenizer)
    assert sorted(order) == list(range(SIZE)) and order != list(range(SIZE))
    expected = {i: tokenize([f"{' '.join('abcdefgh'[: i % 9])} {i}"])["input_ids"][0] for i in range(SIZE)}
    assert all_rows(batches) == [expected[i] for i in order]


# ------------------------------------------------------------------ determinism and resumption
@pytest.mark.parametrize("mode", MODES)
def test_order_is_a_function_of_seed_and_epoch(triplets, tokenize, tokenizer, mode):
    first = make(triplets, tokenize, tokenizer, **mode)
    second = make(triplets, tokenize, tokenizer, **mode)  # a fresh process, as far as the order knows

    def order(data, epoch, seed):
        return numbers(data.batches(epoch, seed=seed, batch_size=8), tokenizer)

    assert order(first, 0, seed=1) == order(second, 0, seed=1) == order(first, 0, seed=1)
    assert order(first, 1, seed=1) != order(first, 0, seed=1)
    assert order(first, 0, seed=2) != order(first, 0, seed=1)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("skip", [0, 1, 5, 12, 20])
def test_skip_resumes_exactly_where_a_run_stopped(triplets, tokenize, tokenizer, mode, skip):
    data = make(triplets, tokenize, tokenizer, **mode)
    full = list(data.batches(2, seed=3, batch_size=8))
    resumed = list(data.batches(2, seed=3, batch_size=8, skip=skip))
    assert len(resumed) == max(len(full) - skip, 0)
    for expected, batch in zip(full[skip:], resumed):
        for column in TRIPLET:
            for key, tensor in expected[column].items():
                assert torch.equal(batch[column][key], tensor)


# ------------------------------------------------------------------ sharding
@pytest.mark.parametrize("mode", MODES)
def test_ranks_together_see_the_single_process_global_batch(triplets, tokenize, tokenizer, mode):
    data = make(triplets, tokenize, tokenizer, **mode)
    world_size, batch_size = 3, 4
    single = list(data.batches(1, seed=5, batch_size=batch_size * world_size))
    per_rank = [
        list(data.batches(1, seed=5, batch_size=batch_size, rank=rank, world_size=world_size))
        for rank in range(world_size)
    ]
    assert all(len(batches) == len(single) == SIZE // 12 for batches in per_rank)
    for step, global_batch in enumerate(single):
        for column in TRIPLET:
            union = [row for rank in range(world_size) for row in rows(per_rank[rank][step], column)]
            assert union == rows(global_batch, column)
            assert all(len(rows(per_rank[rank][step], column)) == batch_size for rank in range(world_size))
    if data.num_batches(batch_size, world_size=world_size) is not None:
        assert data.num_batches(batch_size, world_size=world_size) == len(single)


def test_sharding_needs_drop_last_and_a_valid_rank(triplets, tokenize, tokenizer):
    data = make(triplets, tokenize, tokenizer)
    with pytest.raises(ValueError, match="drop_last"):
        data.batches(0, seed=0, batch_size=4, world_size=2, drop_last=False)
    with pytest.raises(ValueError, match="rank"):
        data.batches(0, seed=0, batch_size=4, rank=2, world_size=2)


# ------------------------------------------------------------------ modes and sizes
def test_num_batches_and_examples(triplets, tokenize, tokenizer):
    data = make(triplets, tokenize, tokenizer)
    assert data.num_examples == SIZE and data.stats.read == SIZE
    assert data.num_batches(10) == 10 and data.num_batches(10, drop_last=False) == 11
    assert data.num_batches(5, world_size=4) == 5
    streamed = make(triplets, tokenize, tokenizer, streaming=True)
    assert streamed.num_examples is None and streamed.num_batches(10) is None


def test_streaming_with_a_buffer_of_one_keeps_file_order(triplets, tokenize, tokenizer):
    data = make(triplets, tokenize, tokenizer, streaming=True, buffer_size=1)
    assert numbers(data.batches(0, seed=0, batch_size=10, drop_last=False), tokenizer) == list(range(SIZE))
    assert data.stats.read == SIZE


def test_streaming_tokenizes_only_the_batches_it_yields(triplets, tokenizer):
    calls = []

    def tokenize(texts):
        calls.append(len(texts))
        return dict(tokenizer(list(texts)))

    data = make(triplets, tokenize, tokenizer, streaming=True)
    list(data.batches(0, seed=0, batch_size=4, skip=10, rank=1, world_size=2))
    assert calls == [4] * 2 * len(TRIPLET)  # 12 global batches of 8, 10 skipped: 4 rows per rank in 2


def test_too_little_data_is_a_clear_error(tmp_path, triplets, tokenize, tokenizer):
    with pytest.raises(CsekitError, match="fewer than one batch of 128"):
        make(triplets, tokenize, tokenizer).batches(0, seed=0, batch_size=64, world_size=2)
    streamed = make(triplets, tokenize, tokenizer, streaming=True)
    with pytest.raises(CsekitError, match="no full batch of 128"):
        list(streamed.batches(0, seed=0, batch_size=128))
    empty = tmp_path / "empty.csv"
    empty.write_text("sent0,sent1,hard_neg\n\n")
    for mode in ({}, {"streaming": True}):
        with pytest.raises(CsekitError, match="no training examples in .*empty.csv"):
            make(empty, tokenize, tokenizer, **mode)


def test_several_files_and_bad_lines(tmp_path, triplets, tokenize, tokenizer):
    other = tmp_path / "more.jsonl"
    other.write_text('{"sent0": "x 1000", "sent1": "y 1000", "hard_neg": "z 1000"}\nnot json\n')
    with pytest.raises(CsekitError, match="more.jsonl:2: invalid JSON"):
        make([triplets, other], tokenize, tokenizer)
    data = make([triplets, other], tokenize, tokenizer, skip_bad_lines=True)
    assert data.num_examples == SIZE + 1 and data.stats.bad == 1
    order = numbers(data.batches(0, seed=0, batch_size=SIZE + 1), tokenizer)
    assert sorted(order) == [*range(SIZE), 1000]


# ------------------------------------------------------------------ the shared training file
def test_snli_triplets_in_batches(tokenizer):
    nli = shared_file("data/train/nli/snli_dev_triplets_senteval_tok.csv")

    def tokenize(texts):
        return dict(tokenizer(list(texts), truncation=True, max_length=32))

    data = TrainingData(nli, columns=TRIPLET, tokenize=tokenize, pad_token_id=tokenizer.pad_token_id)
    assert data.num_examples == 3172 and data.num_batches(64) == 49
    batch = next(data.batches(0, seed=42, batch_size=64))
    assert batch["sent0"]["input_ids"].shape[0] == 64 and batch["sent0"]["input_ids"].shape[1] <= 32
