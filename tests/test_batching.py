"""Token-budget batching: every index once, each batch within the budget, longest first, and refusal of a
budget no input could fit."""

from __future__ import annotations

import random

import pytest

from csekit.errors import CsekitError
from csekit.inference.batching import check_budget, token_budget_batches


def test_batches_cover_every_index_once_within_the_budget_longest_first():
    lengths = [random.Random(0).randint(1, 40) for _ in range(500)]
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


def test_a_budget_below_the_longest_input_is_refused_not_looped_on():
    with pytest.raises(CsekitError, match="smaller than the model's longest input"):
        token_budget_batches([3, 9], max_tokens=8)
    with pytest.raises(CsekitError, match="give at least 512"):
        check_budget(256, 512)
    check_budget(512, 512)
