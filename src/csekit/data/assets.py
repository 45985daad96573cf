"""The external assets of the demo and the tests, resolved in one place.

Each asset has a place in a folder laid out like the project's shared folder (``$CSEKIT_SHARED``; the
Makefile sets it to ``../shared``) and a public equivalent. :func:`resolve` takes the shared copy when
there is one, else the public equivalent from the user cache (``$CSEKIT_CACHE``, default
``~/.cache/csekit``), downloading it there on first use. A download is verified before it is moved into
place — data against checksums, a model by the shape its config declares and its weights against the
sha256 the hub gives — and a cached copy is checked again whenever it is used. Without a network the
missing assets are named in one error, with the two ways to provide them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from csekit.atomic import replace_dir, write_text
from csekit.data import senteval
from csekit.data.download import NoNetwork, cache_root, check_online, fetch_url, hub_endpoint
from csekit.errors import CsekitError

SHARED_ENV = "CSEKIT_SHARED"
#: A checkpoint's weights, in the order they are preferred.
WEIGHTS = ("model.safetensors", "pytorch_model.bin")


class MissingAssets(CsekitError):
    """Assets that neither the shared folder nor the cache holds, with no network to download them."""

    def __init__(self, names: list[str], reason: str):
        self.names, self.reason = names, reason
        super().__init__(_missing_message(names, reason))


@dataclass(frozen=True)
class HubModel:
    """A checkpoint on the hub: the files csekit loads and the config values that give it the right shape."""

    repo_id: str
    shape: dict[str, Any]
    files: tuple[str, ...] = ("config.json", "vocab.txt")
    optional: tuple[str, ...] = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json")

    def describe(self) -> str:
        return f"{self.repo_id} from the hub"

    def download(self, target: Path) -> None:
        # Kept between attempts: the hub's download skips the files an interrupted attempt completed.
        staging = target.with_name(f".{target.name}.partial")
        for name in self.files:
            if not self._fetch(name, staging):
                raise CsekitError(f"{self.repo_id} on {hub_endpoint()} has no {name}: is it the right repository?")
        for name in self.optional:
            self._fetch(name, staging)
        weights = next((name for name in WEIGHTS if self._fetch(name, staging)), None)
        if weights is None:
            raise CsekitError(f"{self.repo_id} on {hub_endpoint()} has none of {', '.join(WEIGHTS)}")
        published = self._hub(weights, lambda: _published_etag(self.repo_id, weights))
        if re.fullmatch(r"[0-9a-f]{64}", published) and senteval.sha256_of(staging / weights) != published:
            (staging / weights).unlink()  # so that the next attempt downloads it anew
            raise CsekitError(f"{self.repo_id}/{weights} does not match the sha256 the hub gives for it "
                              f"({published[:12]}…): refused; run again to download it anew")  # fmt: skip
        config_path = staging / "config.json"
        config = _read_config(config_path)
        if "model_type" not in config:
            # Checkpoints converted before transformers wrote model_type lack it, and transformers 5 no longer
            # guesses it from the name; the shape below names the type, so it is written in.
            write_text(config_path, json.dumps({**config, "model_type": self.shape["model_type"]}, indent=2))
        try:
            self.check(staging)
        except CsekitError:
            shutil.rmtree(staging)  # refused whole: nothing of it is kept or continued
            raise
        replace_dir(staging, target)

    def check(self, folder: Path) -> None:
        config = _read_config(folder / "config.json")
        wrong = [f"{key}={config.get(key)!r} (expected {value!r})" for key, value in self.shape.items()
                 if config.get(key) != value]  # fmt: skip
        if wrong:
            raise CsekitError(f"{folder} is not {self.repo_id}: its config.json has {', '.join(wrong)}")
        missing = [name for name in self.files if not (folder / name).is_file()]
        if not any((folder / name).is_file() for name in WEIGHTS):
            missing.append(" or ".join(WEIGHTS))
        if missing:
            raise CsekitError(f"{folder} lacks {', '.join(missing)}: delete it to download {self.repo_id} again")

    def _fetch(self, filename: str, folder: Path) -> bool:
        """Download one file into ``folder`` with the hub's own client (which resumes a dropped connection)."""
        from huggingface_hub import hf_hub_download

        return self._hub(filename, lambda: bool(hf_hub_download(self.repo_id, filename, local_dir=folder,
                                                                   endpoint=hub_endpoint())))  # fmt: skip

    def _hub(self, filename: str, call: Callable[[], Any]) -> Any:
        """``call()``, a request about ``filename``, with the hub's errors as csekit's; False for a file the repo lacks."""
        from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError

        try:
            return call()
        except RemoteEntryNotFoundError:
            return False
        except LocalEntryNotFoundError as error:  # the hub could not be reached
            raise NoNetwork(f"cannot reach {hub_endpoint()}: {_first_line(error)}") from None
        except Exception as error:  # the hub client's transport errors change with its versions
            raise CsekitError(f"cannot download {self.repo_id}/{filename}: {_first_line(error)}") from None


def _published_etag(repo_id: str, filename: str) -> str:
    """The ETag the hub gives for a file: the sha256 of its content for a large (LFS) file."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    return get_hf_file_metadata(hf_hub_url(repo_id, filename, endpoint=hub_endpoint())).etag or ""


@dataclass(frozen=True)
class TextPrefix:
    """The first ``lines`` lines of a public text file: its first ``size`` bytes, with a known sha256."""

    path: str  # on the hub endpoint
    lines: int
    size: int
    sha256: str

    def describe(self) -> str:
        return f"the first {self.lines:,} lines of {self.path.rsplit('/', 1)[-1]} from the hub"

    def download(self, target: Path) -> None:
        url = f"{hub_endpoint()}/{self.path}"
        partial = target.with_name(f".{target.name}.partial")
        fetch_url(url, partial, size=self.size)
        if senteval.sha256_of(partial) != self.sha256:
            partial.unlink()  # a whole but wrong prefix cannot be continued: the next attempt starts over
            raise CsekitError(f"the first {self.size:,} bytes of {url} are not the expected {self.lines:,} lines "
                              f"(sha256 {self.sha256[:12]}…): refused; run again to download them anew")  # fmt: skip
        os.replace(partial, target)

    def check(self, path: Path) -> None:
        if path.stat().st_size != self.size or senteval.sha256_of(path) != self.sha256:
            raise CsekitError(f"{path} is altered (expected {self.size:,} bytes, sha256 {self.sha256[:12]}…): "
                              "delete it to download it again")  # fmt: skip


@dataclass(frozen=True)
class SentEvalData:
    """SentEval's evaluation data, as ``csekit data fetch`` downloads and verifies it."""

    def describe(self) -> str:
        return "SentEval's data (SimCSE's senteval.tar) from the hub"

    def download(self, target: Path) -> None:
        senteval.fetch(target.parent, url=senteval.default_url())

    def check(self, folder: Path) -> None:
        senteval.verify_files(folder, senteval.manifest())


@dataclass(frozen=True)
class Asset:
    name: str
    shared: str
    """Its place in a folder laid out like ../shared."""
    cached: str
    """Its place in the user cache."""
    public: HubModel | TextPrefix | SentEvalData


_BERT_UNCASED = {"model_type": "bert", "vocab_size": 30522}
ASSETS: dict[str, Asset] = {asset.name: asset for asset in (
    Asset("bert-mini", "models/bert-mini-mlm", "models/google--bert_uncased_L-4_H-256_A-4",
          HubModel("google/bert_uncased_L-4_H-256_A-4",
                   {**_BERT_UNCASED, "num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4})),
    Asset("all-MiniLM-L6-v2", "models/all-MiniLM-L6-v2", "models/sentence-transformers--all-MiniLM-L6-v2",
          HubModel("sentence-transformers/all-MiniLM-L6-v2",
                   {**_BERT_UNCASED, "num_hidden_layers": 6, "hidden_size": 384, "num_attention_heads": 12},
                   files=("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json", "modules.json",
                          "sentence_bert_config.json", "1_Pooling/config.json"),
                   optional=("special_tokens_map.json", "config_sentence_transformers.json"))),
    Asset("wiki1m-first11914", "data/train/unsup/wiki1m_for_simcse.first11914lines.txt",
          "train/wiki1m_for_simcse.first11914lines.txt",
          TextPrefix("datasets/princeton-nlp/datasets-for-simcse/resolve/main/wiki1m_for_simcse.txt", lines=11914,
                     size=1279831, sha256="423e56115d182ab21d4f413473f6f615888d140fec81f06a750297b5940aa190")),
    Asset("senteval", "data/senteval/downstream", "senteval/downstream", SentEvalData()),
)}  # fmt: skip


def locate(name: str) -> Path | None:
    """The asset on this machine: the shared folder's copy, else the cache's (checked), else None."""
    asset = _known(name)
    shared = os.environ.get(SHARED_ENV)
    if shared and (Path(shared) / asset.shared).exists():
        return Path(shared) / asset.shared
    cached = cache_root() / asset.cached
    if cached.exists():
        asset.public.check(cached)
        return cached
    return None


def resolve(names: Iterable[str], *, on_download: Callable[[Asset], None] | None = None) -> dict[str, Path]:
    """Each asset's folder or file, downloading the public equivalents of those this machine lacks.

    ``on_download(asset)`` is called before each download. With no network, one error names every asset
    still missing and the two ways to provide them.
    """
    found = {name: locate(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    try:
        if missing:
            check_online()
        for name in missing:
            asset = ASSETS[name]
            if on_download is not None:
                on_download(asset)
            target = cache_root() / asset.cached
            target.parent.mkdir(parents=True, exist_ok=True)
            asset.public.download(target)
            found[name] = target
    except NoNetwork as error:
        raise MissingAssets([name for name in missing if found[name] is None], str(error)) from None
    return found


def _missing_message(names: list[str], reason: str) -> str:
    shared = os.environ.get(SHARED_ENV)
    which, it = ("which is", "it is") if len(names) == 1 else ("which are", "they are")
    where = f"neither in {SHARED_ENV} ({shared}) nor in" if shared else "not in"
    return (f"needs {', '.join(names)}, {which} {where} the cache ({cache_root()}), and {reason}. Either connect to "
            f"a network and run again ({it} downloaded once: "
            f"{'; '.join(ASSETS[name].public.describe() for name in names)}), or set {SHARED_ENV} to a folder laid out "
            f"like ../shared, with {', '.join(ASSETS[name].shared for name in names)}")  # fmt: skip


def _known(name: str) -> Asset:
    if name not in ASSETS:
        raise CsekitError(f"unknown asset {name!r}; the assets are {', '.join(ASSETS)}")
    return ASSETS[name]


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CsekitError(f"cannot read {path}: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
