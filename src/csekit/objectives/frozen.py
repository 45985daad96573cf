"""Frozen helpers: the fixed models an objective consults (a base model, a complementary model, a
generator, a teacher).

GCSE compares against a frozen base model, DCLR screens negatives with a frozen complementary model,
DebCSE scores semantic similarity with one, DiffCSE's generator fills masked tokens. A helper is built
once from its ``reference``: a saved model (a path or hub id), or ``""`` for a copy of the starting model
taken when the objective is built, before any training step. It stays in eval mode (no dropout) with no
gradients, and is not written into checkpoints: a resumed run builds it again from its reference and
checks, by a fingerprint of its weights, that it is the same model (:meth:`FrozenHelper.fingerprint`).

A sentence-encoder helper embeds a batch column (:meth:`FrozenHelper.embed`). With the student's
vocabulary it reads the batch's token ids, exactly the text the student sees (truncation included); with
a tokenizer of its own it reads the column's raw text (``batch["text"]``), which the trainer then loads
for it (``text_columns``). A helper asked to embed token ids the objective built itself (augmented views)
needs the student's vocabulary and says so when it has another.
"""

from __future__ import annotations

import copy
import hashlib

import torch
from torch import Tensor, nn

from csekit.data.batches import TEXT, Batch
from csekit.data.collate import concat_fields, pad_batch
from csekit.errors import CsekitError
from csekit.models import load_transformer
from csekit.models.encoder import SentenceEncoder

_ANOTHER_VOCABULARY = ("{role} {reference!r} has another vocabulary than the model being trained; it reads the "
                       "same token ids, so give a model with the same tokenizer")


class FrozenHelper(nn.Module):
    """A frozen module with the reference it was built from (``""``: a copy of the starting model)."""

    def __init__(self, module: nn.Module, *, reference: str, role: str, text_columns: tuple[str, ...] = ()):
        super().__init__()
        self.module = module.requires_grad_(False).eval()
        self.reference, self.role = reference, role
        #: Columns whose raw text this helper reads (set by :meth:`encoder`, for its own tokenizer).
        self.text_columns = text_columns
        self._fingerprint: str | None = None

    @classmethod
    def encoder(cls, student: SentenceEncoder, reference: str = "", *, role: str,
                columns: tuple[str, ...] | None = ("sent0",)) -> FrozenHelper:  # fmt: skip
        """A sentence-encoder helper: ``reference`` loaded with its saved pooler, or (``""``) a copy of
        ``student`` as it is now, head kept in eval mode too (what the starting model's training forward
        computes, without dropout). ``role`` names the option in messages; ``columns`` are the batch
        columns it embeds, None when it embeds token ids the objective builds (it must then share the
        student's vocabulary)."""
        if reference:
            helper = load_transformer(reference, purpose=f"the {role} helper").to(student.device)
        else:
            helper = copy.deepcopy(student)
            helper.head_at_inference = helper.head is not None
        shared = helper.tokenizer.get_vocab() == student.tokenizer.get_vocab()
        if not shared and columns is None:
            raise CsekitError(_ANOTHER_VOCABULARY.format(role=role, reference=reference))
        return cls(helper, reference=reference, role=role, text_columns=() if shared else tuple(columns))

    def train(self, mode: bool = True) -> FrozenHelper:
        return super().train(False)  # no dropout, ever

    @torch.no_grad()
    def forward(self, *args, **kwargs):
        """The frozen module's own forward, without a graph (a generator's logits)."""
        return self.module(*args, **kwargs)

    @property
    def shares_vocabulary(self) -> bool:
        return not self.text_columns

    @torch.no_grad()
    def embed(self, batch: Batch, *columns: str) -> Tensor:
        """(len(columns) * B, H') embeddings of batch columns in one graph-free pass, column after column:
        their token ids, or their texts for a helper with its own tokenizer."""
        if self.shares_vocabulary:
            return self.module(**concat_fields([batch[column] for column in columns], self.module.pad_token_id)).detach()
        texts = batch.get(TEXT, {})
        missing = [column for column in columns if column not in texts]
        if missing:
            raise CsekitError(f"{self.role} {self.reference!r} has its own tokenizer and needs the raw text of "
                              f"column(s) {', '.join(missing)}, which this batch does not carry")  # fmt: skip
        return self.embed_texts([text for column in columns for text in texts[column]])

    @torch.no_grad()
    def embed_texts(self, sentences: list[str]) -> Tensor:
        """(N, H') embeddings of raw texts through the helper's own tokenizer (its own max length)."""
        tokens = self.module.tokenize(sentences)
        padded = pad_batch([{key: ids[i] for key, ids in tokens.items()} for i in range(len(sentences))],
                           self.module.pad_token_id)  # fmt: skip
        device = self.module.device
        return self.module(**{key: value.to(device) for key, value in padded.items()}).detach()

    @torch.no_grad()
    def embed_tokens(self, tokens: dict[str, Tensor]) -> Tensor:
        """(B, H') embeddings of token ids in the student's vocabulary (views the objective built)."""
        if not self.shares_vocabulary:
            raise CsekitError(_ANOTHER_VOCABULARY.format(role=self.role, reference=self.reference))
        return self.module(**tokens).detach()

    def fingerprint(self) -> str:
        """sha256 over the helper's parameters and buffers (names, shapes, values): same model, same digest.
        Computed once: the helper never changes."""
        if self._fingerprint is None:
            self._fingerprint = self._digest()
        return self._fingerprint

    def _digest(self) -> str:
        digest = hashlib.sha256()
        for name, value in sorted(self.module.state_dict().items()):
            tensor = value.detach().to("cpu").contiguous()
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()
