"""Running an app under uvicorn until SIGINT or SIGTERM, then stopping gracefully.

On a signal uvicorn stops accepting connections, lets the requests in flight finish (up to a grace
period), then runs the app's shutdown, which finishes what the model's thread has queued. The socket is
bound here, before uvicorn starts, so a port in use is a one-line error rather than uvicorn's log and exit.
"""

from __future__ import annotations

import signal
import socket
import threading

import uvicorn

from csekit.errors import CsekitError


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (an IPv4 or IPv6 address or a name)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]  # fmt: skip
    except socket.gaierror as error:
        raise CsekitError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart need not wait out TIME_WAIT
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise CsekitError(f"cannot listen on {host}:{port}: {error.strerror}") from None
    return sock


def serve(app, sock: socket.socket, *, log_level: str = "info", graceful_timeout: float | None = 30.0) -> str | None:
    """Serve ``app`` on ``sock`` (:func:`listen`) until SIGINT or SIGTERM; the name of the signal that stopped
    it, or None. A second Ctrl-C stops at once, without waiting for the requests in flight."""
    config = uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=graceful_timeout, lifespan="on")
    server = uvicorn.Server(config)
    received: list[str] = []
    previous = {}
    if threading.current_thread() is threading.main_thread():
        # uvicorn re-raises the signal that stopped it once it is done: this handler takes it, so the
        # command ends with its own exit status instead of being killed by the signal it already obeyed.
        for number in (signal.SIGINT, signal.SIGTERM):
            previous[number] = signal.signal(number, lambda number, frame: received.append(signal.Signals(number).name))
    try:
        server.run(sockets=[sock])
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        sock.close()
    return received[0] if received else None
