"""Texts -> the token rows the model encodes, with over-long inputs refused or truncated on request.

Whether a text is too long is a question about its *untruncated* row, in the form the pooler feeds
the model: a prompt pooler wraps the sentence in its template and may end it with a period
(:meth:`Pooler.inference_texts`), and :meth:`SentenceEncoder.tokenize` always truncates, cutting only
the sentence, never the template. Tokenizing once with a limit one token above the model's maximum
input length answers it exactly, for every pooler: a row of ``max_length + 1`` tokens was cut, so its
text is over-long; any shorter row is the full text. Only the over-long texts are tokenized again at
the model's length when truncation is asked for, so their rows are the ones ``encode`` would build.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from csekit.models import SentenceEncoder
from csekit.serve.errors import ApiError


@dataclass(frozen=True)
class TokenRows:
    """Each text's token fields (``input_ids``, ``attention_mask``, ...), and how many were cut to fit."""

    rows: list[dict[str, list[int]]]
    truncated: int

    @property
    def tokens(self) -> int:
        """Tokens the model reads for these texts (special and template tokens included)."""
        return sum(len(row["input_ids"]) for row in self.rows)


def tokenize_inputs(encoder: SentenceEncoder, texts: Sequence[str], *, truncate: bool, names: Sequence[str]) -> TokenRows:
    """The rows of ``texts`` at most ``encoder.max_length`` long; an over-long text is an error naming it (by
    ``names``) and the limit unless ``truncate``, when it is cut as :meth:`SentenceEncoder.encode` cuts it."""
    limit = encoder.max_length
    rows = encoder.inference_tokens(texts, max_length=limit + 1)
    over = [index for index, row in enumerate(rows) if len(row["input_ids"]) > limit]
    if over and not truncate:
        where = names[over[0]]
        subject = f"{where} has" if len(over) == 1 else f"{where} and {len(over) - 1} more inputs have"
        raise ApiError(413, f"{subject} more than {limit} tokens, the model's maximum input length (max_input_tokens "
                       f"{limit}); truncate=true cuts over-long inputs to {limit} tokens", code="input_too_many_tokens",
                       param=where)  # fmt: skip
    if over:
        for index, row in zip(over, encoder.inference_tokens([texts[i] for i in over])):
            rows[index] = row
    return TokenRows(rows, truncated=len(over))
