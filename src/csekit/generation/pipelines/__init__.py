"""The registry of data pipelines: CLI name → pipeline function (see :mod:`csekit.generation.pipeline`)."""

from __future__ import annotations

from collections.abc import Callable

from csekit.generation.pipeline import PipelineResult

#: CLI name -> ``run(rows, generator, *, work_dir, sampling, **options) -> PipelineResult``.
PIPELINES: dict[str, Callable[..., PipelineResult]] = {}
