"""The generator contract, the content-addressed disk cache in front of any generator, and ``--generator`` specs.

A generator turns prompts into texts: ``generate(prompts, sampling)`` gives one output per prompt in the same
order, ``None`` where the backend failed for that prompt after its retries (a pipeline counts those and goes
on). Its ``identity`` names what computes the outputs (``hf:<weights digest>``, ``openai:<model>@<base_url>``):
the cache keys on it, so outputs of two models never mix.

:class:`CachedGenerator` stores every output as one small JSON file named by the sha256 of (identity, prompt,
sampling), written atomically the moment it arrives; a killed or rerun pipeline asks the inner generator only
for what is missing. A damaged entry (a torn disk, an edit by hand) is asked again, with a one-line note.
:func:`csekit.generation.specs.make_generator` turns a ``--generator`` spec into a generator.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from csekit.atomic import write_text
from csekit.errors import CsekitError, CsekitNote


@dataclass(frozen=True)
class Sampling:
    """How to decode; part of the cache key (two samplings of one prompt are two entries)."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise CsekitError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise CsekitError(f"temperature must be 0 (greedy) or more, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise CsekitError(f"top_p must be in (0, 1], got {self.top_p}")
        object.__setattr__(self, "stop", tuple(self.stop))  # a list from JSON or options still hashes


#: A plain prompt is sent as one user chat message; a tuple of ``{"role": ..., "content": ...}`` is a chat.
Prompt = str | tuple[Mapping[str, str], ...]


@runtime_checkable
class Generator(Protocol):
    identity: str

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[str | None]:
        """One output per prompt, same order; ``None`` where the backend failed for it after its retries."""
        ...


def as_messages(prompt: Prompt) -> list[dict[str, str]]:
    """``prompt`` as chat messages: a plain string is one user message."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(message["role"]), "content": str(message["content"])} for message in prompt]


def stream(generator: Generator, prompts: Sequence[Prompt], sampling: Sampling) -> Iterator[tuple[int, str | None]]:
    """``(index, output)`` as each output arrives: a generator with ``generate_each`` yields them as they
    finish (so a cache can keep each at once); any other gives them all when its ``generate`` returns."""
    each: Callable[..., Iterator[tuple[int, str | None]]] | None = getattr(generator, "generate_each", None)
    if each is not None:
        yield from each(prompts, sampling)
    else:
        yield from enumerate(generator.generate(prompts, sampling))


class StreamingGenerator:
    """A generator that yields ``(index, output)`` as outputs finish (:meth:`generate_each`); ``generate`` collects
    them in prompt order."""

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[str | None]:
        outputs: list[str | None] = [None] * len(prompts)
        for index, output in self.generate_each(prompts, sampling):
            outputs[index] = output
        return outputs

    def generate_each(self, prompts: Sequence[Prompt], sampling: Sampling) -> Iterator[tuple[int, str | None]]:
        raise NotImplementedError


def prompt_seed(seed: int, prompt: Prompt) -> int:
    """The sampling seed of one prompt: a digest of the run's ``seed`` and the prompt's messages (below 2**31).

    A server seeds its sampler per request, so one seed for every request gives every prompt the same random
    stream, and the draws of different prompts move together (three llama.cpp PTEB draws of all-MiniLM-L6-v2
    scored 88.45, 65.09 and 85.41; with a seed per prompt five draws spread 81.68–86.66). A seed per prompt keeps
    each output a function of the prompt and the sampling, as the cache assumes, while the prompts' draws stay
    independent."""
    record = json.dumps({"seed": seed, "messages": as_messages(prompt)}, sort_keys=True, ensure_ascii=False)
    return int.from_bytes(hashlib.sha256(record.encode()).digest()[:4], "big") >> 1


def cache_key(identity: str, prompt: Prompt, sampling: Sampling) -> str:
    """sha256 of what decides an output: the generator's identity, the prompt's messages and the sampling."""
    record = {"identity": identity, "messages": as_messages(prompt), "sampling": asdict(sampling)}
    return hashlib.sha256(json.dumps(record, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class CachedGenerator:
    """``generator`` behind a disk cache in ``cache_dir``: asks it only for the (distinct) prompts not stored yet.

    Failed outputs (``None``) are not stored, so a rerun asks for them again. ``asked`` counts the prompts
    sent to the inner generator, ``hits`` those answered from disk.
    """

    def __init__(self, generator: Generator, cache_dir: Path | str) -> None:
        self.inner = generator
        self.identity = generator.identity
        self.cache_dir = Path(cache_dir)
        self.asked = 0
        self.hits = 0

    def _path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _load(self, key: str) -> str | None:
        path = self._path(key)
        if not path.exists():
            return None
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            if entry["key"] != key or not isinstance(entry["output"], str):
                raise ValueError("key or output does not match")
            return entry["output"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            warnings.warn(f"cache entry {path.name} is damaged ({error}); asking for it again", CsekitNote,
                          stacklevel=3)  # fmt: skip
            return None

    def generate(self, prompts: Sequence[Prompt], sampling: Sampling) -> list[str | None]:
        keys = [cache_key(self.identity, prompt, sampling) for prompt in prompts]
        prompt_of = dict(zip(keys, prompts))  # distinct prompts, in first-seen order
        known: dict[str, str | None] = {key: output for key in prompt_of if (output := self._load(key)) is not None}
        self.hits += sum(key in known for key in keys)
        missing = [key for key in prompt_of if key not in known]  # one request per distinct prompt
        self.asked += len(missing)
        for index, output in stream(self.inner, [prompt_of[key] for key in missing], sampling):
            key = missing[index]
            known[key] = output
            if output is not None:  # written the moment it arrives: a kill loses only what is in flight
                record = {"key": key, "identity": self.identity, "messages": as_messages(prompt_of[key]),
                          "sampling": asdict(sampling), "output": output}  # fmt: skip
                write_text(self._path(key), json.dumps(record, ensure_ascii=False))
        return [known.get(key) for key in keys]
