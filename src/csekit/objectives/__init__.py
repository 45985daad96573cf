"""Training objectives: one file per method, one registry for the CLI."""

from __future__ import annotations

import inspect
from typing import Any

from csekit.errors import CsekitError
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Objective
from csekit.objectives.clear import CLEAR
from csekit.objectives.consert import ConSERT
from csekit.objectives.dclr import DCLR
from csekit.objectives.debcse import DebCSE
from csekit.objectives.diffcse import DiffCSE
from csekit.objectives.esimcse import ESimCSE
from csekit.objectives.gcse import GCSE
from csekit.objectives.promptbert import PromptBERT
from csekit.objectives.simcse import SupervisedSimCSE, UnsupervisedSimCSE

#: CLI name -> objective class.
OBJECTIVES: dict[str, type[Objective]] = {
    "simcse": UnsupervisedSimCSE,
    "simcse_sup": SupervisedSimCSE,
    "gcse": GCSE,
    "dclr": DCLR,
    "debcse": DebCSE,
    "esimcse": ESimCSE,
    "consert": ConSERT,
    "clear": CLEAR,
    "diffcse": DiffCSE,
    "promptbert": PromptBERT,
}


def build_objective(
    name: str, encoder: SentenceEncoder, *, options: dict[str, Any] | None = None, **shared: Any
) -> Objective:
    """Instantiate ``name``.

    ``shared`` are recipe-wide keys (temperature, model, ...): each objective takes the ones its
    constructor accepts. ``options`` are meant for this objective alone, so an unknown one is an error.
    """
    try:
        cls = OBJECTIVES[name]
    except KeyError:
        raise CsekitError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}") from None
    accepted = [key for key in inspect.signature(cls.__init__).parameters if key not in ("self", "encoder")]
    unknown = sorted(set(options or {}) - set(accepted))
    if unknown:
        raise CsekitError(f"objective {name!r} has no option(s) {', '.join(unknown)}; it accepts {', '.join(accepted)}")
    kwargs = {key: value for key, value in shared.items() if key in accepted}
    return cls(encoder, **kwargs, **(options or {}))


__all__ = ["OBJECTIVES", "Batch", "Objective", "build_objective"]
