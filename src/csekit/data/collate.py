"""Dynamic padding: pad a list of tokenized examples to the longest one in the batch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor


def pad_batch(examples: Sequence[Mapping[str, Sequence[int]]], pad_token_id: int) -> dict[str, Tensor]:
    """Right-pad ``input_ids`` (with ``pad_token_id``) and every other field (with 0) to one length.

    Returns int64 tensors of shape (B, T) where T is the longest example, never a fixed max length:
    short batches stay short.
    """
    longest = max(len(example["input_ids"]) for example in examples)
    batch: dict[str, Tensor] = {}
    for key in examples[0]:
        fill = pad_token_id if key == "input_ids" else 0
        rows = [list(example[key]) + [fill] * (longest - len(example[key])) for example in examples]
        batch[key] = torch.tensor(rows, dtype=torch.long)  # (B, T)
    return batch


def concat_fields(fields: Sequence[Mapping[str, Tensor]], pad_token_id: int) -> dict[str, Tensor]:
    """Stack tokenized fields row-wise into one batch, so the encoder runs once over all of them.

    Fields of B rows and lengths T1, T2, ... become one (len(fields) * B, max T) batch: one forward
    pass, as SimCSE's ``cl_forward`` does with its (B, num_sent, T) input.
    """
    longest = max(field["input_ids"].shape[1] for field in fields)
    stacked: dict[str, Tensor] = {}
    for key in fields[0]:
        fill = pad_token_id if key == "input_ids" else 0
        stacked[key] = torch.cat([pad_to(field[key], longest, fill) for field in fields])  # (F * B, T)
    return stacked


def pad_to(tokens: Tensor, width: int, value: int) -> Tensor:
    """(B, T) -> (B, width): right-padded with ``value`` (T <= width)."""
    return torch.nn.functional.pad(tokens, (0, width - tokens.shape[1]), value=value)
