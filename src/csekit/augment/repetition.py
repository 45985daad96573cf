"""Word repetition: duplicate a few random subword tokens of each sentence (ESimCSE's positive view).

Wu et al., COLING 2022, "ESimCSE: Enhanced Sample Building Method for Contrastive Learning of
Unsupervised Sentence Embedding", Sec. 3.1. A positive pair of two dropout views of the same
sentence always has the same length, so the encoder learns that equal length means similar; a copy
with some tokens repeated changes the length but hardly the meaning.

The number of repeated tokens is drawn as the reference code does it (``train.py::prepare_features``,
``dup_type=bpe``), which differs from the paper's formula ``[0, max(2, int(dup_rate * N))]``: for a
sequence of ``N`` tokens, special tokens included, with ``n = int(dup_rate * N)``,

- ``n == 0``: the sentence is left as it is;
- otherwise ``k`` is uniform in ``{0, ..., min(10, n) - 1}`` and ``k`` distinct positions are drawn
  uniformly among ``1 .. N - 2`` (never the first and last tokens, [CLS]/[SEP] or <s>/</s>); each
  chosen token is written twice in place.

Rows are assumed to be right-padded ``[start] tokens [end]`` sequences, as the tokenizers and
``pad_batch`` give them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from csekit.data.collate import pad_batch
from csekit.errors import CsekitError

#: The reference caps the number of repeated tokens below this, whatever the sentence length.
MAX_REPEATED = 10


def repeat_tokens(
    tokens: dict[str, Tensor],
    *,
    dup_rate: float = 0.32,
    pad_token_id: int = 0,
    max_length: int | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """A copy of a padded batch with some tokens of each row repeated, padded again.

    tokens: ``{"input_ids": (B, T), "attention_mask": (B, T), "token_type_ids": (B, T)?}``.
    Returns the same fields, (B, T') with T' >= T unless ``max_length`` cuts it: a longer row keeps
    its first ``max_length - 1`` tokens and its last one (the end token). ``generator``: a CPU
    generator; None draws from torch's global CPU generator (which the trainer seeds and checkpoints).
    The draws are made on the CPU whatever the batch's device, so a run on GPU repeats the same tokens.
    """
    if not 0.0 <= dup_rate <= 1.0:
        raise CsekitError(f"dup_rate must be between 0 and 1, got {dup_rate}")
    if max_length is not None and max_length < 2:
        raise CsekitError(f"max_length must keep at least the start and end tokens, got {max_length}")
    device = tokens["input_ids"].device
    # Python lists: a sentence is a few dozen ids, and per-row tensor ops would cost more than the encoder.
    fields = {key: value.tolist() for key, value in tokens.items()}
    lengths = tokens["attention_mask"].sum(dim=1).tolist()  # real tokens of each row (right padding)
    rows: dict[str, list[list[int]]] = {key: [] for key in fields}
    for row, length in enumerate(lengths):
        chosen: set[int] = set()
        limit = min(MAX_REPEATED, int(dup_rate * length))
        if limit > 0:
            count = min(int(torch.randint(limit, (1,), generator=generator)), max(length - 2, 0))
            if count:  # distinct positions in 1 .. N-2: never the start or end token
                chosen = set((torch.randperm(length - 2, generator=generator)[:count] + 1).tolist())
        order = [i for i in range(length) for _ in range(2 if i in chosen else 1)]  # (N + k,) source positions
        if max_length is not None and len(order) > max_length:
            order = order[: max_length - 1] + order[-1:]  # keep the end token
        for key, values in fields.items():
            rows[key].append([values[row][i] for i in order])
    padded = pad_batch([{key: rows[key][i] for key in rows} for i in range(len(lengths))], pad_token_id)  # (B, T')
    return {key: value.to(device=device, dtype=tokens[key].dtype) for key, value in padded.items()}
