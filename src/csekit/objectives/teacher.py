"""What the distillation objectives share: a frozen teacher and its embeddings of text columns.

The teacher is a :class:`~csekit.objectives.frozen.FrozenHelper` built from its reference (a saved model,
or ``""`` for a frozen copy of the starting model). It always reads the column's raw text through its own
tokenizer, at its own max length, even when it shares the student's vocabulary: what it computes for a
sentence then does not depend on how the student's side was truncated, and equals what the trainer
computes once per corpus and caches (:mod:`csekit.training.teacher_embeddings`). Its embedding is the
teacher's output as its saved model defines it: unit rows when the model ends with ``Normalize``
(all-MiniLM-L6-v2), as sentence-transformers' ``teacher.encode`` gives them to its distillation losses.

A batch carries the teacher's embedding of column ``c`` as ``batch["embeddings"]["teacher_c"]`` when the
trainer precomputed it (:meth:`TeacherEmbeddings.precomputed_embeddings`, or a recipe's own
``embedding_files: {teacher_sent0: file.npy}``); else the teacher embeds the batch's text.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor
from torch.nn import functional as F

from csekit.data.batches import EMBEDDINGS, TEXT, Batch
from csekit.errors import CsekitError
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.frozen import FrozenHelper


def teacher_key(column: str) -> str:
    """The ``batch["embeddings"]`` name of the teacher's embedding of ``column``."""
    return f"teacher_{column}"


def teacher_output(teacher: FrozenHelper, texts: Sequence[str]) -> Tensor:
    """(N, Ht) the teacher's embeddings of ``texts``, normalised where its saved model normalises."""
    rows = teacher.embed_texts(list(texts))
    return F.normalize(rows, dim=-1) if teacher.module.normalize else rows


def frozen_teacher(encoder: SentenceEncoder, reference: str, columns: tuple[str, ...] = ("sent0",)) -> FrozenHelper:
    """The teacher helper built from ``reference``, reading the raw text of ``columns`` (see the module docstring)."""
    teacher = FrozenHelper.encoder(encoder, reference, role="teacher", columns=columns)
    teacher.text_columns = columns  # raw text always
    return teacher


def teacher_rows(teacher: FrozenHelper, batch: Batch, column: str, key: str | None = None) -> Tensor:
    """(B, Ht) ``teacher``'s embeddings of ``column``: the batch's precomputed ``key`` (default
    :func:`teacher_key`), or computed from the batch's text."""
    key = key or teacher_key(column)
    width = teacher.module.embedding_dim
    precomputed = batch.get(EMBEDDINGS, {}).get(key)
    if precomputed is not None:
        if precomputed.shape[-1] != width:
            raise CsekitError(f"precomputed {key} embeddings are {precomputed.shape[-1]} wide; the "
                              f"teacher {teacher.reference!r} gives {width}")  # fmt: skip
        return precomputed
    if column not in batch.get(TEXT, {}):
        raise CsekitError(f"the teacher needs the raw text of column {column} or its precomputed "
                          f"{key} embeddings; this batch carries neither")  # fmt: skip
    return teacher_output(teacher, batch[TEXT][column])


class TeacherEmbeddings:
    """A mixin for an :class:`~csekit.objectives.base.Objective` distilled from a frozen teacher on one text
    column: ``embed`` gives ``{"student": (B, H), "teacher": (B, Ht)}``."""

    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    views: ClassVar[tuple[str, ...]] = ("sent0",)
    sentence_keys: ClassVar[tuple[str, ...]] = ("student",)

    def build_teacher(self, encoder: SentenceEncoder, reference: str, columns: tuple[str, ...] = ("sent0",)) -> None:
        self.teacher = frozen_teacher(encoder, reference, columns)

    @property
    def teacher_dim(self) -> int:
        return self.teacher.module.embedding_dim

    def teacher_rows(self, batch: Batch, column: str) -> Tensor:
        """(B, Ht) the teacher's embeddings of ``column``: precomputed, or computed from the batch's text."""
        return teacher_rows(self.teacher, batch, column)

    def precomputed_embeddings(self) -> dict[str, tuple[FrozenHelper, str]]:
        return {teacher_key(column): (self.teacher, column) for column in self.teacher.text_columns}

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> dict[str, Tensor]:
        return {"student": encoder(**batch["sent0"]), "teacher": self.teacher_rows(batch, "sent0")}  # (B, H), (B, Ht)
