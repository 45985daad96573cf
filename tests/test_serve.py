"""``csekit serve``: real servers on 127.0.0.1 (uvicorn), driven by the clients users run (openai, httpx).

Embeddings equal ``load_encoder(MODEL).encode`` for every kind of saved pooler; every bad request is a 4xx in
one JSON shape and the server answers correctly right after it; concurrent requests get their own rows;
the command refuses a token budget below the model's length and stops gracefully, finishing a request in flight.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from conftest import SENTENCES, free_port, make_tiny_encoder

from csekit import load_encoder
from csekit.cli.main import main
from csekit.errors import CsekitError
from csekit.inference.encode import EncodeSettings
from csekit.inference.store import read_embeddings
from csekit.postprocess.whitening import whiten
from csekit.search import build_index, load_index
from csekit.serve.app import TRUNCATED_HEADER, create_app
from csekit.serve.batcher import BatcherClosed, MicroBatcher
from csekit.serve.limits import ServeLimits

KEY = "test-key"
TEXTS = ["a man is playing a guitar .", "hi", "two dogs run across a field of grass",
         "the quick brown fox jumps over the lazy dog while a cat watches from the window"]  # fmt: skip
#: Small limits, so each is easy to cross.
LIMITS = ServeLimits(max_inputs=8, max_input_chars=600, max_body_bytes=4096)


def _max_diff(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


def _units(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _row_length(encoder, text: str) -> int:
    """Tokens of ``text`` as the model would read it untruncated (template and period included)."""
    return len(encoder.inference_tokens([text], max_length=10_000)[0]["input_ids"])


def _texts_around_the_limit(encoder) -> dict[int, str]:
    """Texts whose untruncated rows are max_length - 1, max_length and max_length + 1 tokens long."""
    found: dict[int, str] = {}
    for words in range(1, 200):
        text = " ".join(["word"] * words)
        found.setdefault(_row_length(encoder, text) - encoder.max_length, text)
    return {over: found[over] for over in (-1, 0, 1)}


# ----------------------------------------------------------------------------- models and servers
def _whitened_model(folder: Path) -> None:
    # Mean pooling: whitening a random encoder's nearly constant [CLS] states would multiply float rounding
    # ~500-fold (3e-5 between one batch and another in encode() itself), which is not what is tested here.
    encoder = make_tiny_encoder("mean", seed=3)
    encoder.normalize = True
    whiten(encoder, SENTENCES, dim=16)  # an output module: 32 -> 16 dimensions, then Normalize
    encoder.save(folder)


MODEL_KINDS = {
    "cls": lambda folder: make_tiny_encoder("cls", seed=1).save(folder),
    "mean": lambda folder: make_tiny_encoder("mean", seed=2).save(folder),
    "mask": lambda folder: make_tiny_encoder("mask", seed=4).save(folder),
    "mask_denoised": lambda folder: make_tiny_encoder("mask_denoised", seed=5).save(folder),
    "whitened_normalized": _whitened_model,
}


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve-models")
    folders = {}
    for kind, build in MODEL_KINDS.items():
        folders[kind] = root / f"tiny-{kind}"
        build(folders[kind])
    return folders


@contextlib.contextmanager
def running(app):
    """``app`` served by uvicorn on a free port of 127.0.0.1, in a thread; yields its base URL."""
    port = int(free_port())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class ExactIndex:
    """A real (exhaustive) search index following the protocol /search expects."""

    def __init__(self, ids: list[str], vectors: np.ndarray):
        self.ids, self.vectors = ids, vectors.astype(np.float32)  # (N, D)

    def search(self, vectors: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        assert vectors.dtype == np.float32 and vectors.shape[1] == self.vectors.shape[1]
        scores = vectors @ self.vectors.T  # (Q, N)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (Q, k)
        return [[(self.ids[j], float(scores[q, j])) for j in row] for q, row in enumerate(order)]

    def query_settings(self, encoder) -> EncodeSettings:
        return EncodeSettings()  # queries as the model embeds them: all dimensions, its own normalization

    def check_model(self, encoder) -> None:
        if encoder.embedding_dim != self.vectors.shape[1]:
            raise CsekitError(f"this index holds {self.vectors.shape[1]}-dimensional vectors, not the model's "
                              f"{encoder.embedding_dim}")  # fmt: skip


CORPUS = SENTENCES[:20]


class Served:
    """The main test server: the mean-pooled, normalizing tiny model, with an API key, an index and small limits."""

    def __init__(self, url: str, folder: Path):
        self.url, self.name = url, folder.name
        self.encoder = load_encoder(folder)  # what the server's own copy computes
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
        self.openai = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)

    def assert_still_serving(self) -> None:
        """A good request right after a bad one gets the right embeddings."""
        response = self.http.post("/v1/embeddings", json={"input": TEXTS[:2], "model": self.name})
        assert response.status_code == 200, response.text
        vectors = [row["embedding"] for row in response.json()["data"]]
        assert _max_diff(vectors, self.encoder.encode(TEXTS[:2])) < 1e-5


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Served:
    folder = tmp_path_factory.mktemp("serve-main") / "tiny-normalized"
    encoder = make_tiny_encoder("mean", seed=6)
    encoder.normalize = True
    encoder.save(folder)
    model = load_encoder(folder)
    index = ExactIndex([f"doc{i}" for i in range(len(CORPUS))], model.encode(CORPUS))
    app = create_app(load_encoder(folder), model_name=folder.name, index=index, limits=LIMITS, api_key=KEY,
                     max_batch_tokens=256)  # fmt: skip
    with running(app) as url:
        served = Served(url, folder)
        yield served
        served.http.close()


def _error(response: httpx.Response, status: int, code: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert error["code"] == code and error["message"] and "\n" not in error["message"], error
    if param is not None:
        assert error["param"] == param, error
    return error


# ----------------------------------------------------------------------------- the OpenAI route
@pytest.mark.parametrize("kind", list(MODEL_KINDS))
def test_embeddings_equal_encode_for_every_kind_of_saved_model(model_folders, kind):
    """cls (with its head), mean, the prompt poolers (template, test-time period) and an output map + Normalize."""
    folder = model_folders[kind]
    expected_model = load_encoder(folder)
    texts = [*TEXTS, "no final punctuation here", 'ends with a quote "']
    with running(create_app(load_encoder(folder), model_name=folder.name)) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        response = client.embeddings.create(model=folder.name, input=texts, encoding_format="float")
        served = [item.embedding for item in response.data]
        assert _max_diff(served, expected_model.encode(texts)) < 1e-5
        assert [item.index for item in response.data] == list(range(len(texts)))
        tokens = sum(len(row["input_ids"]) for row in expected_model.inference_tokens(texts))
        assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
        assert response.model == folder.name and response.object == "list"

        # Over-long detection counts the row the model reads: exactly max_length passes, one more does not.
        around = _texts_around_the_limit(expected_model)
        http = httpx.Client(base_url=url, timeout=60)
        for over, text in around.items():
            response = http.post("/v1/embeddings", json={"input": [text], "model": folder.name})
            if over <= 0:
                assert response.status_code == 200 and response.headers[TRUNCATED_HEADER] == "0", response.text
            else:
                _error(response, 413, "input_too_many_tokens", "input[0]")
        response = http.post("/v1/embeddings", json={"input": list(around.values()), "model": folder.name,
                                                     "truncate": True})  # fmt: skip
        assert response.status_code == 200 and response.headers[TRUNCATED_HEADER] == "1", response.text
        served = [row["embedding"] for row in response.json()["data"]]
        assert _max_diff(served, expected_model.encode(list(around.values()))) < 1e-5  # encode truncates too
        assert response.json()["usage"]["prompt_tokens"] == 3 * expected_model.max_length - 1
        http.close()


def test_openai_client_formats_float_base64_and_default(served):
    float_response = served.openai.embeddings.create(model=served.name, input=TEXTS, encoding_format="float")
    expected = served.encoder.encode(TEXTS)
    assert _max_diff([item.embedding for item in float_response.data], expected) < 1e-5
    base64_response = served.openai.embeddings.create(model=served.name, input=TEXTS, encoding_format="base64")
    decoded = [np.frombuffer(base64.b64decode(item.embedding), dtype="<f4") for item in base64_response.data]
    assert _max_diff(decoded, expected) < 1e-5
    default = served.openai.embeddings.create(model=served.name, input=TEXTS)  # the client asks base64, decodes it
    assert _max_diff([item.embedding for item in default.data], expected) < 1e-5
    single = served.openai.embeddings.create(model=served.name, input=TEXTS[1])
    assert len(single.data) == 1 and _max_diff([single.data[0].embedding], expected[1:2]) < 1e-5


def test_dimensions_is_a_renormalised_prefix(served):
    response = served.openai.embeddings.create(model=served.name, input=TEXTS, dimensions=8, encoding_format="float")
    raw = served.encoder.encode(TEXTS, normalize=False)
    assert _max_diff([item.embedding for item in response.data], _units(raw[:, :8])) < 1e-5
    with pytest.raises(openai.BadRequestError) as refused:
        served.openai.embeddings.create(model=served.name, input=TEXTS, dimensions=33)
    assert refused.value.body["code"] == "invalid_value" and refused.value.body["param"] == "dimensions"
    served.assert_still_serving()


def test_truncation_is_reported_in_a_header_to_the_openai_client(served):
    long_text = " ".join(["word"] * 100)
    raw = served.openai.embeddings.with_raw_response.create(model=served.name, input=[long_text, "hi"],
                                                            extra_body={"truncate": True})  # fmt: skip
    assert raw.headers[TRUNCATED_HEADER] == "1"
    assert _max_diff([item.embedding for item in raw.parse().data], served.encoder.encode([long_text, "hi"])) < 1e-5
    with pytest.raises(openai.APIStatusError) as refused:  # without truncate: refused, naming the limit
        served.openai.embeddings.create(model=served.name, input=[long_text])
    assert refused.value.status_code == 413 and "64 tokens" in refused.value.body["message"]


def test_openai_client_raises_its_typed_errors(served):
    with pytest.raises(openai.NotFoundError) as unknown:
        served.openai.embeddings.create(model="text-embedding-3-small", input="hi")
    assert unknown.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        served.openai.embeddings.create(model=served.name, input="")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{served.url}/v1", api_key="wrong", max_retries=0).embeddings.create(
            model=served.name, input="hi")  # fmt: skip
    served.assert_still_serving()


def test_models_lists_the_served_model(served):
    assert [model.id for model in served.openai.models.list()] == [served.name]


# ----------------------------------------------------------------------------- TEI routes, search
def test_tei_embed_normalizes_by_default_and_on_request_only(served):
    response = served.http.post("/embed", json={"inputs": TEXTS})
    assert response.status_code == 200 and response.headers[TRUNCATED_HEADER] == "0"
    assert _max_diff(response.json(), served.encoder.encode(TEXTS)) < 1e-5
    raw = served.http.post("/embed", json={"inputs": TEXTS, "normalize": False, "truncate": False,
                                           "truncation_direction": "Right", "prompt_name": None})  # fmt: skip
    assert raw.status_code == 200, raw.text
    assert _max_diff(raw.json(), served.encoder.encode(TEXTS, normalize=False)) < 1e-5
    single = served.http.post("/embed", json={"inputs": TEXTS[0]})
    assert _max_diff(single.json(), served.encoder.encode(TEXTS[:1])) < 1e-5


def test_similarity_is_the_cosine_with_the_source(served):
    body = {"inputs": {"source_sentence": TEXTS[0], "sentences": TEXTS[1:]}, "parameters": {"truncate": False}}
    response = served.http.post("/similarity", json=body)
    assert response.status_code == 200, response.text
    units = _units(served.encoder.encode(TEXTS))
    np.testing.assert_allclose(response.json(), units[1:] @ units[0], atol=1e-5)


def test_search_queries_the_index_with_the_model_embeddings(served):
    queries = [CORPUS[3], "something else entirely"]
    response = served.http.post("/search", json={"query": queries, "k": 3})
    assert response.status_code == 200, response.text
    hits = response.json()
    assert len(hits) == 2 and all(len(per_query) == 3 for per_query in hits)
    assert hits[0][0]["id"] == "doc3" and hits[0][0]["score"] == pytest.approx(1.0, abs=1e-5)
    corpus, wanted = served.encoder.encode(CORPUS), served.encoder.encode(queries)
    for per_query, vector in zip(hits, wanted):
        scores = corpus @ vector
        assert [hit["id"] for hit in per_query] == [f"doc{j}" for j in np.argsort(-scores, kind="stable")[:3]]
        np.testing.assert_allclose([hit["score"] for hit in per_query], np.sort(scores)[::-1][:3], atol=1e-5)
    single = served.http.post("/search", json={"query": CORPUS[5]})  # k defaults to 10
    assert single.status_code == 200 and len(single.json()) == 1 and len(single.json()[0]) == 10
    assert single.json()[0][0]["id"] == "doc5"


def test_search_route_exists_only_with_an_index_and_refuses_an_index_of_another_model(model_folders):
    encoder = load_encoder(model_folders["mean"])
    with pytest.raises(CsekitError, match="16-dimensional"):
        create_app(encoder, model_name="x", index=ExactIndex(["a"], np.ones((1, 16), dtype=np.float32)))
    with running(create_app(encoder, model_name="x")) as url:
        _error(httpx.post(f"{url}/search", json={"query": "hi"}), 404, "not_found")


# ----------------------------------------------------------------------------- auth, health, metrics
def test_api_key_guards_every_route_but_health(served):
    for method, path, body in [("POST", "/v1/embeddings", {"input": "hi", "model": served.name}),
                               ("POST", "/embed", {"inputs": "hi"}), ("GET", "/metrics", None)]:  # fmt: skip
        missing = httpx.request(method, served.url + path, json=body)
        assert "no API key" in _error(missing, 401, "invalid_api_key")["message"]
        assert missing.headers["www-authenticate"] == "Bearer"
        wrong = httpx.request(method, served.url + path, json=body, headers={"Authorization": "Bearer nope"})
        assert "wrong" in _error(wrong, 401, "invalid_api_key")["message"]
    health = httpx.get(f"{served.url}/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "model": served.name, "embedding_dim": 32, "max_input_tokens": 64}
    served.assert_still_serving()


def _metric(text: str, name: str, **labels: str) -> float:
    selector = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.escape(name + (f"{{{selector}}}" if labels else "")) + r" ([0-9.e+]+)$"
    values = [float(match.group(1)) for line in text.splitlines() if (match := re.match(pattern, line))]
    return values[0] if values else 0.0


def test_metrics_count_requests_texts_tokens_and_batches(served):
    before = served.http.get("/metrics").text
    texts = [TEXTS[0], TEXTS[2], " ".join(["word"] * 100)]
    assert served.http.post("/embed", json={"inputs": texts, "truncate": True}).status_code == 200
    assert served.http.post("/embed", json={"inputs": []}).status_code == 400
    response = served.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    after = response.text

    def grew(name: str, **labels: str) -> float:
        return _metric(after, name, **labels) - _metric(before, name, **labels)

    assert grew("csekit_requests_total", route="/embed", status="200") == 1
    assert grew("csekit_requests_total", route="/embed", status="400") == 1
    assert grew("csekit_request_duration_seconds_count", route="/embed") == 2
    assert grew("csekit_inputs_total", route="/embed") == 3
    tokens = sum(len(row["input_ids"]) for row in served.encoder.inference_tokens(texts))
    assert grew("csekit_tokens_total", route="/embed") == tokens
    assert grew("csekit_truncated_inputs_total", route="/embed") == 1
    batches = grew("csekit_batch_rows_count")
    assert batches >= 1 and grew("csekit_batch_rows_sum") == 3  # all three texts went through the model
    assert grew("csekit_batch_padded_tokens_count") == batches
    assert "csekit_waiting_requests 0.0" in after


# ----------------------------------------------------------------------------- bad requests
LONG = " ".join(["word"] * 100)  # more than the tiny model's 64 tokens, fewer than LIMITS' 600 characters

BAD_REQUESTS = [
    # (id, route, body: JSON, or bytes sent as they are, status, code, param)
    ("empty string", "/v1/embeddings", {"input": "", "model": "MODEL"}, 400, "empty_input", "input"),
    ("too many tokens, one string", "/v1/embeddings", {"input": LONG, "model": "MODEL"}, 413, "input_too_many_tokens",
     "input"),
    ("empty list", "/v1/embeddings", {"input": [], "model": "MODEL"}, 400, "empty_input", "input"),
    ("empty string in a list", "/embed", {"inputs": ["a", ""]}, 400, "empty_input", "inputs[1]"),
    ("too many inputs", "/v1/embeddings", {"input": ["a"] * 9, "model": "MODEL"}, 413, "too_many_inputs", "input"),
    ("too many characters", "/embed", {"inputs": ["a", "b" * 601]}, 413, "input_too_many_characters", "inputs[1]"),
    ("too many tokens", "/v1/embeddings", {"input": ["a", LONG], "model": "MODEL"}, 413, "input_too_many_tokens",
     "input[1]"),
    ("too many tokens, /embed", "/embed", {"inputs": LONG, "truncate": False}, 413, "input_too_many_tokens",
     "inputs"),
    ("too many tokens, /similarity", "/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b", LONG]}},
     413, "input_too_many_tokens", "inputs.sentences[1]"),
    ("too many tokens in the source", "/similarity", {"inputs": {"source_sentence": LONG, "sentences": ["b"]}},
     413, "input_too_many_tokens", "inputs.source_sentence"),
    ("an empty sentence", "/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b", ""]}}, 400,
     "empty_input", "inputs.sentences[1]"),
    ("too many sentences", "/similarity", {"inputs": {"source_sentence": "a", "sentences": ["b"] * 8}}, 413,
     "too_many_inputs", "inputs.sentences"),
    ("a number for the input", "/v1/embeddings", {"input": 3, "model": "MODEL"}, 400, "invalid_type", "input"),
    ("a number in the list", "/embed", {"inputs": ["a", 3]}, 400, "invalid_type", "inputs[1]"),
    ("an object for the input", "/embed", {"inputs": {"text": "a"}}, 400, "invalid_type", "inputs"),
    ("token ids", "/v1/embeddings", {"input": [101, 2023, 102], "model": "MODEL"}, 400, "unsupported_input", "input"),
    ("token-id arrays", "/v1/embeddings", {"input": [[101, 102]], "model": "MODEL"}, 400, "unsupported_input", "input"),
    ("a string for truncate", "/embed", {"inputs": "a", "truncate": "yes"}, 400, "invalid_type", "truncate"),
    ("a string for dimensions", "/v1/embeddings", {"input": "a", "model": "MODEL", "dimensions": "8"}, 400,
     "invalid_type", "dimensions"),
    ("zero dimensions", "/v1/embeddings", {"input": "a", "model": "MODEL", "dimensions": 0}, 400, "invalid_value",
     "dimensions"),
    ("unknown encoding", "/v1/embeddings", {"input": "a", "model": "MODEL", "encoding_format": "int8"}, 400,
     "invalid_value", "encoding_format"),
    ("unknown model", "/v1/embeddings", {"input": "a", "model": "text-embedding-3-small"}, 404, "model_not_found",
     "model"),
    ("model missing", "/v1/embeddings", {"input": "a"}, 400, "missing_required_parameter", "model"),
    ("unknown parameter", "/embed", {"inputs": "a", "normalise": True}, 400, "unknown_parameter", "normalise"),
    ("left truncation", "/embed", {"inputs": "a", "truncation_direction": "left"}, 400, "invalid_value",
     "truncation_direction"),
    ("malformed JSON", "/v1/embeddings", b'{"input": ["a", ', 400, "invalid_json", None),
    ("not UTF-8", "/embed", b'{"inputs": "\xff\xfe"}', 400, "invalid_json", None),
    ("empty body", "/embed", b"", 400, "invalid_json", None),
    ("an array for the body", "/embed", ["a"], 400, "invalid_type", None),
    ("body over the limit", "/embed", {"inputs": ["word " * 100] * 10}, 413, "body_too_large", None),
    ("similarity without sentences", "/similarity", {"inputs": {"source_sentence": "a"}}, 400,
     "missing_required_parameter", "inputs.sentences"),
    ("similarity with a string for sentences", "/similarity", {"inputs": {"source_sentence": "a", "sentences": "b"}},
     400, "invalid_type", "inputs.sentences"),
    ("similarity with a list for inputs", "/similarity", {"inputs": ["a", "b"]}, 400, "invalid_type", "inputs"),
    ("search with k 0", "/search", {"query": "a", "k": 0}, 400, "invalid_value", "k"),
    ("search with a huge k", "/search", {"query": "a", "k": 10**6}, 400, "invalid_value", "k"),
    ("search with k true", "/search", {"query": "a", "k": True}, 400, "invalid_type", "k"),
]


@pytest.mark.parametrize(("route", "body", "status", "code", "param"), [case[1:] for case in BAD_REQUESTS],
                         ids=[case[0] for case in BAD_REQUESTS])  # fmt: skip
def test_bad_request_is_one_json_error_and_the_server_goes_on(served, route, body, status, code, param):
    if isinstance(body, dict) and body.get("model") == "MODEL":
        body = {**body, "model": served.name}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    _error(served.http.post(route, content=content), status, code, param)
    served.assert_still_serving()


def test_a_chunked_body_over_the_limit_is_refused_while_it_is_read(served):
    def chunks():  # no Content-Length: the server counts as it reads
        yield b'{"inputs": ['
        for _ in range(200):
            yield b'"some words to fill the body", '
        yield b'"end"]}'

    _error(served.http.post("/embed", content=chunks()), 413, "body_too_large")
    served.assert_still_serving()


def test_unknown_routes_and_methods_answer_in_the_same_shape(served):
    _error(served.http.get("/v2/embeddings"), 404, "not_found")
    _error(served.http.get("/v1/embeddings"), 405, "method_not_allowed")
    served.assert_still_serving()


# ----------------------------------------------------------------------------- concurrency and batching
def test_concurrent_requests_get_their_own_rows(served):
    requests = [[SENTENCES[(7 * i + j) % len(SENTENCES)] for j in range(1 + i % 5)] for i in range(16)]

    def ask(texts: list[str]) -> np.ndarray:
        response = served.openai.embeddings.create(model=served.name, input=texts, encoding_format="float")
        return np.array([item.embedding for item in response.data])

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, requests))
    for texts, answer in zip(requests, answers):
        assert _max_diff(answer, served.encoder.encode(texts)) < 1e-5


def test_batcher_groups_waiting_requests_and_returns_each_its_rows_in_order():
    encoder = make_tiny_encoder("mean").eval()
    seen: list[tuple[int, int]] = []
    batcher = MicroBatcher(encoder, max_batch_tokens=4096, on_batch=lambda rows, padded: seen.append((rows, padded)))
    jobs = [SENTENCES[i : i + 3] for i in range(0, 15, 3)] + [[SENTENCES[20]]]
    cancelled = batcher.submit(encoder.inference_tokens(["never encoded"]))
    assert cancelled.cancel()  # its caller gave up before the model took it
    futures = [batcher.submit(encoder.inference_tokens(texts)) for texts in jobs]  # all waiting before the worker starts
    batcher.start()
    for texts, future in zip(jobs, futures):
        assert _max_diff(future.result(timeout=30), encoder.encode(texts, normalize=False)) < 1e-5
    assert sum(rows for rows, _ in seen) == 16  # every row once; the cancelled request's never
    assert len(seen) < len(jobs)  # requests shared model batches
    assert all(padded <= 4096 for _, padded in seen)
    batcher.close()


def test_batcher_close_finishes_what_was_submitted_and_takes_nothing_after():
    encoder = make_tiny_encoder("mean").eval()
    batcher = MicroBatcher(encoder, max_batch_tokens=64)  # one 64-token row per batch at most: several batches
    long_texts = [" ".join(["word"] * 60)] * 3
    futures = [batcher.submit(encoder.inference_tokens(long_texts)) for _ in range(3)]
    batcher.start()
    batcher.close()
    expected = encoder.encode(long_texts, normalize=False)
    assert all(future.done() and _max_diff(future.result(), expected) < 1e-5 for future in futures)
    with pytest.raises(BatcherClosed):
        batcher.submit(encoder.inference_tokens(["late"]))


def test_token_budget_below_the_model_length_is_refused():
    with pytest.raises(CsekitError, match="token budget 63 is smaller than the model's longest input"):
        MicroBatcher(make_tiny_encoder("mean"), max_batch_tokens=63)


# ----------------------------------------------------------------------------- the command
def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("csekit: error:") and err.count("\n") == 1, err
    return err


def test_cli_refuses_a_token_budget_below_the_model_length(model_folders, capsys):
    assert main(["serve", str(model_folders["mean"]), "--max-batch-tokens", "10", "--port", free_port()]) == 2
    assert "token budget 10 is smaller than the model's longest input (64 tokens)" in _one_line_error(capsys)


def test_cli_refuses_a_port_in_use(model_folders, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", str(model_folders["mean"]), "--port", port]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in _one_line_error(capsys)


@pytest.fixture(scope="module")
def real_index(model_folders, tmp_path_factory) -> Path:
    """A FAISS index of the mean model's 16-dimension prefixes, normalised (the model itself does not normalise)."""
    pytest.importorskip("faiss")
    folder = tmp_path_factory.mktemp("serve-index")
    (folder / "corpus.txt").write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    assert main(["encode", str(model_folders["mean"]), str(folder / "corpus.txt"), "--output",
                 str(folder / "corpus.npy"), "--dim", "16", "--normalize"]) == 0  # fmt: skip
    build_index(read_embeddings(folder / "corpus.npy"), "flat").save(folder / "index")
    return folder / "index"


def test_search_over_a_real_index_embeds_queries_as_the_corpus_was(model_folders, real_index):
    index, encoder = load_index(real_index), load_encoder(model_folders["mean"])
    queries = [SENTENCES[4], "a quiet green field"]
    with running(create_app(load_encoder(model_folders["mean"]), model_name="mean", index=index)) as url:
        response = httpx.post(f"{url}/search", json={"query": queries, "k": 5}, timeout=60)
    assert response.status_code == 200, response.text
    expected = index.query(encoder, queries, 5)  # the index's own query path: prefix 16, then normalised
    assert [[hit["id"] for hit in hits] for hits in response.json()] == [[id_ for id_, _ in hits] for hits in expected]
    np.testing.assert_allclose([[hit["score"] for hit in hits] for hits in response.json()],
                               [[score for _, score in hits] for hits in expected], atol=1e-5)  # fmt: skip
    assert response.json()[0][0]["id"] == "5" and response.json()[0][0]["score"] == pytest.approx(1.0, abs=1e-5)


def test_cli_refuses_an_index_of_another_model(model_folders, real_index, capsys):
    assert main(["serve", str(model_folders["cls"]), "--index", str(real_index), "--port", free_port()]) == 2
    assert "this index was made with another model" in _one_line_error(capsys)
    assert main(["serve", str(model_folders["mean"]), "--index", str(model_folders["mean"])]) == 2
    assert "is not a csekit index" in _one_line_error(capsys)


def test_cli_serves_until_sigterm_and_finishes_the_request_in_flight(model_folders):
    folder, port = model_folders["mask"], int(free_port())
    env = {**os.environ, "CSEKIT_API_KEY": KEY}
    command = [sys.executable, "-m", "csekit.cli.main", "serve", str(folder), "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[1]
            assert time.monotonic() < deadline, "the server did not start"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            time.sleep(0.2)
        expected = load_encoder(folder)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)
        answer = client.embeddings.create(model=folder.name, input=TEXTS, encoding_format="float")
        assert _max_diff([item.embedding for item in answer.data], expected.encode(TEXTS)) < 1e-5

        # A request in flight: its headers and half its body sent when SIGTERM comes.
        body = json.dumps({"inputs": TEXTS}).encode()
        in_flight = socket.create_connection(("127.0.0.1", port), timeout=30)
        in_flight.sendall(f"POST /embed HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                          + body[: len(body) // 2])  # fmt: skip
        time.sleep(1.0)  # the idle server has read the headers long before: the request is in flight
        process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        while True:  # the server stops accepting connections at once
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except ConnectionRefusedError:
                break
            assert time.monotonic() < deadline, "the server still accepts connections after SIGTERM"
            time.sleep(0.1)
        assert process.poll() is None  # ... but waits for the request in flight
        in_flight.sendall(body[len(body) // 2 :])
        reply = b""
        while chunk := in_flight.recv(65536):
            reply += chunk
        in_flight.close()
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), reply[:300]
        assert _max_diff(json.loads(payload), _units(expected.encode(TEXTS))) < 1e-5  # /embed normalizes
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert "stopped by SIGTERM after the requests in flight" in err
