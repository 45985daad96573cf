"""The routes: thin shells over :class:`~csekit.serve.service.EmbeddingService`.

- ``POST /v1/embeddings``: OpenAI's embeddings API (``input``, ``model``, ``encoding_format`` float|base64,
  ``dimensions``); csekit adds ``truncate`` (default false).
- ``POST /embed``: text-embeddings-inference's (``inputs``, ``normalize`` default true, ``truncate``) -> vectors.
- ``POST /similarity``: text-embeddings-inference's (``inputs: {source_sentence, sentences}``,
  ``parameters: {truncate}``) -> the cosine of each sentence with the source.
- ``POST /search`` (only with an index): ``query`` (a string or strings), ``k`` -> per query, up to k
  ``{id, score}``, best first; queries are embedded as the indexed corpus was (its prefix and normalisation).
- ``GET /v1/models``, ``GET /health`` (never behind the API key), ``GET /metrics`` (Prometheus text).

Every embedding route answers with the header ``X-Truncated-Inputs``: how many of its texts were cut to the
model's maximum input length (only ever non-zero when the request asked for ``truncate``). Embeddings are the
model's own (``encode``): a model that normalizes returns unit rows, also after a ``dimensions`` prefix.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from csekit.models import SentenceEncoder
from csekit.serve.auth import BearerAuth
from csekit.serve.batcher import DEFAULT_MAX_BATCH_TOKENS
from csekit.serve.errors import ApiError, error_body
from csekit.serve.index import SearchIndex
from csekit.serve.limits import ServeLimits, read_json_body
from csekit.serve.metrics import ServeMetrics
from csekit.serve.schema import Texts, parse_embed, parse_embeddings, parse_search, parse_similarity
from csekit.serve.service import Embedded, EmbeddingService
from csekit.serve.vectors import check_dimensions, cosine_to_first, model_output, to_base64, unit_rows

TRUNCATED_HEADER = "X-Truncated-Inputs"


def create_app(
    encoder: SentenceEncoder, *, model_name: str, index: SearchIndex | None = None, limits: ServeLimits | None = None,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, api_key: str | None = None,
) -> FastAPI:  # fmt: skip
    """The server of ``encoder`` under ``model_name``; ``/search`` queries ``index`` when one is given.

    Refuses (CsekitError) a ``max_batch_tokens`` below the model's maximum input length and an index built
    with another model. The model's worker thread starts with the app and stops after its last request.
    """
    limits = limits or ServeLimits()
    metrics = ServeMetrics()
    service = EmbeddingService(encoder, limits=limits, max_batch_tokens=max_batch_tokens,
                               on_batch=metrics.observe_batch)  # fmt: skip
    metrics.watch_waiting(lambda: service.batcher.waiting)
    if index is not None:
        index.check_model(encoder)
        query_form = index.query_settings(encoder)  # queries are embedded as the indexed corpus was
        query_normalize = encoder.normalize if query_form.normalize is None else query_form.normalize

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:  # after the server has answered its last request
            await run_in_threadpool(service.close)

    app = FastAPI(title="csekit serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(_RequestMetrics, metrics=metrics)
    _add_error_handlers(app)
    guarded = [Depends(BearerAuth(api_key))]

    async def embedded(request: Request, texts: Texts, *, truncate: bool) -> Embedded:
        result = await service.embed(texts, truncate=truncate)
        metrics.record_embedded(request.url.path, inputs=len(texts.values), tokens=result.tokens,
                                truncated=result.truncated)  # fmt: skip
        return result

    @app.post("/v1/embeddings", dependencies=guarded)
    async def openai_embeddings(request: Request) -> JSONResponse:
        asked = parse_embeddings(await read_json_body(request, limits))
        if asked.model != model_name:
            raise ApiError(404, f"model {asked.model!r} is not served here; this server serves {model_name!r}",
                           code="model_not_found", param="model")  # fmt: skip
        check_dimensions(asked.dimensions, encoder.embedding_dim)
        result = await embedded(request, asked.texts, truncate=asked.truncate)
        vectors = model_output(result.vectors, normalize=encoder.normalize, dimensions=asked.dimensions)
        as_json = to_base64 if asked.encoding_format == "base64" else _floats
        data = [{"object": "embedding", "index": i, "embedding": as_json(vector)} for i, vector in enumerate(vectors)]
        usage = {"prompt_tokens": result.tokens, "total_tokens": result.tokens}
        return _json({"object": "list", "data": data, "model": model_name, "usage": usage}, result)

    @app.post("/embed", dependencies=guarded)
    async def tei_embed(request: Request) -> JSONResponse:
        asked = parse_embed(await read_json_body(request, limits))
        result = await embedded(request, asked.texts, truncate=asked.truncate)
        vectors = unit_rows(result.vectors) if asked.normalize else result.vectors
        return _json([_floats(vector) for vector in vectors], result)

    @app.post("/similarity", dependencies=guarded)
    async def tei_similarity(request: Request) -> JSONResponse:
        asked = parse_similarity(await read_json_body(request, limits))
        result = await embedded(request, asked.source + asked.sentences, truncate=asked.truncate)
        return _json(cosine_to_first(result.vectors), result)

    if index is not None:

        @app.post("/search", dependencies=guarded)
        async def search(request: Request) -> JSONResponse:
            asked = parse_search(await read_json_body(request, limits))
            result = await embedded(request, asked.queries, truncate=asked.truncate)
            queries = model_output(result.vectors, normalize=query_normalize, dimensions=query_form.dim)  # (Q, D)
            found = await run_in_threadpool(index.search, queries, asked.k)
            hits = [[{"id": str(key), "score": float(score)} for key, score in per_query] for per_query in found]
            return _json(hits, result)

    @app.get("/v1/models", dependencies=guarded)
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "csekit"}]}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, "embedding_dim": encoder.embedding_dim,
                "max_input_tokens": encoder.max_length}  # fmt: skip

    @app.get("/metrics", dependencies=guarded)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.content_type)

    return app


def _floats(vector: np.ndarray) -> list[float]:
    return vector.tolist()


def _json(content: Any, result: Embedded) -> JSONResponse:
    return JSONResponse(content, headers={TRUNCATED_HEADER: str(result.truncated)})


def _add_error_handlers(app: FastAPI) -> None:
    """Every failure in the one shape of :mod:`csekit.serve.errors`, routing errors included."""

    async def refused(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    async def unrouted(request: Request, error: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        message = f"{request.method} {request.url.path}: {error.detail}"
        return JSONResponse(error_body(message, kind="invalid_request_error", code=code), status_code=error.status_code,
                            headers=getattr(error, "headers", None))  # fmt: skip

    async def failed(request: Request, error: Exception) -> JSONResponse:
        # The server keeps serving: uvicorn logs the traceback, the client gets one line of what went wrong.
        lines = str(error).strip().splitlines()
        message = f"internal error: {type(error).__name__}" + (f": {lines[0]}" if lines else "")
        return JSONResponse(error_body(message, kind="server_error", code="internal_error"), status_code=500)

    app.add_exception_handler(ApiError, refused)
    app.add_exception_handler(HTTPException, unrouted)
    app.add_exception_handler(Exception, failed)


class _RequestMetrics:
    """ASGI middleware: each HTTP request's route (its template, so unknown paths share one label), status and
    time, including the requests refused with an error."""

    def __init__(self, app: ASGIApp, *, metrics: ServeMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500  # an exception that escapes becomes a 500

        async def send_seen(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_seen)
        finally:
            route = scope.get("route")
            self.metrics.record_request(getattr(route, "path", "unmatched"), status, time.perf_counter() - start)
