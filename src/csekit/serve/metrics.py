"""Prometheus metrics of one server, in a registry of its own (two apps in one process never mix).

Requests and their latency by route and status; texts, tokens and truncated texts embedded by route;
the rows and padded tokens of each model batch (how well micro-batching fills the budget); requests
waiting for the model.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ROW_BUCKETS = tuple(float(2**i) for i in range(12))  # 1 ... 2048 rows
_TOKEN_BUCKETS = tuple(float(2**i) for i in range(4, 18))  # 16 ... 131072 padded tokens


class ServeMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter("csekit_requests", "HTTP requests by route and status code", ["route", "status"],
                                registry=registry)  # fmt: skip
        self.latency = Histogram("csekit_request_duration_seconds", "Time from request to response, by route",
                                 ["route"], buckets=_LATENCY_BUCKETS, registry=registry)  # fmt: skip
        self.inputs = Counter("csekit_inputs", "Texts embedded, by route", ["route"], registry=registry)
        self.tokens = Counter("csekit_tokens", "Tokens encoded (special and template tokens included), by route",
                              ["route"], registry=registry)  # fmt: skip
        self.truncated = Counter("csekit_truncated_inputs", "Texts cut to the model's maximum input length, by route",
                                 ["route"], registry=registry)  # fmt: skip
        self.batch_rows = Histogram("csekit_batch_rows", "Texts per model batch", buckets=_ROW_BUCKETS,
                                    registry=registry)  # fmt: skip
        self.batch_tokens = Histogram("csekit_batch_padded_tokens", "Padded tokens (rows x longest) per model batch",
                                      buckets=_TOKEN_BUCKETS, registry=registry)  # fmt: skip
        self.waiting = Gauge("csekit_waiting_requests", "Requests tokenized and waiting for the model",
                             registry=registry)  # fmt: skip

    def observe_batch(self, rows: int, padded_tokens: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_tokens.observe(padded_tokens)

    def record_embedded(self, route: str, *, inputs: int, tokens: int, truncated: int) -> None:
        self.inputs.labels(route).inc(inputs)
        self.tokens.labels(route).inc(tokens)
        if truncated:
            self.truncated.labels(route).inc(truncated)

    def record_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def watch_waiting(self, count: Callable[[], int]) -> None:
        self.waiting.set_function(count)

    def render(self) -> bytes:
        """The Prometheus text exposition format."""
        return generate_latest(self.registry)
