"""``csekit serve``: an embedding HTTP server over one :class:`~csekit.models.SentenceEncoder`.

Routes (:mod:`csekit.serve.app`): OpenAI's ``POST /v1/embeddings`` (and ``GET /v1/models``), text-embeddings-
inference's ``POST /embed`` and ``POST /similarity``, ``POST /search`` when an index is given, ``GET /health``
and Prometheus' ``GET /metrics``. Requests are checked against their limits (:mod:`~csekit.serve.limits`,
:mod:`~csekit.serve.schema`), tokenized off the model's thread (:mod:`~csekit.serve.tokens`), and their texts
encoded together with other requests' in token-budget batches by the one thread that owns the model
(:mod:`~csekit.serve.batcher`). Every error is one JSON shape (:mod:`~csekit.serve.errors`).

This package needs the ``serve`` extra (FastAPI, uvicorn, prometheus-client); nothing here is imported by
the rest of csekit except the command line.
"""
