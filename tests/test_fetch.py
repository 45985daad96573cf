"""``csekit data fetch`` against a local HTTP server: download, unpack, verify, refuse bad archives, resume."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest
from hub_server import senteval_archive as _build_archive

from csekit.cli.main import main
from csekit.data.senteval import manifest, verify_files


@pytest.fixture
def server(hub) -> tuple[Path, str]:
    """(folder served, its base URL)."""
    return hub.root, hub.url


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


def test_an_interrupted_download_continues_where_it_stopped(data_dir, hub, tmp_path, capsys):
    archive = _build_archive(data_dir, tmp_path / "good", hub.root / "senteval.tar")
    hub.cut["/senteval.tar"] = archive.stat().st_size // 3  # the connection drops a third of the way
    dest = tmp_path / "cache"

    assert _fetch(dest, f"{hub.url}/senteval.tar") == 2
    err = capsys.readouterr().err
    assert f"stopped at {archive.stat().st_size // 3:,} of {archive.stat().st_size:,} bytes" in err
    assert "run again" in err and err.count("\n") == 1
    assert not (dest / "downstream").exists()

    assert _fetch(dest, f"{hub.url}/senteval.tar") == 0
    assert hub.requests[-1] == ("GET", "/senteval.tar", f"bytes={archive.stat().st_size // 3}-")
    verify_files(dest / "downstream", manifest())
    assert sorted(path.name for path in dest.iterdir()) == ["downstream"]
