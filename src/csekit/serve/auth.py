"""Optional bearer-token auth: ``Authorization: Bearer KEY`` on every route but ``/health``."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from csekit.serve.errors import ApiError


class BearerAuth:
    """A FastAPI dependency refusing requests without the key (open when ``api_key`` is None)."""

    def __init__(self, api_key: str | None):
        self._key = None if api_key is None else api_key.encode("utf-8")

    def __call__(self, request: Request) -> None:
        if self._key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _refused("no API key: send the header 'Authorization: Bearer KEY'")
        # compare_digest: the time taken says nothing about how much of a guess was right
        if not hmac.compare_digest(token.strip().encode("utf-8"), self._key):
            raise _refused("the API key is wrong")


def _refused(message: str) -> ApiError:
    return ApiError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
