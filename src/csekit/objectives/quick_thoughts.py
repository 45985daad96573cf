"""Quick-Thoughts (Logeswaran & Lee, ICLR 2018, "An efficient framework for learning sentence
representations").

A batch is B consecutive sentences of a text. Two encoders, f (the input encoder) and g (the context
encoder), embed every sentence; each sentence classifies its true neighbours (previous and next, within
``context_size``) among all sentences of the batch by the inner product ``f(s) . g(s')`` (Sec. 3, Eq. 1-2:
:func:`csekit.losses.quick_thoughts`). The paper's default has f and g with separate parameters, and its
sentence embedding at test time is the concatenation ``[f(s); g(s)]``; ``shared_encoder=True`` makes
f = g (the paper's variant with one encoder).

As in the reference code (``lajanugen/S2V``: ``s2v_model.py::build_loss``, ``train.py``): the input is read
in order (``shuffle_input_data=False``), so a batch is consecutive sentences (csekit shuffles the order of
the blocks only: ``contiguous_batches``); the scores are plain inner products (no normalisation, no
temperature); the diagonal is set to 0, not removed; the targets are uniform over the neighbours; the
loss is the batch mean of the softmax cross-entropy. g starts as a copy of the starting encoder (the
reference initialises both encoders the same way, at random).

Departures: the encoders are the recipe's pretrained transformer and pooler instead of the paper's GRUs
over word embeddings. The saved model is f alone: a sentence-transformers folder is one transformer
followed by its pooler, so ``[f; g]`` would need a module stock sentence-transformers cannot load;
``shared_encoder=True`` trains the one encoder that is saved. The candidates are the process's own batch
(the reference runs on one device): under several processes each rank's block is its own batch.
"""

from __future__ import annotations

import copy
from typing import ClassVar

from torch import Tensor

from csekit.errors import CsekitError
from csekit.losses import quick_thoughts
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext


class QuickThoughts(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    views: ClassVar[tuple[str, ...]] = ("sent0",)
    sentence_keys: ClassVar[tuple[str, ...]] = ("f", "g")
    contiguous_batches: ClassVar[bool] = True

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, context_size: int = 1,
                 shared_encoder: bool = False) -> None:  # fmt: skip
        super().__init__()
        if context_size < 1:
            raise CsekitError(f"quick_thoughts: context_size must be >= 1 sentence, got {context_size}")
        self.context_size = context_size
        # g, the context encoder: its own copy of the starting model, trained with the objective.
        self.context_encoder = None if shared_encoder else copy.deepcopy(encoder)

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        sentences = batch["sent0"]
        first = encoder(**sentences)  # (B, H): f
        second = first if self.context_encoder is None else self.context_encoder(**sentences)  # (B, H): g
        return {"f": first, "g": second}

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        return {"neighbours": quick_thoughts(embeddings["f"], embeddings["g"], context_size=self.context_size)}
