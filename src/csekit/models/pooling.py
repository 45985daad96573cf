"""Poolers: token states of a Hugging Face encoder -> one vector per sentence.

The names follow the poolers SimCSE compares (Gao et al. 2021, Table 6 and its ``evaluation.py``):

- ``cls``: the [CLS] state, passed through an MLP head (dense + tanh) by the encoder;
- ``cls_before_pooler``: the [CLS] state as it is;
- ``mean``: mean of the last layer over real tokens (SimCSE's ``avg``);
- ``max``: element-wise max of the last layer over real tokens;
- ``first_last_avg``: mean over tokens of (first layer + last layer) / 2, where the first layer is
  the output of the first transformer block, ``hidden_states[1]``, as in SimCSE's evaluation;
- ``last2avg``: mean over tokens of (last two layers) / 2 (SimCSE's ``avg_top2``);
- ``mask``: the last-layer state of the prompt's [MASK] token (PromptBERT, Jiang et al. 2022, Sec. 4);
  the encoder wraps each sentence in a template (:mod:`csekit.models.prompt`);
- ``mask_denoised``: the same state minus the [MASK] state of the template alone (PromptBERT's
  template denoising, Sec. 5); the encoder subtracts it, as it adds the ``cls`` head.

Each pooler is a pure function of the backbone output and the attention mask.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

#: Poolers that need every layer's hidden states from the backbone.
NEEDS_HIDDEN_STATES = frozenset({"first_last_avg", "last2avg"})
#: Poolers that read the prompt's [MASK] token: the encoder passes them the (B, T) [MASK] positions
#: where the other poolers get the attention mask (see :mod:`csekit.models.prompt`).
PROMPT_POOLERS = frozenset({"mask", "mask_denoised"})


def _masked_mean(token_states: Tensor, attention_mask: Tensor) -> Tensor:
    mask = attention_mask.unsqueeze(-1).to(token_states.dtype)  # (B, T, 1)
    summed = (token_states * mask).sum(dim=1)  # (B, H)
    return summed / mask.sum(dim=1).clamp(min=1e-9)


def _cls(last_hidden: Tensor, hidden_states: Sequence[Tensor] | None, attention_mask: Tensor) -> Tensor:
    return last_hidden[:, 0]  # (B, H)


def _mean(last_hidden: Tensor, hidden_states: Sequence[Tensor] | None, attention_mask: Tensor) -> Tensor:
    return _masked_mean(last_hidden, attention_mask)


def _max(last_hidden: Tensor, hidden_states: Sequence[Tensor] | None, attention_mask: Tensor) -> Tensor:
    padding = attention_mask.unsqueeze(-1) == 0  # (B, T, 1)
    return last_hidden.masked_fill(padding, float("-inf")).max(dim=1).values  # (B, H)


def _first_last_avg(
    last_hidden: Tensor, hidden_states: Sequence[Tensor] | None, attention_mask: Tensor
) -> Tensor:
    assert hidden_states is not None
    return _masked_mean((hidden_states[1] + hidden_states[-1]) / 2.0, attention_mask)


def _last2avg(last_hidden: Tensor, hidden_states: Sequence[Tensor] | None, attention_mask: Tensor) -> Tensor:
    assert hidden_states is not None
    return _masked_mean((hidden_states[-2] + hidden_states[-1]) / 2.0, attention_mask)


def _at_mask_token(
    last_hidden: Tensor, hidden_states: Sequence[Tensor] | None, mask_positions: Tensor
) -> Tensor:
    # One [MASK] per row, so the masked mean is that token's state exactly (x * 1 + 0 + ... = x).
    return _masked_mean(last_hidden, mask_positions)  # (B, H)


PoolFn = Callable[[Tensor, "Sequence[Tensor] | None", Tensor], Tensor]

#: CLI name -> pooling function. ``cls`` pools like ``cls_before_pooler``; the encoder adds the head.
#: ``mask_denoised`` pools like ``mask``; the encoder subtracts the template's own state.
POOLERS: dict[str, PoolFn] = {
    "cls": _cls,
    "cls_before_pooler": _cls,
    "mean": _mean,
    "max": _max,
    "first_last_avg": _first_last_avg,
    "last2avg": _last2avg,
    "mask": _at_mask_token,
    "mask_denoised": _at_mask_token,
}


def pool(
    name: str, last_hidden: Tensor, hidden_states: Sequence[Tensor] | None, attention_mask: Tensor
) -> Tensor:
    """Pool ``last_hidden`` (B, T, H) into (B, H) with the pooler called ``name``."""
    return POOLERS[check_pooler(name)](last_hidden, hidden_states, attention_mask)


def check_pooler(name: str) -> str:
    if name not in POOLERS:
        raise ValueError(f"unknown pooler {name!r}; choose one of {', '.join(POOLERS)}")
    return name

