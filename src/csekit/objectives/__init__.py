"""Training objectives: one file per method, one registry for the CLI, wrappers that add to any of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from csekit.errors import CsekitError
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.angle import AnglE
from csekit.objectives.base import Batch, Embeddings, Objective, ObjectiveWrapper, RunContext
from csekit.objectives.ckd import ContrastiveDistillation
from csekit.objectives.clear import CLEAR
from csekit.objectives.clusterns import ClusterNS
from csekit.objectives.consert import ConSERT
from csekit.objectives.cosent import CoSENT
from csekit.objectives.dclr import DCLR
from csekit.objectives.debcse import DebCSE
from csekit.objectives.declutr import DeCLUTR
from csekit.objectives.defsent import DefSent
from csekit.objectives.denosent import DenoSent, DenoSentPairs
from csekit.objectives.diffcse import DiffCSE
from csekit.objectives.distill_kl import SimilarityDistillation
from csekit.objectives.distill_mse import MSEDistillation
from csekit.objectives.esimcse import ESimCSE
from csekit.objectives.frozen import FrozenHelper
from csekit.objectives.gcse import GCSE
from csekit.objectives.gte import GTE
from csekit.objectives.matryoshka import Matryoshka
from csekit.objectives.matryoshka2d import Matryoshka2d
from csekit.objectives.micse import MiCSE
from csekit.objectives.mlm import MaskedLMAuxiliary
from csekit.objectives.options import check_options
from csekit.objectives.promcse import SupervisedPromCSE, UnsupervisedPromCSE
from csekit.objectives.promptbert import PromptBERT
from csekit.objectives.quick_thoughts import QuickThoughts
from csekit.objectives.rankcse import RankCSE
from csekit.objectives.sbert import SBERTClassification, SBERTRegression
from csekit.objectives.sgbert import SGBERT
from csekit.objectives.simcse import SupervisedSimCSE, UnsupervisedSimCSE
from csekit.objectives.starbucks import Starbucks
from csekit.objectives.whitenedcse import WhitenedCSE

#: CLI name -> objective class.
OBJECTIVES: dict[str, type[Objective]] = {
    "simcse": UnsupervisedSimCSE,
    "simcse_sup": SupervisedSimCSE,
    "gcse": GCSE,
    "dclr": DCLR,
    "debcse": DebCSE,
    "esimcse": ESimCSE,
    "clusterns": ClusterNS,
    "rankcse": RankCSE,
    "consert": ConSERT,
    "clear": CLEAR,
    "diffcse": DiffCSE,
    "promptbert": PromptBERT,
    "promcse": UnsupervisedPromCSE,
    "denosent": DenoSent,
    "denosent_pairs": DenoSentPairs,
    "promcse_sup": SupervisedPromCSE,
    "sgbert": SGBERT,
    "micse": MiCSE,
    "whitenedcse": WhitenedCSE,
    "sbert_softmax": SBERTClassification,
    "sbert_regression": SBERTRegression,
    "cosent": CoSENT,
    "angle": AnglE,
    "gte": GTE,
    "distill_mse": MSEDistillation,
    "ckd": ContrastiveDistillation,
    "distill_kl": SimilarityDistillation,
    "declutr": DeCLUTR,
    "quick_thoughts": QuickThoughts,
    "defsent": DefSent,
}
#: Recipe name (``wrappers:``) -> wrapper class, applied in the order a recipe lists them.
WRAPPERS: dict[str, type[ObjectiveWrapper]] = {
    "mlm": MaskedLMAuxiliary,
    "matryoshka": Matryoshka,
    "matryoshka2d": Matryoshka2d,
    "starbucks": Starbucks,
}


def objective_class(name: str) -> type[Objective]:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise CsekitError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}") from None


def wrapper_class(name: str) -> type[ObjectiveWrapper]:
    try:
        return WRAPPERS[name]
    except KeyError:
        raise CsekitError(f"unknown wrapper {name!r}; choose one of {', '.join(WRAPPERS)}") from None


def check_recipe_options(name: str, options: Mapping[str, Any], wrappers: Mapping[str, Mapping[str, Any]]) -> None:
    """Bind an objective's options and each wrapper's to their signatures (no model needed)."""
    check_options(objective_class(name), options, owner=f"objective {name!r}")
    for wrapper, settings in wrappers.items():
        check_options(wrapper_class(wrapper), settings or {}, owner=f"wrapper {wrapper!r}")


def build_objective(
    name: str,
    encoder: SentenceEncoder,
    *,
    options: Mapping[str, Any] | None = None,
    context: RunContext | None = None,
    wrappers: Mapping[str, Mapping[str, Any]] | None = None,
) -> Objective:
    """``name`` with ``options``, wrapped by each of ``wrappers`` in order, for ``encoder`` in ``context``
    (default: the encoder's max length, batch 64, one process)."""
    context = context or RunContext(max_length=encoder.max_length)
    cls = objective_class(name)
    objective = cls(encoder, context, **check_options(cls, options or {}, owner=f"objective {name!r}"))
    for wrapper, settings in (wrappers or {}).items():
        wrapper_cls = wrapper_class(wrapper)
        objective = wrapper_cls(objective, encoder, context,
                                **check_options(wrapper_cls, settings or {}, owner=f"wrapper {wrapper!r}"))  # fmt: skip
    return objective


__all__ = ["OBJECTIVES", "WRAPPERS", "Batch", "Embeddings", "FrozenHelper", "Objective", "ObjectiveWrapper",
           "RunContext", "build_objective", "check_recipe_options"]  # fmt: skip
