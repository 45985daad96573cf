"""The evaluator contract: a model in, named numbers out."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from csekit.errors import CsekitError


class Encoder(Protocol):
    """Anything with csekit's ``encode``: a :class:`~csekit.SentenceEncoder`, or a wrapper of another library."""

    def encode(self, texts: list[str], *, batch_size: int = ...) -> np.ndarray: ...


class Evaluator(Protocol):
    """``evaluate(model)`` returns flat ``{metric name: value}``; ``primary_metric`` names the headline."""

    primary_metric: str

    def evaluate(self, model: Encoder) -> dict[str, float]: ...


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
