"""DefSent (Tsukagoshi, Sasano & Takeda, ACL 2021, "DefSent: Sentence Embeddings using Definition Sentences").

A definition sentence's embedding (the encoder's pooler: [CLS], mean or max, Sec. 3) goes through the
pretrained masked-LM prediction layer of the same checkpoint (BERT's ``cls.predictions``: transform and
decoder), frozen, and must predict the defined word: cross-entropy over the vocabulary (Sec. 3).
Only words that are one token of the vocabulary are headwords (Sec. 4.1).

As in the reference code (``hpprc/DefSent``, ``experiments/src/model.py``, ``data_module.py``,
``experiment.py``, ``configs/``): the prediction layer and the token embeddings (the backbone's whole
embeddings module) are frozen (``freeze_prediction_layer``, ``freeze_token_embeddings``); the headword is
tokenized without special tokens and kept when it is one token; the loss is the mean cross-entropy over the
kept rows. Training data are (definition, headword) pairs: ``sent0`` the definition, ``sent1`` the headword
(``wordnet:DIR`` reads them from WordNet's database: :mod:`csekit.data.dictionary`).

Departures: the reference reads Ishiwatari et al.'s Oxford dictionary split and filters headwords when it
loads them; here any (definition, headword) file works, and a row whose headword is several tokens is left
out of the loss (it is in the batch, with no term), so a batch has fewer rows in the loss than its size.
csekit's mean and max poolers read every token of the attention mask, [CLS] and [SEP] included; the
reference's leave those two out. The reference's optimiser is Adam; csekit's trainer uses AdamW (with the
recipe's weight decay 0, the same update).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor
from torch.nn import functional as F

from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.mlm import pretrained_mlm_head


class DefSent(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0", "sent1")  # definition, headword
    views: ClassVar[tuple[str, ...]] = ("sent0",)
    sentence_keys: ClassVar[tuple[str, ...]] = ("definition",)
    truncatable: ClassVar[bool] = False  # the prediction layer reads the full width

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, prediction_layer: str = "") -> None:
        super().__init__()
        # The checkpoint's own prediction layer (a copy, not tied): frozen, so equal to the tied one.
        self.prediction_layer = pretrained_mlm_head(prediction_layer or context.model, encoder).requires_grad_(False)
        encoder.backbone.get_input_embeddings().requires_grad_(False)
        embeddings = getattr(encoder.backbone, "embeddings", None)  # BERT's word, position and type embeddings
        if embeddings is not None:
            embeddings.requires_grad_(False)
        self.special_ids = tuple(encoder.tokenizer.all_special_ids)

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        return {"definition": encoder(**batch["sent0"]), "headword": headword_ids(batch["sent1"], self.special_ids)}

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        logits = self.prediction_layer(embeddings["definition"])  # (B, V)
        return {"headword": headword_cross_entropy(logits, embeddings["headword"])}


def headword_ids(headwords: dict[str, Tensor], special_ids: tuple[int, ...]) -> Tensor:
    """(B,) the token id of each headword that is one token (no special tokens counted), -100 otherwise."""
    ids, mask = headwords["input_ids"], headwords["attention_mask"].bool()
    real = mask & ~torch.isin(ids, torch.tensor(special_ids, device=ids.device))  # (B, T)
    first = ids.gather(1, real.long().argmax(dim=1, keepdim=True)).squeeze(1)  # (B,): the first real token
    return torch.where(real.sum(dim=1) == 1, first, torch.full_like(first, -100))


def headword_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy of (B, V) logits against (B,) headword ids over the rows whose id is not -100
    (0, with a gradient, when there is none)."""
    kept = targets != -100
    if not kept.any():
        return logits.sum() * 0.0
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits[kept], targets[kept])
