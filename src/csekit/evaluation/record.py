"""The evaluation record: what ``csekit eval --json`` writes and ``csekit report`` reads back.

    {"schema": "csekit-evaluation/1", "model": "runs/simcse/best", "pooler": "cls_before_pooler",
     "settings": {"tasks": "sts", "mode": "test", "transfer_mode": "test"}, "seconds": 181.2,
     "results": {"sts": {"sts12": 51.9, ..., "avg": 56.7}, "transfer": {...}}}

``results`` holds each evaluator family's own metrics; :meth:`EvaluationRecord.flat` names them
``family/metric``. Records written before the schema (a flat ``metrics`` mapping, the transfer average as
``transfer/avg``) are read too: each key goes to the family that owns its first part.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from csekit.atomic import write_text
from csekit.errors import CsekitError
from csekit.evaluation import EVALUATORS, flat_metrics

SCHEMA = "csekit-evaluation/1"
#: Metric roots of records without a schema that are not task names: the family that wrote them.
_UNSCHEMED_ROOTS = {"avg": "sts", "align": "align_uniform", "uniform": "align_uniform", "effective_rank": "rank",
                    "rank": "rank", "anisotropy": "rank", "sentences": "rank"}  # fmt: skip


@dataclass
class EvaluationRecord:
    model: str
    pooler: str
    results: dict[str, dict[str, float]]
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float | None = None

    def flat(self) -> dict[str, float]:
        return flat_metrics(self.results)

    def write(self, path: str | os.PathLike) -> None:
        write_text(Path(path), json.dumps({"schema": SCHEMA, **asdict(self)}, indent=2) + "\n")

    @classmethod
    def read(cls, path: str | os.PathLike) -> EvaluationRecord:
        path = Path(path)
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise CsekitError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
        if not isinstance(value, dict):
            raise CsekitError(f"{path}: an evaluation record is a JSON object")
        if value.get("schema") == SCHEMA:
            return cls(**{key: value[key] for key in ("model", "pooler", "results", "settings", "seconds") if key in value})
        if "metrics" in value:
            return cls(str(value.get("model", "")), str(value.get("pooler", "")), _unschemed(value["metrics"]))
        raise CsekitError(f"{path}: not an evaluation record ({SCHEMA}): it has neither results nor metrics")


def _unschemed(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """A flat metrics mapping of a record without a schema -> {family: metrics}."""
    owner = {task: family for family, cls in EVALUATORS.items() for task in cls.tasks_known} | _UNSCHEMED_ROOTS
    results: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key == "transfer/avg":
            results.setdefault("transfer", {})["avg"] = value
            continue
        family = owner.get(key.split("/", 1)[0])
        if family is not None:
            results.setdefault(family, {})[key] = value
    return results
