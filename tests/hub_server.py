"""A stand-in for the Hugging Face hub on 127.0.0.1, serving copies of the shared files as their public sources.

It answers what huggingface_hub's download and csekit's own downloads ask: ``HEAD`` and ranged ``GET`` of
``/{repo}/resolve/{revision}/{file}`` with the hub's headers (``ETag``, the sha256 of the content;
``X-Repo-Commit``; ``X-Error-Code: EntryNotFound`` for a missing file), and plain paths. A test can cut one
response short (a dropped connection) or flip a byte of it (corruption in transit, the ETag still the
file's). ``python tests/hub_server.py SHARED ROOT`` lays out the public sources from a shared folder and
serves them, for ``HF_ENDPOINT=http://127.0.0.1:PORT make demo`` without ../shared.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import re
import shutil
import tarfile
import threading
from pathlib import Path

from csekit.data.senteval import manifest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SIMCSE_DATA = "datasets/princeton-nlp/datasets-for-simcse"
BERT_MINI_REPO = "google/bert_uncased_L-4_H-256_A-4"
_RESOLVE = re.compile(r"^/(?P<repo>.+?)/resolve/[^/]+/(?P<file>.+)$")


class LocalServer:
    """An HTTP server on 127.0.0.1 in a daemon thread; its handler reaches the owner as ``self.server.<name>``."""

    def serve(self, handler: type[http.server.BaseHTTPRequestHandler], port: int = 0, *, name: str) -> None:
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        setattr(self.httpd, name, self)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)


class HubServer(LocalServer):
    """Serves ``root`` (``{repo}/{file}`` for ``/{repo}/resolve/{revision}/{file}``) until closed."""

    def __init__(self, root: Path, port: int = 0):
        self.root = root
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        self.cut: dict[str, int] = {}  # path -> bytes sent before the connection drops (once)
        self.flip: dict[str, int] = {}  # path -> offset of a byte sent altered (once)
        self.serve(_Handler, port, name="hub")


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the hub's client expects

    def do_HEAD(self):
        self._answer(body=False)

    def do_GET(self):
        self._answer(body=True)

    def _answer(self, *, body: bool) -> None:
        hub: HubServer = self.server.hub
        path = self.path.split("?", 1)[0]
        hub.requests.append((self.command, path, self.headers.get("Range")))
        if path == "/":  # what csekit asks first: is the hub there?
            return self._send(200, b"", {})
        match = _RESOLVE.match(path)
        file = hub.root / (f"{match['repo']}/{match['file']}" if match else path.lstrip("/"))
        if not file.is_file() or not file.resolve().is_relative_to(hub.root.resolve()):
            return self._send(404, b"", {"X-Error-Code": "EntryNotFound"} if match else {})
        data = file.read_bytes()
        headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": COMMIT, "Accept-Ranges": "bytes"}
        start, status = 0, 200
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if ranged:
            start, end = int(ranged[1]), int(ranged[2] or len(data) - 1)
            if start >= len(data):
                return self._send(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            end = min(end, len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        if not body:
            return self._send(status, data, headers, body=False)
        if path in hub.flip:
            offset = hub.flip.pop(path) - start
            data = data[:offset] + bytes([data[offset] ^ 0xFF]) + data[offset + 1 :]
        if path in hub.cut:
            headers["Content-Length"] = str(len(data))  # promised in full, then the connection drops
            data = data[: hub.cut.pop(path)]
            self.close_connection = True
        self._send(status, data, headers)

    def _send(self, status: int, data: bytes, headers: dict[str, str], *, body: bool = True) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format, *args):
        pass


def senteval_archive(data_dir: Path, work: Path, archive: Path, *, alter: str | None = None) -> Path:
    """A tar like SimCSE's senteval.tar: ``senteval/downstream/<every manifest file>``.

    With ``alter``, that one file gets an extra line, as a corrupted or edited download would.
    """
    root = work / "senteval"
    for relative in manifest():
        target = root / "downstream" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(data_dir / relative, target)
    if alter is not None:
        with open(root / "downstream" / alter, "a", encoding="utf-8") as handle:
            handle.write("an extra line\n")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="senteval")
    return archive


def copy_model(source: Path, repo: Path, names: tuple[str, ...] = ("config.json", "vocab.txt", "model.safetensors")):
    """The files of a shared model that its public repository has (copied, not linked: the shared ones are read-only)."""
    repo.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copyfile(source / name, repo / name)


def wiki_file(first_lines: Path, target: Path) -> Path:
    """SimCSE's wiki1m file as far as csekit reads it: the shared first lines, then more that are never read."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(first_lines.read_bytes() + b"A line past the ones csekit reads.\n" * 100)
    return target


def lay_out_public_sources(shared: Path, root: Path) -> None:
    """The demo's public sources, as the hub serves them, from a shared folder's copies."""
    copy_model(shared / "models" / "bert-mini-mlm", root / BERT_MINI_REPO)
    wiki_file(shared / "data/train/unsup/wiki1m_for_simcse.first11914lines.txt",
              root / SIMCSE_DATA / "wiki1m_for_simcse.txt")  # fmt: skip
    senteval_archive(shared / "data/senteval/downstream", root / ".build", root / SIMCSE_DATA / "senteval.tar")
    shutil.rmtree(root / ".build")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shared", type=Path, help="a folder laid out like ../shared, to copy from")
    parser.add_argument("root", type=Path, help="where to lay out the public sources")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    lay_out_public_sources(args.shared, args.root)
    server = HubServer(args.root, args.port)
    print(f"serving {args.root} at {server.url}", flush=True)
    threading.Event().wait()
