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


def token_budget_batches(lengths: Sequence[int], *, max_tokens: int, max_rows: int | None = None) -> list[list[int]]:
    """Indices of ``lengths`` grouped longest first, each group's ``len(group) * longest <= max_tokens``
    (and at most ``max_rows`` rows). Ties keep their input order, so the grouping is deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    if order and lengths[order[0]] > max_tokens:
        check_budget(max_tokens, lengths[order[0]])
    batches: list[list[int]] = []
    for index in order:
        # Longest first: the batch's longest row is its first, so adding a row costs one more of those.
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_tokens and (
            max_rows is None or len(batches[-1]) < max_rows
        ):
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches
