"""``csekit data fetch`` against a local HTTP server: download, unpack, verify, and refuse bad archives."""

from __future__ import annotations

import functools
import http.server
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from csekit.cli.main import main
from csekit.data.senteval import manifest, verify_files


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch) -> Iterator[tuple[Path, str]]:
    """(folder served, its base URL) on 127.0.0.1 at an ephemeral port."""
    # A proxy set in the environment must not intercept the loopback request.
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def _build_archive(data_dir: Path, work: Path, archive: Path, *, alter: str | None = None) -> Path:
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
    with tarfile.open(archive, "w") as tar:
        tar.add(root, arcname="senteval")
    return archive


def _fetch(dest: Path, url: str) -> int:
    return main(["data", "fetch", "--dest", str(dest), "--url", url])


def test_fetch_downloads_unpacks_and_verifies(data_dir, server, tmp_path, capsys):
    served, base = server
    _build_archive(data_dir, tmp_path / "good", served / "senteval.tar")
    dest = tmp_path / "cache"

    assert _fetch(dest, f"{base}/senteval.tar") == 0
    verify_files(dest / "downstream", manifest())  # every file, byte for byte
    out = capsys.readouterr().out
    assert str(dest / "downstream") in out
    # The scratch folder (download + unpack) is gone: only the verified folder remains.
    assert sorted(path.name for path in dest.iterdir()) == ["downstream"]


def test_altered_archive_is_refused_and_keeps_the_good_copy(data_dir, server, tmp_path, capsys):
    served, base = server
    _build_archive(data_dir, tmp_path / "good", served / "good.tar")
    altered = "STS/STS15-en-test/STS.gs.images.txt"
    _build_archive(data_dir, tmp_path / "bad", served / "bad.tar", alter=altered)
    dest = tmp_path / "cache"
    assert _fetch(dest, f"{base}/good.tar") == 0
    capsys.readouterr()

    assert _fetch(dest, f"{base}/bad.tar") == 2
    err = capsys.readouterr().err
    assert err.startswith("csekit: error:") and err.count("\n") == 1
    assert altered in err and "altered or truncated" in err
    # The earlier verified copy is untouched, and nothing of the bad download is left behind.
    verify_files(dest / "downstream", manifest())
    assert sorted(path.name for path in dest.iterdir()) == ["downstream"]


def test_altered_archive_into_an_empty_destination_creates_nothing(data_dir, server, tmp_path, capsys):
    served, base = server
    altered = "SICK/SICK_test_annotated.txt"
    _build_archive(data_dir, tmp_path / "bad", served / "bad.tar", alter=altered)
    dest = tmp_path / "cache"

    assert _fetch(dest, f"{base}/bad.tar") == 2
    assert altered in capsys.readouterr().err
    assert not (dest / "downstream").exists()
    assert list(dest.iterdir()) == []


def test_missing_url_is_a_one_line_error(server, tmp_path, capsys):
    _, base = server
    url = f"{base}/no-such-file.tar"
    assert _fetch(tmp_path / "cache", url) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("csekit: error: cannot download") and url in err and "404" in err
    assert not (tmp_path / "cache" / "downstream").exists()


def test_a_file_that_is_not_a_tar_is_refused(server, tmp_path, capsys):
    served, base = server
    (served / "page.html").write_text("<html>not an archive</html>", encoding="utf-8")
    assert _fetch(tmp_path / "cache", f"{base}/page.html") == 2
    err = capsys.readouterr().err
    assert "not a readable tar archive" in err and err.count("\n") == 1


def test_a_tar_without_downstream_is_refused(server, tmp_path, capsys):
    served, base = server
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("something else", encoding="utf-8")
    with tarfile.open(served / "other.tar", "w") as tar:
        tar.add(tmp_path / "other", arcname="other")
    assert _fetch(tmp_path / "cache", f"{base}/other.tar") == 2
    assert "no downstream/ folder" in capsys.readouterr().err
