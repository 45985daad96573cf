"""A distillation objective's teacher embeddings, computed once per corpus and served from the cache.

Before the first step, every embedding column an objective asks for (``precomputed_embeddings()``: the
teacher's embedding of a text column) that the recipe's ``embedding_files`` does not already give is
looked up in the content-addressed cache (:mod:`csekit.data.teacher_cache`) by the teacher's identity and
the corpus' texts, computed on a miss, and served memory-mapped as ``batch["embeddings"][name]``: a second
run on the same corpus, a resumed run and every seed of a ladder encode nothing. Under ``torchrun`` rank 0
fills the cache and the other ranks read it (one machine, one cache folder). Streamed data holds no corpus
in memory: the objective then embeds each batch's text with the teacher as it trains.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from csekit.data.batches import TrainingData
from csekit.data.teacher_cache import cached_embeddings
from csekit.distributed import get_rank, get_world_size
from csekit.inference.identity import model_identity, tokenization_digest
from csekit.objectives import FrozenHelper, Objective
from csekit.objectives.teacher import teacher_output

#: Texts per teacher forward pass when filling the cache.
ENCODE_BATCH = 128


def precompute_teacher_embeddings(objective: Objective, data: TrainingData, *, folder: str | None,
                                  given: Sequence[str] = ()) -> dict[str, Path]:  # fmt: skip
    """Attach the cached teacher embeddings to ``data``; returns ``{name: cache file}`` of those attached."""
    if data.streaming:
        return {}
    attached = {}
    for name, (teacher, column) in objective.precomputed_embeddings().items():
        if name in given:
            continue
        texts = data.texts(column)
        if get_rank() != 0:
            torch.distributed.barrier()  # rank 0 fills the cache first
        path = cached_embeddings(texts, identity=teacher_identity(teacher), folder=folder,
                                 encode=lambda texts, teacher=teacher: encode_texts(teacher, texts))  # fmt: skip
        if get_rank() == 0 and get_world_size() > 1:
            torch.distributed.barrier()
        if get_rank() == 0:
            print(f"teacher embeddings of {column}: {path}", file=sys.stderr)
        data.add_embeddings(name, path)
        attached[name] = path
    return attached


def teacher_identity(teacher: FrozenHelper) -> dict:
    """What decides the teacher's output, wherever its files live: weights, pooler, dim, normalisation, max
    length (:func:`~csekit.inference.identity.model_identity`) and how it tokenizes (its tokenizer's full
    definition, :func:`~csekit.inference.identity.tokenization_digest`)."""
    identity = model_identity(teacher.module, "")
    del identity["model"]  # a name, not content
    identity["tokenization"] = tokenization_digest(teacher.module, teacher.module.max_length)
    return identity


def encode_texts(teacher: FrozenHelper, texts: Sequence[str]) -> np.ndarray:
    """(N, Ht) float32: :func:`~csekit.objectives.teacher.teacher_output` over ``texts``, longest first in
    batches (little padding), rows in the caller's order."""
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    rows = np.empty((len(texts), teacher.module.embedding_dim), dtype=np.float32)
    starts = range(0, len(order), ENCODE_BATCH)
    for start in tqdm(starts, desc="teacher", disable=get_rank() != 0 or len(texts) <= ENCODE_BATCH, unit="batch"):
        indices = order[start : start + ENCODE_BATCH]
        rows[indices] = teacher_output(teacher, [texts[i] for i in indices]).float().cpu().numpy()
    return rows
