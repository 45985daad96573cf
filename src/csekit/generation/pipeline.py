"""What every pipeline shares: versioned templates, output checks, provenance records and the result.

A pipeline is a function ``run(rows, generator, *, work_dir, sampling, **options) -> PipelineResult``
registered in :data:`csekit.generation.pipelines.PIPELINES`. ``rows`` are the input rows, ``{"sent0": text}``
(a ``.txt`` file of one sentence a line, or a ``.csv``/``.jsonl`` with a ``sent0`` column; a pipeline that
needs more columns names them in a function attribute ``input_columns``). ``sampling`` is a keyword-only
parameter whose default is the pipeline's own (the CLI's ``--temperature`` etc. replace fields of it); the
other options are keyword-only parameters with defaults and annotations (the CLI binds ``--option k=v`` to
them and refuses unknown names). ``work_dir`` is a folder the pipeline may keep intermediate files in. It fills
``PipelineResult.rows`` with training rows in a format an existing objective reads (``columns`` in order),
one provenance record per row, ``stages`` (rows kept after each stage, in order) and ``malformed``
(outputs dropped, by kind: ``failed`` (no output after retries), ``empty``, ``refusal``, ``bad_json``, or a
pipeline's own kind).
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

from csekit.errors import CsekitError
from csekit.generation.base import Generator, Sampling
from csekit.objectives.options import coerce


@dataclass(frozen=True)
class Template:
    """A prompt template file ``templates/<pipeline>/<name>.v<version>.txt``; ``{field}`` slots are filled."""

    pipeline: str
    name: str
    version: int
    text: str

    def fill(self, **fields: str) -> str:
        try:
            return self.text.format(**fields)
        except KeyError as error:
            raise CsekitError(f"template {self.pipeline}/{self.name}.v{self.version} needs field {error}") from None

    @property
    def tag(self) -> str:
        return f"{self.name}.v{self.version}"


def template_file(pipeline: str, name: str) -> str:
    """The text of ``templates/<pipeline>/<name>`` shipped with csekit."""
    folder = resources.files("csekit.generation") / "templates" / pipeline
    path = folder / name
    if not path.is_file():
        shipped = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        raise CsekitError(f"no template {pipeline}/{name}; shipped: {', '.join(shipped) or 'none'}")
    return path.read_text(encoding="utf-8")


def load_template(pipeline: str, name: str, version: int) -> Template:
    """The prompt template ``templates/<pipeline>/<name>.v<version>.txt`` (its final newline dropped)."""
    return Template(pipeline, name, version, template_file(pipeline, f"{name}.v{version}.txt").rstrip("\n"))


#: Openings of a model declining the task: such an output is no training text.
_REFUSAL = re.compile(r"^\s*(i'?m sorry|i am sorry|sorry,|i can(not|'t)|i am unable|i'?m unable|as an ai)", re.I)


def check_text(output: str | None) -> tuple[str | None, str | None]:
    """``(text, None)`` for a usable generated sentence (first line, quotes and labels stripped), else
    ``(None, kind)`` with kind ``failed``, ``empty`` or ``refusal``."""
    if output is None:
        return None, "failed"
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    if not lines:
        return None, "empty"
    text = re.sub(r"^(sentence|output|answer|rewrite|hypothesis)\s*\d*\s*:\s*", "", lines[0], flags=re.I)
    text = text.strip().strip('"“”').strip()
    if not text:
        return None, "empty"
    if _REFUSAL.match(text):
        return None, "refusal"
    return text, None


def check_json(output: str | None) -> tuple[Any, str | None]:
    """``(value, None)`` for the first JSON object or array in ``output``, else ``(None, kind)``."""
    if output is None:
        return None, "failed"
    if not output.strip():
        return None, "empty"
    if _REFUSAL.match(output):
        return None, "refusal"
    match = re.search(r"[\[{].*[\]}]", output, flags=re.S)
    try:
        return json.loads(match.group(0) if match else output), None
    except json.JSONDecodeError:
        return None, "bad_json"


def provenance(*, pipeline: str, generator: Generator, sampling: Sampling, source: dict[str, Any],
               made: dict[str, tuple[str, Template]], **extra: Any) -> dict[str, Any]:  # fmt: skip
    """One output row's record: the pipeline, the generator and sampling, the source row, and for each generated
    column (``made``: column → (stage, template)) the stage and the template (name + version) that made it."""
    return {"pipeline": pipeline, "generator": generator.identity, "sampling": asdict(sampling), "source": source,
            "made": {column: {"stage": stage, "template": template.tag} for column, (stage, template) in made.items()},
            **extra}  # fmt: skip


def few_shot(template: Template, shots: list[tuple[str, str]], **fields: str) -> tuple[dict[str, str], ...]:
    """A chat prompt: each shot (its ``sentence``, the answer) as a user turn and an assistant turn, then ``fields``."""
    turns: list[dict[str, str]] = []
    for sentence, answer in shots:
        turns += [{"role": "user", "content": template.fill(sentence=sentence)}, {"role": "assistant", "content": answer}]
    return (*turns, {"role": "user", "content": template.fill(**fields)})


@dataclass
class PipelineResult:
    """Training rows (``columns`` in order), a provenance record per row, rows kept per stage, malformed outputs."""

    columns: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    provenance: list[dict[str, Any]] = field(default_factory=list)
    stages: dict[str, int] = field(default_factory=dict)
    malformed: Counter[str] = field(default_factory=Counter)

    def add(self, row: dict[str, Any], record: dict[str, Any]) -> None:
        self.rows.append(row)
        self.provenance.append(record)


#: Parameters every pipeline takes that are not ``--option`` keys.
PIPELINE_PARAMETERS = frozenset({"rows", "generator", "work_dir", "sampling"})


def pipeline_options(pipeline: Callable[..., PipelineResult]) -> dict[str, inspect.Parameter]:
    """The ``--option`` keys ``pipeline`` takes: its keyword-only parameters less the ones every pipeline has."""
    parameters = inspect.signature(pipeline).parameters
    return {name: p for name, p in parameters.items() if name not in PIPELINE_PARAMETERS}


def bind_options(name: str, pipeline: Callable[..., PipelineResult], options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against ``pipeline``'s signature and converted to its annotations."""
    accepted = pipeline_options(pipeline)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        choices = ", ".join(f"{key}={p.default!r}" for key, p in accepted.items()) or "no options"
        raise CsekitError(f"pipeline {name!r} has no option(s) {', '.join(unknown)}; it accepts {choices}")
    hints = typing.get_type_hints(pipeline)
    return {key: coerce(value, hints.get(key, Any), f"pipeline {name}: option {key}") for key, value in options.items()}


def default_sampling(pipeline: Callable[..., PipelineResult]) -> Sampling:
    """The sampling ``pipeline`` uses unless told otherwise (its ``sampling`` parameter's default)."""
    return inspect.signature(pipeline).parameters["sampling"].default
