"""MSE distillation (Reimers & Gurevych, EMNLP 2020, "Making Monolingual Sentence Embeddings Multilingual
using Knowledge Distillation", Sec. 2).

A student M-hat learns to map a sentence where a frozen teacher M maps it: for a parallel pair (s_i, t_i)
of a source sentence and its translation, over a batch B,

    1/|B| sum_i [ (M(s_i) - M-hat(s_i))^2 + (M(s_i) - M-hat(t_i))^2 ],

so the student puts both the source and its translation on the teacher's embedding of the *source*
(``parallel: true``, columns ``source`` and ``translation``). Both terms are returned on their own
(``mse_source``, ``mse_translation``), so a log shows that both sides are distilled. On monolingual text
(``sent0``, the default) the loss is the first term alone: plain embedding distillation, the
sentence-transformers ``model_distillation`` setting. Each term is the mean over the elements of the
squared difference, as sentence-transformers' ``MSELoss`` (``nn.MSELoss``) computes it.

The teacher's embedding is its saved model's output (unit rows for all-MiniLM-L6-v2, which ends with
``Normalize``), computed once per corpus and cached by the trainer (:mod:`csekit.objectives.teacher`).

Widths: when the student is narrower or wider than the teacher (BERT-mini 256, all-MiniLM-L6-v2 384), a
linear map (with a bias, no activation) from the student's width to the teacher's is added to the student
as its last output module, trained with it and **saved with the model** (a stock sentence-transformers
``Dense`` with the identity activation, so ``SentenceTransformer(path)`` loads it). It is part of the model
rather than train-only because MSE trains exactly the projected vector to *be* the teacher's: the
projected space is the one that carries the teacher's geometry (and the one a corpus embedded by the
teacher can be searched in), while the space before it is any linear preimage of it, whose cosines the
loss never constrains. sentence-transformers does the same when it adds a ``Dense`` layer to a student.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from csekit.data.collate import concat_fields
from csekit.models.encoder import SentenceEncoder
from csekit.models.modules import AffineMap
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.teacher import TeacherEmbeddings

PARALLEL_COLUMNS = ("source", "translation")


class MSEDistillation(TeacherEmbeddings, Objective):
    truncatable = False  # the projection onto the teacher reads the full width
    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, teacher: str = "", parallel: bool = False):
        super().__init__()
        self.parallel = parallel
        if parallel:
            self.columns = self.views = self.sentence_keys = PARALLEL_COLUMNS
        self.build_teacher(encoder, teacher, columns=(self.columns[0],))
        if encoder.embedding_dim != self.teacher_dim:
            projection = AffineMap(encoder.embedding_dim, self.teacher_dim).requires_grad_(True)
            encoder.set_outputs([*encoder.outputs, projection])  # saved with the model: see the module docstring

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        if not self.parallel:
            return super().embed(encoder, batch)
        size = batch["source"]["input_ids"].shape[0]
        both = encoder(**concat_fields([batch["source"], batch["translation"]], encoder.pad_token_id))  # (2B, Ht)
        source, translation = both.split(size)  # 2 x (B, Ht)
        return {"source": source, "translation": translation, "teacher": self.teacher_rows(batch, "source")}

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        teacher = embeddings["teacher"].float()  # (B, Ht): the source's, for both sides
        if not self.parallel:
            return {"mse": F.mse_loss(embeddings["student"].float(), teacher)}
        return {"mse_source": F.mse_loss(embeddings["source"].float(), teacher),
                "mse_translation": F.mse_loss(embeddings["translation"].float(), teacher)}  # fmt: skip
