"""The registry of data pipelines: CLI name → pipeline function (the contract: :mod:`csekit.generation.pipeline`)."""

from __future__ import annotations

from collections.abc import Callable

from csekit.generation.pipeline import PipelineResult
from csekit.generation.pipelines import claif, gcse, syncse

#: CLI name -> ``run(rows, generator, *, work_dir, sampling, **options) -> PipelineResult``.
PIPELINES: dict[str, Callable[..., PipelineResult]] = {
    "syncse": syncse.run,
    "claif": claif.run,
    "gcse": gcse.run,
}
