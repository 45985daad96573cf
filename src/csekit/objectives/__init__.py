"""Training objectives: one file per method, one registry for the CLI."""

from __future__ import annotations

import inspect
from typing import Any

from csekit.errors import CsekitError
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Objective
from csekit.objectives.simcse import SupervisedSimCSE, UnsupervisedSimCSE

#: CLI name -> objective class.
OBJECTIVES: dict[str, type[Objective]] = {
    "simcse": UnsupervisedSimCSE,
    "simcse_sup": SupervisedSimCSE,
}


def build_objective(name: str, encoder: SentenceEncoder, **options: Any) -> Objective:
    """Instantiate ``name`` with the options its constructor accepts (the rest belong to other objectives)."""
    try:
        cls = OBJECTIVES[name]
    except KeyError:
        raise CsekitError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}") from None
    accepted = inspect.signature(cls.__init__).parameters
    return cls(encoder, **{key: value for key, value in options.items() if key in accepted})


__all__ = ["OBJECTIVES", "Batch", "Objective", "build_objective"]
