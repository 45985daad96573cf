"""SentEval's ``downstream/`` evaluation data: where it is, whether it is intact, how to get it.

The folder layout is the one SentEval's ``get_transfer_data.bash`` writes (and SimCSE's
``data/download_senteval.sh`` unpacks): ``STS/STS12-en-test/STS.input.MSRpar.txt``, ...,
``SICK/SICK_test_annotated.txt``. Every file a task reads is checked against the sha256 in
``senteval_manifest.json`` before use, so a truncated download or an edited file cannot silently
change a published number.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
import tempfile
from collections.abc import Iterable
from functools import cache
from pathlib import Path

from csekit.atomic import replace_dir
from csekit.data.download import cache_root, fetch_url, hub_endpoint
from csekit.errors import CsekitError

ENV_VAR = "CSEKIT_DATA"
HOW_TO_GET = (
    f"pass --data-dir or set {ENV_VAR} to SentEval's downstream/ folder, "
    "or download it with `csekit data fetch`"
)


def default_url() -> str:
    """The processed SentEval data SimCSE's download script fetches (a tar with a ``downstream/`` folder)."""
    return f"{hub_endpoint()}/datasets/princeton-nlp/datasets-for-simcse/resolve/main/senteval.tar"


def default_dir() -> Path:
    """Where ``csekit data fetch`` puts ``downstream/`` by default: the user cache."""
    return cache_root() / "senteval" / "downstream"


@cache
def manifest() -> dict[str, dict]:
    """Relative path -> {"sha256", "bytes"} for every evaluation file csekit reads."""
    return json.loads((Path(__file__).with_name("senteval_manifest.json")).read_text(encoding="utf-8"))


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The downstream/ folder: the argument, else ``$CSEKIT_DATA``, else the fetch default."""
    chosen = data_dir or os.environ.get(ENV_VAR)
    if chosen is None:
        if default_dir().is_dir():
            return default_dir()
        raise CsekitError(f"no evaluation data found: {HOW_TO_GET}")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise CsekitError(f"evaluation data folder {str(path)!r} does not exist: {HOW_TO_GET}")
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(data_dir: Path, relative_paths: Iterable[str]) -> None:
    """Refuse a missing or altered file, naming it, what was expected, and how to get the data."""
    expected = manifest()
    for relative in relative_paths:
        path = data_dir / relative
        entry = expected[relative]
        if not path.is_file():
            raise CsekitError(f"missing evaluation file {path}: {HOW_TO_GET}")
        size = path.stat().st_size
        if size != entry["bytes"] or sha256_of(path) != entry["sha256"]:
            raise CsekitError(
                f"evaluation file {path} is altered or truncated (expected {entry['bytes']} bytes, "
                f"sha256 {entry['sha256'][:12]}…; found {size} bytes): fetch it again with `csekit data fetch`"
            )


def fetch(dest: str | os.PathLike | None = None, *, url: str | None = None) -> Path:
    """Download and unpack the SentEval data, verify every file, and return the downstream/ folder.

    ``dest`` is the folder that will hold ``downstream/`` (default: the user cache's ``senteval/``).
    The archive is downloaded beside it (an interrupted download continues where it stopped), unpacked
    into a temporary folder and moved into place only once every file verifies.
    """
    url = url or default_url()
    dest_root = Path(dest).expanduser() if dest else default_dir().parent
    dest_root.mkdir(parents=True, exist_ok=True)
    # Named by its URL, so that a partial download is only ever continued from the same archive.
    archive = dest_root / f".senteval-{hashlib.sha256(url.encode()).hexdigest()[:12]}.tar.partial"
    fetch_url(url, archive)
    try:  # a whole archive is used once: a bad one must be downloaded anew, not continued
        with tempfile.TemporaryDirectory(dir=dest_root, prefix=".fetch-") as scratch:
            unpacked = Path(scratch) / "unpacked"
            try:
                with tarfile.open(archive) as tar:
                    tar.extractall(unpacked, filter="data")  # refuses absolute paths and links out of the folder
            except (tarfile.TarError, OSError) as error:
                raise CsekitError(f"{url} is not a readable tar archive: {_one_line(error)}") from None
            found = [p for p in unpacked.rglob("downstream") if p.is_dir()]
            if not found:
                raise CsekitError(f"{url} has no downstream/ folder: is it SentEval's data?")
            verify_files(found[0], manifest())
            target = dest_root / "downstream"
            replace_dir(found[0], target)
    finally:
        archive.unlink(missing_ok=True)
    return target


def _one_line(error: BaseException) -> str:
    """An exception's message on one line (tarfile's ReadError lists each compression tried on its own line)."""
    return " ".join(str(error).split()) or type(error).__name__
