"""Public files over HTTP: where they come from, where they are kept, and a transfer that survives interruption.

Every public source csekit downloads lives on the Hugging Face hub, so ``$HF_ENDPOINT`` (the variable
huggingface_hub reads) moves all of them to a mirror at once, and ``$HF_HUB_OFFLINE`` stops all of them.
Downloads are kept in one user cache, ``$CSEKIT_CACHE`` (default ``~/.cache/csekit``).
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from csekit.errors import CsekitError

HUB = "https://huggingface.co"
_TRUE = {"1", "true", "yes", "on"}


class NoNetwork(CsekitError):
    """The public sources cannot be reached (no network, a name that does not resolve, offline mode)."""


def hub_endpoint() -> str:
    """The hub's base URL, read when a download starts (so a mirror set after import still counts)."""
    return os.environ.get("HF_ENDPOINT", HUB).rstrip("/")


def cache_root() -> Path:
    return Path(os.environ.get("CSEKIT_CACHE") or "~/.cache/csekit").expanduser()


def check_online(timeout: float = 10) -> None:
    """Raise :class:`NoNetwork` unless the hub answers (any HTTP status counts as an answer)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        raise NoNetwork("HF_HUB_OFFLINE is set")
    try:
        with urllib.request.urlopen(urllib.request.Request(hub_endpoint(), method="HEAD"), timeout=timeout):
            pass
    except urllib.error.HTTPError:
        pass
    except OSError as error:
        raise NoNetwork(f"cannot reach {hub_endpoint()}: {_reason(error)}") from None


def fetch_url(url: str, partial: Path, *, size: int | None = None, timeout: float = 60) -> None:
    """Bring ``partial`` to the whole of ``url``, or to its first ``size`` bytes.

    The bytes an interrupted attempt left in ``partial`` are kept and the rest is asked for with a Range
    request; a server that ignores the range sends everything again and ``partial`` starts over. A transfer
    that ends short raises, keeping what arrived for the next attempt. The caller verifies the result.
    """
    partial.parent.mkdir(parents=True, exist_ok=True)
    have = partial.stat().st_size if partial.exists() else 0
    if size is not None and have >= size:
        if have == size:
            return
        partial.unlink()  # longer than wanted: not a prefix of this download
        have = 0
    request = urllib.request.Request(url)
    if have or size is not None:
        request.add_header("Range", f"bytes={have}-{'' if size is None else size - 1}")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # what is kept is no prefix of the file: start over
            partial.unlink()
            return fetch_url(url, partial, size=size, timeout=timeout)
        raise CsekitError(f"cannot download {url}: {_reason(error)}") from None
    except OSError as error:
        raise NoNetwork(f"cannot reach {urlsplit(url).netloc}: {_reason(error)}") from None
    with response:
        resumed = response.status == 206 and response.headers.get("Content-Range", "").startswith(f"bytes {have}-")
        start = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = size if size is not None else (start + int(length) if length is not None else None)
        with open(partial, "ab" if resumed else "wb") as out:
            try:
                _copy(response, out, None if size is None else size - start)
            except OSError:
                pass  # a dropped connection: what arrived is kept and the size check below reports it
        got = partial.stat().st_size
    if total is not None and got < total:
        raise CsekitError(f"the download of {url} stopped at {got:,} of {total:,} bytes: run again to continue it")


def _copy(source, out, limit: int | None) -> None:
    """Copy ``source`` to ``out``, at most ``limit`` bytes (a server that ignores a range sends them all)."""
    if limit is None:
        shutil.copyfileobj(source, out, 1 << 20)
        return
    while limit > 0:
        chunk = source.read(min(limit, 1 << 20))
        if not chunk:
            return
        out.write(chunk)
        limit -= len(chunk)


def _reason(error: BaseException) -> str:
    """An exception's message on one line: the cause of a URLError, the code and reason of an HTTPError."""
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    reason = getattr(error, "reason", None) or error
    return " ".join(str(getattr(reason, "strerror", None) or reason).split()) or type(error).__name__
