"""The evaluator contract: the sentences it needs in, named numbers out.

An :class:`Evaluator` declares

- ``family``: its registry name (:data:`csekit.evaluation.EVALUATORS`), also the group name that selects
  all of its ``tasks`` in ``--tasks`` (``sts``, ``transfer``);
- ``sentences``: every text it needs embedded (an evaluation pass encodes the union of all families'
  sentences once: :func:`csekit.evaluation.evaluate_all`);
- ``score(embeddings) -> {metric: value}`` from the embeddings of ``sentences`` (row i: sentence i);
- ``primary_metric`` and ``greater_is_better`` (model selection: the trainer keeps the best checkpoint
  by any evaluator's metric);
- ``format_table(metrics)`` and ``summary_rows()``: how its results print alone and over several models;
- ``from_settings(tasks, settings)``: how the CLI and the trainer build it.

Metric names are the family's own (``avg``, ``stsb``); :func:`csekit.evaluation.flat_metrics` namespaces
them (``sts/avg``) wherever families meet, so none overwrites another.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np

from csekit.errors import CsekitError


class Encoder(Protocol):
    """Anything with csekit's ``encode``: a :class:`~csekit.SentenceEncoder`, or a wrapper of another library."""

    def encode(self, texts: list[str], *, batch_size: int = ...) -> np.ndarray: ...


@dataclass(frozen=True)
class EvaluationSettings:
    """What a run of evaluators shares: where the data is, how to encode, which protocol variants."""

    data_dir: str | os.PathLike | None = None  # SentEval's downstream/ folder (default: $CSEKIT_DATA)
    batch_size: int = 128
    mode: str = "test"  # STS: test sets, or dev (STS-B dev, SICK-R trial)
    transfer_mode: str = "test"  # SentEval's classifier settings: test or fasttest
    limit: int | None = None  # transfer: a seeded subset of at most this many examples a split (quick looks only)


class Evaluator(ABC):
    family: ClassVar[str]
    #: Task names this family answers for in ``--tasks`` (the family name selects all of them).
    tasks_known: ClassVar[tuple[str, ...]] = ()
    primary_metric: ClassVar[str]
    greater_is_better: ClassVar[bool] = True

    sentences: list[str]
    batch_size: int = 128

    @classmethod
    @abstractmethod
    def from_settings(cls, tasks: list[str], settings: EvaluationSettings) -> Evaluator:
        """The evaluator of ``tasks`` (names from ``tasks_known``, or ``[family]``)."""

    @classmethod
    def expand(cls, name: str, settings: EvaluationSettings) -> list[str]:
        """The tasks ``name`` (a task or the family name) stands for."""
        return list(cls.tasks_known) if name == cls.family and cls.tasks_known else [name]

    @abstractmethod
    def score(self, embeddings: np.ndarray) -> dict[str, float]:
        """Metrics from the (S, H) embeddings of ``self.sentences``."""

    def evaluate(self, model: Encoder) -> dict[str, float]:
        return self.score(model.encode(self.sentences, batch_size=self.batch_size))  # (S, H)

    @abstractmethod
    def format_table(self, metrics: dict[str, float]) -> str:
        """The metrics as a plain-text table."""

    def summary_rows(self) -> list[tuple[str, str, int]]:
        """(metric, title, decimals) of the rows a table over several models shows."""
        return [(self.primary_metric, self.primary_metric, 2)]

    def improves(self, metric: str, value: float, best: float | None) -> bool:
        """Whether ``value`` of ``metric`` beats ``best`` (None: nothing yet)."""
        return best is None or (value > best if self.greater_is_better else value < best)


def parse_task_names(spec: str | list[str] | tuple[str, ...], *, known: tuple[str, ...], group: str) -> list[str]:
    """``group`` (all of ``known``) or names separated by commas; each task once, in the order given."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    tasks: list[str] = []
    for name in (n.strip().lower() for n in names if n.strip()):
        for task in known if name == group else (name,):
            if task not in known:
                raise CsekitError(f"unknown task {name!r}; choose {group!r} or some of {', '.join(known)}")
            if task not in tasks:
                tasks.append(task)
    if not tasks:
        raise CsekitError("no task given")
    return tasks
