"""Static embeddings distilled from a sentence encoder: a table of token vectors, a sentence their mean.

- ``model2vec`` (:mod:`csekit.static.model2vec`): each vocabulary token through the teacher alone, PCA,
  Zipf-rank SIF weights; no corpus.
- ``contextual`` (:mod:`csekit.static.contextual`, :mod:`csekit.static.finetune`): Wada et al. 2025's
  contextual averages over a corpus, sentence-level PCA that removes the top components, then the
  in-batch similarity distribution distilled from the teacher.

Both give a :class:`~csekit.models.static.StaticEncoder`, saved as a sentence-transformers
``StaticEmbedding`` folder.
"""

from __future__ import annotations

from collections.abc import Sequence

from csekit.models import SentenceEncoder
from csekit.models.static import StaticEncoder
from csekit.static.contextual import DIM, PER_TOKEN, REMOVE, distill_contextual
from csekit.static.finetune import REFERENCE_SCHEDULE, FineTuneSettings, fine_tune
from csekit.static.model2vec import SIF_COEFFICIENT, distill_model2vec
from csekit.static.vocabulary import skipped_ids

METHODS = ("model2vec", "contextual")


def distill_static(teacher: SentenceEncoder, *, method: str, sentences: Sequence[str] = (), dim: int = DIM,
                   sif_coefficient: float | None = SIF_COEFFICIENT, remove: int = REMOVE, per_token: int = PER_TOKEN,
                   fine_tuning: FineTuneSettings | None = REFERENCE_SCHEDULE) -> tuple[StaticEncoder, dict]:  # fmt: skip
    """The static model of ``teacher`` by ``method`` and a report of how it was made (``fine_tuning`` None:
    the contextual table without its fine-tuning step)."""
    if method == "model2vec":
        student = distill_model2vec(teacher, dim=dim, sif_coefficient=sif_coefficient)
        return student, dict(student.provenance)
    if method != "contextual":
        raise ValueError(f"unknown static method {method!r} (known: {', '.join(METHODS)})")
    student, used, embeddings, report = distill_contextual(teacher, sentences, dim=dim, remove=remove, per_token=per_token)
    if fine_tuning is not None:
        record = fine_tune(student, [sentences[i] for i in used], embeddings, frozen=skipped_ids(teacher.tokenizer),
                           settings=fine_tuning)  # fmt: skip
        report["fine_tuning"] = record
        student.provenance["fine_tuning"] = {key: record[key] for key in ("settings", "best_step", "steps")}
    return student, report


__all__ = ["METHODS", "FineTuneSettings", "distill_contextual", "distill_model2vec", "distill_static", "fine_tune"]
