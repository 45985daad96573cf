"""Frozen helper encoders: the fixed models that debiasing objectives consult to judge negatives.

GCSE compares against a frozen base model, DCLR screens negatives with a frozen complementary model
and DebCSE scores semantic similarity with one. Each is either a saved model (a path) or, by default,
a copy of the starting model taken when the objective is built, before any training step.

A helper reads the training batch's token ids, so a loaded one must share the model's vocabulary.
It stays in eval mode (no dropout) with no gradients; the objective lists it in ``frozen_modules``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from csekit.errors import CsekitError
from csekit.models import load_encoder
from csekit.models.encoder import SentenceEncoder


def frozen_encoder(encoder: SentenceEncoder, path: str = "", *, role: str) -> SentenceEncoder:
    """``path`` loaded with its saved pooler, or (``path=""``) a copy of ``encoder`` as it is now.

    The copy keeps the MLP head on in eval mode too, so it computes what the training forward of the
    starting model computes, without dropout. ``role`` names the option in error messages.
    """
    if path:
        helper = load_encoder(path).to(encoder.device)
        if helper.tokenizer.get_vocab() != encoder.tokenizer.get_vocab():
            raise CsekitError(f"{role} {path!r} has another vocabulary than the model being trained; it reads the "
                              "same token ids, so give a model with the same tokenizer")  # fmt: skip
    else:
        helper = copy.deepcopy(encoder)
        helper.head_at_inference = helper.head is not None
    helper.requires_grad_(False)
    return helper.eval()


@torch.no_grad()
def embed_frozen(helper: SentenceEncoder, tokens: dict[str, Tensor]) -> Tensor:
    """(B, T) token ids -> (B, H') embeddings of the frozen helper, without dropout or a graph."""
    helper.eval()
    return helper(**tokens).detach()
