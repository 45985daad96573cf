"""DeCLUTR's span sampling (Giorgi et al. 2021, Sec. 2.2): anchor and positive spans of one document.

The reference's ``sample_anchor_positive_pairs`` (``declutr/common/contrastive_utils.py``), on a document of
``length`` tokens, drawn from a NumPy generator:

- anchors: ``num_anchors`` spans, each ``int(Beta(4, 2) * (max_span - min_span) + min_span)`` tokens long
  (skewed long), starting inside one of the non-overlapping ``max_span``-token blocks of the document; a
  chosen block and its two neighbours leave the pool, so anchors never overlap;
- positives: ``num_positives`` per anchor, ``int(Beta(2, 4) * (max_span - min_span) + min_span)`` tokens long
  (skewed short), starting anywhere from ``anchor_start - length`` to ``anchor_end``, so each one overlaps
  the anchor, is adjacent to it or is subsumed by it (``sampling="subsuming"`` or ``"adjacent"`` force one
  kind, as the reference's ``sampling_strategy``).

The reference refuses a document shorter than ``num_anchors * max_span * 2`` tokens. Here such a document
samples with its spans cut to fit it (``max_span = length // (2 * num_anchors)``, ``min_span`` at most
that): a corpus built from consecutive lines has a few short documents, and a batch should not fail on one.
Spans are ``(start, end)`` token offsets, end exclusive.
"""

from __future__ import annotations

import numpy as np

from csekit.errors import CsekitError

SAMPLINGS = ("any", "subsuming", "adjacent")
Span = tuple[int, int]


def sample_spans(length: int, rng: np.random.Generator, *, num_anchors: int, num_positives: int, max_span: int,
                 min_span: int, sampling: str = "any") -> tuple[list[Span], list[Span]]:  # fmt: skip
    """``num_anchors`` anchor spans and ``num_anchors * num_positives`` positive spans (anchor after anchor)."""
    if sampling not in SAMPLINGS:
        raise CsekitError(f"span sampling must be one of {', '.join(SAMPLINGS)}, not {sampling!r}")
    if not 1 <= min_span <= max_span or num_anchors < 1 or num_positives < 1:
        raise CsekitError(f"spans need 1 <= min_span <= max_span and at least one anchor and positive, got "
                          f"min_span={min_span}, max_span={max_span}, {num_anchors} anchors, {num_positives} positives")  # fmt: skip
    if length < 2 * num_anchors:
        raise CsekitError(f"a document of {length} tokens is too short for {num_anchors} anchors")
    max_span = min(max_span, length // (2 * num_anchors))
    min_span = min(min_span, max_span)
    anchors, positives = [], []
    starts = list(range(0, length - max_span + 1, max_span))  # valid anchor blocks
    for i in range(num_anchors):
        anchor_length = int(rng.beta(4, 2) * (max_span - min_span) + min_span)
        if len(starts) // (num_anchors - i) < num_anchors - i:  # the reference's guard against running out
            block = int(rng.choice([0, len(starts) - 1]))
        else:
            block = int(rng.integers(len(starts)))
        anchor_start = int(rng.integers(starts[block], starts[block] + max_span - anchor_length + 1))
        del starts[max(0, block - 1) : block + 2]  # the block and its neighbours
        anchor_end = anchor_start + anchor_length
        anchors.append((anchor_start, anchor_end))
        for _ in range(num_positives):
            positives.append(_positive(length, anchor_start, anchor_end, rng, max_span, min_span, sampling))
    return anchors, positives


def _positive(length: int, anchor_start: int, anchor_end: int, rng: np.random.Generator, max_span: int,
              min_span: int, sampling: str) -> Span:  # fmt: skip
    if sampling == "subsuming":  # never longer than the anchor
        span = int(rng.beta(2, 4) * (anchor_end - anchor_start - min_span) + min_span)
        start = int(rng.integers(anchor_start, anchor_end - span + 1))
    elif sampling == "adjacent":  # short enough to fit beside the anchor on one side
        longest = min(max_span, max(anchor_start, length - anchor_end))
        span = int(rng.beta(2, 4) * (longest - min_span) + min_span)
        sides = [start for start, fits in ((anchor_start - span, anchor_start - span > 0),
                                           (anchor_end, anchor_end + span <= length)) if fits]  # fmt: skip
        start = int(rng.choice(sides))
    else:  # overlapping, adjacent or subsumed
        span = int(rng.beta(2, 4) * (max_span - min_span) + min_span)
        start = int(rng.integers(max(0, anchor_start - span), min(anchor_end, length - span) + 1))
    return start, start + span
