"""The demo's and the tests' assets: the shared folder's copy, else the public equivalent from the user cache,
downloaded from a stand-in for the hub on 127.0.0.1 (verified, moved into place whole, resumed, reused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import SENTENCES, asset, make_tiny_encoder
from hub_server import BERT_MINI_REPO, SIMCSE_DATA, copy_model, senteval_archive, wiki_file

from csekit.cli.main import main
from csekit.data.assets import ASSETS, MissingAssets, resolve
from csekit.data.senteval import manifest, verify_files
from csekit.errors import CsekitError
from csekit.models import load_encoder

WIKI = "/" + SIMCSE_DATA + "/resolve/main/wiki1m_for_simcse.txt"
WEIGHTS = f"/{BERT_MINI_REPO}/resolve/main/model.safetensors"


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """A machine with no shared folder and an empty user cache (returned)."""
    monkeypatch.setenv("CSEKIT_SHARED", str(tmp_path / "no-shared"))
    monkeypatch.setenv("CSEKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# The copies to serve, resolved once a session (before any test points CSEKIT_SHARED or HF_ENDPOINT elsewhere).
@pytest.fixture(scope="session")
def wiki_source() -> Path:
    return asset("wiki1m-first11914")


def _files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


# ----------------------------------------------------------------------------- a text file's first lines
def test_the_first_lines_are_downloaded_verified_and_reused(wiki_source, hub, elsewhere):
    wiki_file(wiki_source, hub.root / SIMCSE_DATA / "wiki1m_for_simcse.txt")
    path = resolve(["wiki1m-first11914"])["wiki1m-first11914"]
    assert path == elsewhere / ASSETS["wiki1m-first11914"].cached
    assert path.read_bytes() == wiki_source.read_bytes()  # those bytes only, though the file goes on
    assert ("GET", WIKI, f"bytes=0-{wiki_source.stat().st_size - 1}") in hub.requests
    assert _files(elsewhere) == ["train/wiki1m_for_simcse.first11914lines.txt"]  # no partial file left

    hub.requests.clear()
    assert resolve(["wiki1m-first11914"])["wiki1m-first11914"] == path
    assert hub.requests == []  # reused: no request at all


def test_an_interrupted_download_continues_where_it_stopped(wiki_source, hub, elsewhere):
    wiki_file(wiki_source, hub.root / SIMCSE_DATA / "wiki1m_for_simcse.txt")
    size = wiki_source.stat().st_size
    hub.cut[WIKI] = 500_000
    with pytest.raises(CsekitError, match=f"stopped at 500,000 of {size:,} bytes: run again to continue it"):
        resolve(["wiki1m-first11914"])
    assert not (elsewhere / ASSETS["wiki1m-first11914"].cached).exists()

    path = resolve(["wiki1m-first11914"])["wiki1m-first11914"]
    assert hub.requests[-1] == ("GET", WIKI, f"bytes=500000-{size - 1}")
    assert path.read_bytes() == wiki_source.read_bytes()


def test_a_corrupted_download_is_refused_and_starts_over_next_time(wiki_source, hub, elsewhere):
    wiki_file(wiki_source, hub.root / SIMCSE_DATA / "wiki1m_for_simcse.txt")
    hub.flip[WIKI] = 1234
    with pytest.raises(CsekitError, match="are not the expected 11,914 lines .*refused"):
        resolve(["wiki1m-first11914"])
    assert _files(elsewhere) == []  # nothing kept: a whole but wrong file cannot be continued

    assert resolve(["wiki1m-first11914"])["wiki1m-first11914"].read_bytes() == wiki_source.read_bytes()
    assert hub.requests[-1][2] == f"bytes=0-{wiki_source.stat().st_size - 1}"


def test_an_altered_cached_copy_is_refused(wiki_source, hub, elsewhere):
    wiki_file(wiki_source, hub.root / SIMCSE_DATA / "wiki1m_for_simcse.txt")
    path = resolve(["wiki1m-first11914"])["wiki1m-first11914"]
    path.write_text("edited\n", encoding="utf-8")
    with pytest.raises(CsekitError, match="is altered .*delete it to download it again"):
        resolve(["wiki1m-first11914"])


# ----------------------------------------------------------------------------- SentEval's data
def test_senteval_data_comes_through_csekit_data_fetch_and_is_verified(data_dir, hub, elsewhere, tmp_path):
    senteval_archive(data_dir, tmp_path / "build", hub.root / SIMCSE_DATA / "senteval.tar")
    path = resolve(["senteval"])["senteval"]
    assert path == elsewhere / "senteval" / "downstream"  # where `csekit data fetch` puts it by default
    verify_files(path, manifest())  # every file, byte for byte
    assert sorted(p.name for p in (elsewhere / "senteval").iterdir()) == ["downstream"]  # the archive is gone


# ----------------------------------------------------------------------------- a model from the hub
def _serve_bert_mini(hub, source: Path, **config_changes) -> Path:
    repo = hub.root / BERT_MINI_REPO
    copy_model(source, repo)  # the public repository's files: config.json, vocab.txt and the weights
    config = json.loads((repo / "config.json").read_text(encoding="utf-8"))
    config.update(config_changes)
    (repo / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}), encoding="utf-8")
    return repo


def test_a_hub_model_is_downloaded_checked_and_loads_like_the_shared_one(bert_mini, hub, elsewhere):
    _serve_bert_mini(hub, bert_mini, model_type=None)  # a config from before transformers wrote the key
    path = resolve(["bert-mini"])["bert-mini"]
    assert path == elsewhere / ASSETS["bert-mini"].cached
    assert {"config.json", "vocab.txt", "model.safetensors"} <= set(_files(path))
    assert json.loads((path / "config.json").read_text(encoding="utf-8"))["model_type"] == "bert"
    # What huggingface_hub asked: HEAD then GET of /{repo}/resolve/{revision}/{file}; absent files are 404s.
    assert ("HEAD", f"/{BERT_MINI_REPO}/resolve/main/config.json", None) in hub.requests
    assert ("GET", WEIGHTS, None) in hub.requests
    assert not any(request[1].endswith("pytorch_model.bin") for request in hub.requests)  # safetensors found first
    assert not list(elsewhere.glob("models/.*"))  # the staging folder became the model
    texts = ["a man plays the guitar .", "two dogs run in a field ."]
    expected = load_encoder(str(bert_mini), pooler="mean").encode(texts)
    torch.testing.assert_close(torch.from_numpy(load_encoder(str(path), pooler="mean").encode(texts)),
                               torch.from_numpy(expected))  # fmt: skip

    hub.requests.clear()
    assert resolve(["bert-mini"])["bert-mini"] == path and hub.requests == []


def test_a_dropped_model_download_is_resumed_by_the_hubs_client(bert_mini, hub, elsewhere):
    repo = _serve_bert_mini(hub, bert_mini)
    hub.cut[WEIGHTS] = 30_000_000  # the client writes in 10 MiB chunks: it continues after the last whole one
    path = resolve(["bert-mini"])["bert-mini"]
    ranges = [int(request[2][6:-1]) for request in hub.requests if request[:2] == ("GET", WEIGHTS) and request[2]]
    assert len(ranges) == 1 and 0 < ranges[0] <= 30_000_000
    assert (path / "model.safetensors").read_bytes() == (repo / "model.safetensors").read_bytes()


def test_corrupted_weights_are_refused_by_the_hubs_sha256(bert_mini, hub, elsewhere):
    _serve_bert_mini(hub, bert_mini)
    hub.flip[WEIGHTS] = 4096  # a byte altered in transit; the ETag is still the file's sha256
    with pytest.raises(CsekitError, match="model.safetensors does not match the sha256 the hub gives for it"):
        resolve(["bert-mini"])
    assert not (elsewhere / ASSETS["bert-mini"].cached).exists()

    hub.requests.clear()
    assert (resolve(["bert-mini"])["bert-mini"] / "model.safetensors").is_file()
    assert ("GET", WEIGHTS, None) in hub.requests  # downloaded anew, not continued


def test_a_model_of_another_shape_is_refused(bert_mini, hub, elsewhere):
    _serve_bert_mini(hub, bert_mini, num_hidden_layers=6)
    with pytest.raises(CsekitError, match=r"is not google/bert_uncased_L-4_H-256_A-4: .*num_hidden_layers=6 \(expected 4\)"):
        resolve(["bert-mini"])
    assert _files(elsewhere) == []  # nothing kept


# ----------------------------------------------------------------------------- no network, or a shared folder
def test_without_a_network_one_error_names_every_missing_asset_and_both_remedies(elsewhere, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    names = ["bert-mini", "wiki1m-first11914", "senteval"]
    with pytest.raises(MissingAssets) as caught:
        resolve(names)
    message = str(caught.value)
    assert caught.value.names == names and "\n" not in message
    assert message.startswith("needs bert-mini, wiki1m-first11914, senteval, which are neither in CSEKIT_SHARED")
    assert "cannot reach http://127.0.0.1:9" in message and "connect to a network and run again" in message
    assert all(ASSETS[name].shared in message for name in names) and "a folder laid out like ../shared" in message
    assert _files(tmp_path) == []  # nothing written anywhere

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingAssets, match="and HF_HUB_OFFLINE is set"):
        resolve(["bert-mini"])


def test_a_shared_folder_wins_and_needs_no_network(tmp_path, monkeypatch, hub):
    shared = tmp_path / "shared"
    (shared / "models" / "bert-mini-mlm").mkdir(parents=True)
    monkeypatch.setenv("CSEKIT_SHARED", str(shared))
    monkeypatch.setenv("CSEKIT_CACHE", str(tmp_path / "cache"))
    assert resolve(["bert-mini"]) == {"bert-mini": shared / "models" / "bert-mini-mlm"}
    assert hub.requests == [] and not (tmp_path / "cache").exists()
    with pytest.raises(CsekitError, match="unknown asset 'bert-max'; the assets are bert-mini, "):
        resolve(["bert-max"])


def test_train_sets_recipe_keys_to_assets(tmp_path, monkeypatch, capsys):
    """``csekit train --asset KEY=ASSET``, here from a folder laid out like ../shared."""
    shared = tmp_path / "shared"
    make_tiny_encoder().save(shared / "models" / "bert-mini-mlm")
    wiki = shared / ASSETS["wiki1m-first11914"].shared
    wiki.parent.mkdir(parents=True)
    wiki.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    monkeypatch.setenv("CSEKIT_SHARED", str(shared))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": "not/here", "train_files": ["not-here.txt"], "batch_size": 8,
                                      "max_steps": 2, "eval_steps": 0, "output_dir": str(tmp_path / "run")}))  # fmt: skip
    assert main(["train", str(recipe), "--asset", "model=bert-mini", "--asset", "train_files=wiki1m-first11914"]) == 0
    out = capsys.readouterr().out
    assert f"model: bert-mini from {shared / 'models' / 'bert-mini-mlm'}" in out
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert config["model"] == str(shared / "models" / "bert-mini-mlm") and config["train_files"] == [str(wiki)]

    assert main(["train", str(recipe), "--asset", "model"]) == 2
    assert "--asset 'model': expected key=asset" in capsys.readouterr().err
