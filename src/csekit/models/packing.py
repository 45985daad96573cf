"""Sequence packing: the backbone computes real tokens only, several sentences to a row.

A padded (B, T) batch of short sentences spends most of its matrix multiplies on padding. Packed, the
sentences are laid end to end into rows of ``row_tokens`` (next fit, in batch order), each sentence with
its own position ids (counted from its first token, as in its padded row) and a block-diagonal attention
mask, so that no token attends across sentences: every real token's hidden state is the one the padded
batch gives it, up to float rounding. The outputs are put back into the padded (B, T) layout (zeros at
padding) before the pooler runs, so every pooler that reads hidden states and the attention mask works
unchanged; poolers that read attention maps are refused.

Position ids: BERT-like embeddings count positions from 0; RoBERTa-like ones (embeddings with a
``padding_idx``) from ``padding_idx + 1``, as they derive them from the input ids. Padding slots at the
end of a row attend to themselves only (an all-masked row would give NaN in softmax).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

from csekit.errors import CsekitError


def packed_forward(backbone: nn.Module, inputs: dict[str, Tensor], *, row_tokens: int,
                   output_hidden_states: bool) -> BaseModelOutput:  # fmt: skip
    """The backbone's outputs for the padded ``inputs``, computed on packed rows of ``row_tokens``."""
    mask = inputs["attention_mask"].bool()  # (B, T)
    lengths = mask.sum(dim=1)  # (B,)
    if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device) < lengths[:, None]):
        raise CsekitError("packing needs right-padded batches (each row's tokens first, then padding)")
    lengths = lengths.tolist()  # on the host: the layout is decided there
    longest = max(lengths)
    if longest > row_tokens:
        raise CsekitError(f"a sentence of {longest} tokens does not fit a packed row of {row_tokens}: "
                          f"set row_tokens to at least the max length")  # fmt: skip
    rows, starts = [], []  # per sentence: its row and its first column there
    row, used = -1, row_tokens
    for length in lengths:
        if used + length > row_tokens:  # next fit: the sentence opens a new row
            row, used = row + 1, 0
        rows.append(row)
        starts.append(used)
        used += length
    count = row + 1
    device = mask.device
    sentence_of = torch.arange(len(lengths), device=device).repeat_interleave(torch.tensor(lengths, device=device))
    position = torch.cat([torch.arange(length, device=device) for length in lengths])  # (N,) within each sentence
    row_of = torch.tensor(rows, device=device)[sentence_of]  # (N,)
    column_of = torch.tensor(starts, device=device)[sentence_of] + position  # (N,)

    def packed(values: Tensor, fill: int) -> Tensor:
        out = values.new_full((count, row_tokens), fill)  # (R, C)
        out[row_of, column_of] = values[mask]
        return out

    segment = torch.full((count, row_tokens), -1, device=device)
    segment[row_of, column_of] = sentence_of  # (R, C): which sentence each slot holds, -1 for padding
    attend = (segment[:, :, None] == segment[:, None, :]) & (segment[:, :, None] >= 0)  # (R, C, C)
    attend |= torch.eye(row_tokens, dtype=torch.bool, device=device)  # and each padding slot itself
    offset = getattr(getattr(backbone, "embeddings", None), "padding_idx", None)
    positions = torch.zeros((count, row_tokens), dtype=torch.long, device=device)
    positions[row_of, column_of] = position + (0 if offset is None else offset + 1)
    # Padding slots hold id 0: they attend to themselves only and are dropped when unpacking.
    arguments = {"input_ids": packed(inputs["input_ids"], 0), "attention_mask": attend[:, None],
                 "position_ids": positions}  # fmt: skip
    if "token_type_ids" in inputs:
        arguments["token_type_ids"] = packed(inputs["token_type_ids"], 0)
    outputs = backbone(**arguments, output_hidden_states=output_hidden_states, return_dict=True)

    def unpacked(hidden: Tensor) -> Tensor:
        out = hidden.new_zeros((*mask.shape, hidden.shape[-1]))  # (B, T, H)
        out[mask] = hidden[row_of, column_of]
        return out

    hidden_states = tuple(unpacked(h) for h in outputs.hidden_states) if output_hidden_states else None
    return BaseModelOutput(last_hidden_state=unpacked(outputs.last_hidden_state), hidden_states=hidden_states)
