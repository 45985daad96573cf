"""What one request may ask for, and the reading of its body within those limits.

Each limit refused is a 413 naming the limit, its option and its value, so a client knows what to
split or shorten. The body's size is checked on the declared ``Content-Length`` and again while it is
read, before any JSON is parsed: an oversized body costs the server nothing but the bytes read up to
the limit. The tokens of one input are limited by the model itself (its maximum input length,
:mod:`csekit.serve.tokens`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from csekit.serve.errors import ApiError, json_type
from csekit.serve.schema import Texts


@dataclass(frozen=True, kw_only=True)
class ServeLimits:
    #: Texts in one request (OpenAI's own limit for one embeddings request).
    max_inputs: int = 2048
    #: Characters in one text: bounds the tokenizer's work on an input that is then truncated.
    max_input_chars: int = 50_000
    #: Bytes of one request body, checked before it is parsed.
    max_body_bytes: int = 4 * 1024 * 1024


class _Body(Protocol):
    """What :func:`read_json_body` reads from a request (Starlette's ``Request``)."""

    headers: Any

    def stream(self) -> Any: ...


async def read_json_body(request: _Body, limits: ServeLimits) -> dict[str, Any]:
    """The request's JSON object, read no further than ``limits.max_body_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise ApiError(400, f"Content-Length {declared!r} is not a number of bytes", code="invalid_request")
        if int(declared) > limits.max_body_bytes:
            raise _body_too_large(f"{int(declared)} bytes", limits)
    chunks, size = [], 0
    async for chunk in request.stream():  # a chunked body declares no length: count while reading
        size += len(chunk)
        if size > limits.max_body_bytes:
            raise _body_too_large(f"more than {limits.max_body_bytes} bytes", limits)
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8/16/32
        raise ApiError(400, f"the request body is not valid JSON: {error}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {json_type(body)}", code="invalid_type")
    return body


def check_texts(texts: Texts, limits: ServeLimits) -> None:
    """Refuse more texts than ``max_inputs``, or a text longer than ``max_input_chars``."""
    if len(texts.values) > limits.max_inputs:
        raise ApiError(413, f"{len(texts.values)} inputs exceed the limit of {limits.max_inputs} inputs per request "
                       f"(max_inputs, --max-inputs {limits.max_inputs}): split the request", code="too_many_inputs",
                       param=texts.field)  # fmt: skip
    for text, name in zip(texts.values, texts.names):
        if len(text) > limits.max_input_chars:
            raise ApiError(413, f"{name} has {len(text)} characters, over the limit of {limits.max_input_chars} "
                           f"per input (max_input_chars, --max-input-chars {limits.max_input_chars})",
                           code="input_too_many_characters", param=name)  # fmt: skip


def _body_too_large(size: str, limits: ServeLimits) -> ApiError:
    return ApiError(413, f"the request body has {size}, over the limit of {limits.max_body_bytes} bytes "
                    f"(max_body_bytes, --max-body-bytes {limits.max_body_bytes})", code="body_too_large")  # fmt: skip
