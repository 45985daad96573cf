"""LLM generators and the data pipelines that use them to write training files.

:mod:`csekit.generation.base` holds the contract every generator keeps (:class:`Sampling`, :data:`Prompt`,
:class:`Generator`), :class:`CachedGenerator` (a content-addressed disk cache in front of any generator) and
:func:`~csekit.generation.specs.make_generator` (a ``--generator`` spec → a generator). Pipelines are registered in
:data:`csekit.generation.pipelines.PIPELINES`; their prompt templates are versioned files under
``templates/<pipeline>/``.
"""

from __future__ import annotations

from csekit.generation.base import CachedGenerator, Generator, Prompt, Sampling
from csekit.generation.specs import make_generator

__all__ = ["CachedGenerator", "Generator", "Prompt", "Sampling", "make_generator"]
