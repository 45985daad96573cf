"""Real HTTP servers on 127.0.0.1 for the generator tests: llama.cpp's OpenAI-compatible server, and a proxy.

:func:`start_llama_server` runs ``python -m llama_cpp.server`` on a GGUF file and waits until it answers.
:class:`Proxy` forwards every request to an upstream server and records what passes through it: the request
bodies, how many requests were in flight at once (at most), and it can answer the first ``fail_first``
requests with ``fail_status`` itself (503: a server under load) or wait ``delay`` seconds before forwarding
(a slow server). With no upstream it answers 200 with a chat completion of ``content`` after its delay.
"""

from __future__ import annotations

import http.client
import http.server
import json
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from hub_server import LocalServer


def start_llama_server(gguf: Path, port: str, log: Path) -> subprocess.Popen:
    """llama.cpp's server on ``gguf`` at 127.0.0.1:``port``, ready to answer (its output in ``log``)."""
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", port, "--n_ctx", "2048", "--n_threads", "1", "--model_alias", "smollm2"]  # fmt: skip
    with log.open("wb") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise RuntimeError(f"llama_cpp.server did not answer within 120 s: {log.read_text()[-2000:]}")


class Proxy(LocalServer):
    """Forwards to ``upstream`` (``http://127.0.0.1:PORT``) and records: ``bodies`` (each request's JSON body,
    as it arrived), ``in_flight`` and ``most_in_flight``, ``answered`` (requests given an upstream answer)."""

    def __init__(self, upstream: str | None = None, *, fail_first: int = 0, fail_status: int = 503,
                 delay: float = 0.0, content: str = "canned") -> None:  # fmt: skip
        self.upstream = urlsplit(upstream) if upstream else None
        self.fail_first, self.fail_status, self.delay = fail_first, fail_status, delay
        self.content = content  # what it answers itself, with no upstream
        self.bodies: list[dict] = []
        self.in_flight = self.most_in_flight = self.answered = 0
        self.lock = threading.Lock()
        self.serve(_Handler, name="proxy")


def _completion(content: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}]}).encode()  # fmt: skip


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_POST(self) -> None:
        proxy: Proxy = self.server.proxy
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with proxy.lock:
            number = len(proxy.bodies)
            proxy.bodies.append(json.loads(body or b"{}"))
            proxy.in_flight += 1
            proxy.most_in_flight = max(proxy.most_in_flight, proxy.in_flight)
        try:
            if number < proxy.fail_first:
                self._send(proxy.fail_status, json.dumps({"error": {"message": "busy"}}).encode())
                return
            time.sleep(proxy.delay)
            if proxy.upstream is None:
                status, answer = 200, _completion(proxy.content)
            else:
                connection = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=600)
                connection.request("POST", self.path, body, {"Content-Type": "application/json"})
                response = connection.getresponse()
                status, answer = response.status, response.read()
                connection.close()
            with proxy.lock:
                proxy.answered += 1
            self._send(status, answer)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): nothing to answer
            pass
        finally:
            with proxy.lock:
                proxy.in_flight -= 1

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
