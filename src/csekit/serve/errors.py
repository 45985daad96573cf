"""The one error shape of every route, OpenAI's: ``{"error": {"message", "type", "param", "code"}}``.

Clients written for OpenAI's API read ``error.message`` and ``error.code``; the same body on the
text-embeddings-inference routes means a client never has to guess which shape a failure takes.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request the server refuses: the HTTP ``status`` and the body's fields.

    ``param`` names the request field at fault (``input[3]``, ``dimensions``), None when no one field is;
    ``code`` is a stable machine-readable name (``too_many_inputs``, ``model_not_found``).
    """

    def __init__(self, status: int, message: str, *, code: str, param: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, kind=self.kind, param=self.param, code=self.code)


def error_body(message: str, *, kind: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages ("a number", "an array")."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
