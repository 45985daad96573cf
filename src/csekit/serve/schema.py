"""Request bodies, checked field by field into small dataclasses.

Hand-written rather than generated so that each refusal is one sentence naming its field
(``param``: ``input[2]``, ``inputs.sentences``) in the shape of :mod:`csekit.serve.errors`. A field a
route does not take is refused, as OpenAI's API does, so a misspelt option is never silently ignored;
a null optional field counts as absent (text-embeddings-inference's clients send them).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from csekit.serve.errors import ApiError, json_type

#: The most results one /search query may ask for: responses stay bounded whatever k a client sends.
MAX_SEARCH_K = 1000


@dataclass(frozen=True)
class Texts:
    """The texts of a request, each with the name of where it came from (``input[2]``), and the field that
    holds them (``input``), so that any refusal of one text names it as the client wrote it."""

    values: list[str]
    names: list[str]
    field: str

    def __add__(self, other: Texts) -> Texts:
        return Texts(self.values + other.values, self.names + other.names, other.field)


@dataclass(frozen=True)
class EmbeddingsRequest:
    """OpenAI's ``POST /v1/embeddings``; ``truncate`` is csekit's own field (``extra_body`` in the client)."""

    texts: Texts
    model: str
    encoding_format: str  # "float" or "base64" (little-endian float32 bytes)
    dimensions: int | None  # a Matryoshka prefix: the first k dimensions
    truncate: bool


@dataclass(frozen=True)
class EmbedRequest:
    """text-embeddings-inference's ``POST /embed``."""

    texts: Texts
    normalize: bool
    truncate: bool


@dataclass(frozen=True)
class SimilarityRequest:
    """text-embeddings-inference's ``POST /similarity``: cosine of each sentence with the source."""

    source: Texts
    sentences: Texts
    truncate: bool


@dataclass(frozen=True)
class SearchRequest:
    queries: Texts
    k: int
    truncate: bool


def parse_embeddings(body: Mapping[str, Any]) -> EmbeddingsRequest:
    _check_fields(body, required=("input", "model"), optional=("encoding_format", "dimensions", "user", "truncate"))
    model = _string(body["model"], "model")
    encoding_format = _optional(body, "encoding_format", "float")
    if encoding_format not in ("float", "base64"):
        raise ApiError(400, f"encoding_format must be 'float' or 'base64', not {encoding_format!r}",
                       code="invalid_value", param="encoding_format")  # fmt: skip
    dimensions = _optional(body, "dimensions", None)
    if dimensions is not None:
        dimensions = _positive_int(dimensions, "dimensions")
    _string(_optional(body, "user", ""), "user")  # OpenAI's end-user id: accepted, not used
    return EmbeddingsRequest(texts_of(body["input"], "input"), model, encoding_format, dimensions,
                             _boolean(_optional(body, "truncate", False), "truncate"))  # fmt: skip


def parse_embed(body: Mapping[str, Any]) -> EmbedRequest:
    _check_fields(body, required=("inputs",), optional=("normalize", "truncate", "truncation_direction", "prompt_name"))
    _check_tei_options(body, "")
    return EmbedRequest(texts_of(body["inputs"], "inputs"), _boolean(_optional(body, "normalize", True), "normalize"),
                        _boolean(_optional(body, "truncate", False), "truncate"))  # fmt: skip


def parse_similarity(body: Mapping[str, Any]) -> SimilarityRequest:
    _check_fields(body, required=("inputs",), optional=("parameters",))
    inputs, parameters = body["inputs"], _optional(body, "parameters", {})
    if not isinstance(inputs, dict):
        raise ApiError(400, f"inputs must be an object {{source_sentence, sentences}}, not {json_type(inputs)}",
                       code="invalid_type", param="inputs")  # fmt: skip
    if not isinstance(parameters, dict):
        raise ApiError(400, f"parameters must be an object, not {json_type(parameters)}", code="invalid_type",
                       param="parameters")  # fmt: skip
    _check_fields(inputs, required=("source_sentence", "sentences"), optional=(), prefix="inputs.")
    _check_fields(parameters, required=(), optional=("truncate", "truncation_direction", "prompt_name"),
                  prefix="parameters.")  # fmt: skip
    _check_tei_options(parameters, "parameters.")
    source = texts_of(_string(inputs["source_sentence"], "inputs.source_sentence"), "inputs.source_sentence")
    sentences = inputs["sentences"]
    if not isinstance(sentences, list):
        raise ApiError(400, f"inputs.sentences must be an array of strings, not {json_type(sentences)}",
                       code="invalid_type", param="inputs.sentences")  # fmt: skip
    return SimilarityRequest(source, texts_of(sentences, "inputs.sentences"),
                             _boolean(_optional(parameters, "truncate", False), "parameters.truncate"))  # fmt: skip


def parse_search(body: Mapping[str, Any]) -> SearchRequest:
    _check_fields(body, required=("query",), optional=("k", "truncate"))
    k = _positive_int(_optional(body, "k", 10), "k")
    if k > MAX_SEARCH_K:
        raise ApiError(400, f"k={k} is over the limit of {MAX_SEARCH_K} results per query", code="invalid_value",
                       param="k")  # fmt: skip
    return SearchRequest(texts_of(body["query"], "query"), k, _boolean(_optional(body, "truncate", False), "truncate"))


def texts_of(value: Any, param: str) -> Texts:
    """A string or a non-empty array of strings -> its texts; token-id arrays are refused."""
    if isinstance(value, str):
        texts, names = [value], [param]
    elif isinstance(value, list):
        if not value:
            raise ApiError(400, f"{param} is an empty array: send at least one text", code="empty_input", param=param)
        if all(isinstance(item, int) and not isinstance(item, bool) for item in value) or any(
            isinstance(item, list) for item in value
        ):
            raise ApiError(400, f"{param} holds token ids or nested arrays: this server takes text only, a string "
                           "or an array of strings", code="unsupported_input", param=param)  # fmt: skip
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ApiError(400, f"{param}[{index}] must be a string, not {json_type(item)}", code="invalid_type",
                               param=f"{param}[{index}]")  # fmt: skip
        texts, names = list(value), [f"{param}[{index}]" for index in range(len(value))]
    else:
        raise ApiError(400, f"{param} must be a string or an array of strings, not {json_type(value)}",
                       code="invalid_type", param=param)  # fmt: skip
    for text, name in zip(texts, names):
        if not text:
            raise ApiError(400, f"{name} is an empty string: every input needs some text", code="empty_input",
                           param=name)  # fmt: skip
    return Texts(texts, names, param)


def _check_fields(body: Mapping[str, Any], *, required: Collection[str], optional: Collection[str],
                  prefix: str = "") -> None:  # fmt: skip
    known = [*required, *optional]
    for name in body:
        if name not in known:
            raise ApiError(400, f"unknown parameter {prefix}{name!r}: this route takes {', '.join(known)}",
                           code="unknown_parameter", param=f"{prefix}{name}")  # fmt: skip
    for name in required:
        if body.get(name) is None:
            raise ApiError(400, f"missing required parameter {prefix}{name!r}", code="missing_required_parameter",
                           param=f"{prefix}{name}")  # fmt: skip


def _check_tei_options(body: Mapping[str, Any], prefix: str) -> None:
    """text-embeddings-inference's options that csekit has one answer to: cut the end of a text; the
    model's own prompt (a prompt pooler's template) and no other."""
    direction = _optional(body, "truncation_direction", "right")
    if not isinstance(direction, str) or direction.lower() != "right":
        raise ApiError(400, f"{prefix}truncation_direction {direction!r} is not supported: csekit truncates the "
                       "end of a text ('right')", code="invalid_value", param=f"{prefix}truncation_direction")  # fmt: skip
    if _optional(body, "prompt_name", None) is not None:
        raise ApiError(400, f"{prefix}prompt_name is not supported: the served model applies its own prompt, if any",
                       code="invalid_value", param=f"{prefix}prompt_name")  # fmt: skip


def _optional(body: Mapping[str, Any], name: str, default: Any) -> Any:
    value = body.get(name)
    return default if value is None else value


def _string(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise ApiError(400, f"{param} must be a string, not {json_type(value)}", code="invalid_type", param=param)
    return value


def _boolean(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise ApiError(400, f"{param} must be true or false, not {json_type(value)}", code="invalid_type", param=param)
    return value


def _positive_int(value: Any, param: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ApiError(400, f"{param} must be a whole number, not {json_type(value)}", code="invalid_type", param=param)
    if value < 1:
        raise ApiError(400, f"{param} must be at least 1, not {value}", code="invalid_value", param=param)
    return value
