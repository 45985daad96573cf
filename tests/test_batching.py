"""Token-budget batching: every index once, each batch within the budget (and the padding cap), longest
first, and refusal of a budget no input could fit."""

from __future__ import annotations

import random

import pytest

from csekit.errors import CsekitError
from csekit.inference.batching import check_budget, token_budget_batches


def test_batches_cover_every_index_once_within_the_budget_longest_first():
    draw = random.Random(0)
    lengths = [draw.randint(1, 40) for _ in range(500)]
    batches = token_budget_batches(lengths, max_tokens=256, max_rows=16)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 256 and len(batch) <= 16
    longest = [lengths[batch[0]] for batch in batches]
    assert longest == sorted(longest, reverse=True)


def test_batches_are_greedy_and_ties_keep_input_order():
    # 10 + 10 + 10 = 3 rows x 10 = 30 <= 30; the 4th row would make 40.
    assert token_budget_batches([5, 10, 10, 10, 10], max_tokens=30) == [[1, 2, 3], [4, 0]]
    assert token_budget_batches([], max_tokens=8) == []


def test_a_padding_cap_keeps_each_batch_s_padding_within_it_and_cuts_no_more_than_it_needs():
    draw = random.Random(1)
    lengths = [draw.randint(1, 128) for _ in range(300)]
    batches = token_budget_batches(lengths, max_tokens=16384, max_padding=0.2)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch, following in zip(batches, [*batches[1:], None]):
        padded = len(batch) * lengths[batch[0]]
        assert sum(lengths[i] for i in batch) >= 0.8 * padded  # at most a fifth of it padding
        if following is not None:  # the next row was cut off only because it would pass the cap
            assert sum(lengths[i] for i in batch) + lengths[following[0]] < 0.8 * (padded + lengths[batch[0]])
    uncapped = token_budget_batches(lengths, max_tokens=16384)
    assert len(batches) > 2 * len(uncapped)  # uncapped, 128 rows fit the budget at any length: much padding
    # Rows of one length never pad, so the cap leaves their batches to the budget alone.
    assert token_budget_batches([7] * 10, max_tokens=35, max_padding=0.0) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_a_budget_below_the_longest_input_is_refused_not_looped_on():
    with pytest.raises(CsekitError, match="smaller than the model's longest input"):
        token_budget_batches([3, 9], max_tokens=8)
    with pytest.raises(CsekitError, match="give at least 512"):
        check_budget(256, 512)
    check_budget(512, 512)
