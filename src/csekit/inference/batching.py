"""Batches cut by a token budget: the cost of a padded batch is its rows times its longest row.

Sorting longest first and filling each batch until ``rows x longest`` would pass ``max_tokens`` keeps
padding small and memory bounded whatever the mix of lengths: many short sentences go together, a few
long ones go alone. A row longer than the budget can never be placed, so a budget below the longest
input a model takes is refused up front (:func:`check_budget`) rather than looped on.
"""

from __future__ import annotations

from collections.abc import Sequence

from csekit.errors import CsekitError


def check_budget(max_tokens: int, longest_input: int) -> None:
    """Refuse a token budget in which an input of ``longest_input`` tokens would not fit."""
    if max_tokens < longest_input:
        raise CsekitError(f"the token budget {max_tokens} is smaller than the model's longest input "
                          f"({longest_input} tokens): give at least {longest_input}")  # fmt: skip


def token_budget_batches(lengths: Sequence[int], *, max_tokens: int, max_rows: int | None = None,
                         max_padding: float | None = None) -> list[list[int]]:  # fmt: skip
    """Indices of ``lengths`` grouped longest first, each group's ``len(group) * longest <= max_tokens``
    (and at most ``max_rows`` rows). Ties keep their input order, so the grouping is deterministic.

    ``max_padding``: the largest share of a group's padded tokens that may be padding. Without it a large
    budget pads a few short rows to a long one's length, which costs nothing when the rows come from a
    long sorted run of similar lengths (``encode``'s shards) and most of the work when they come from a
    handful of requests of any lengths (``serve``)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if order and lengths[order[0]] > max_tokens:
        check_budget(max_tokens, lengths[order[0]])
    batches: list[list[int]] = []
    real = 0  # the last batch's tokens without padding
    for index in order:
        # Longest first: the batch's longest row is its first, so adding a row costs one more of those.
        if batches:
            rows, longest = len(batches[-1]) + 1, lengths[batches[-1][0]]
            fits = rows * longest <= max_tokens and (max_rows is None or rows <= max_rows)
            if fits and (max_padding is None or real + lengths[index] >= (1 - max_padding) * rows * longest):
                batches[-1].append(index)
                real += lengths[index]
                continue
        batches.append([index])
        real = lengths[index]
    return batches
