"""Encoders used smaller: a prefix of each embedding, the first k layers; saved so, loaded so by csekit and by
stock sentence-transformers (same embeddings), and the CLI's --dim, --dims and --layers."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from conftest import make_tiny_encoder
from sentence_transformers import SentenceTransformer
from test_objectives_contract import batch_for

from csekit import CsekitError
from csekit.cli.main import main
from csekit.models import load_encoder
from csekit.objectives import build_objective

TEXTS = ["a man plays the guitar .", "two dogs run in the snow .", "the market fell today .", "a red car ."]


def matryoshka_trained(pooler: str = "cls_before_pooler", **config):
    """A tiny 3-layer encoder after a few steps of 2D Matryoshka over CoSENT."""
    encoder = make_tiny_encoder(pooler, num_hidden_layers=3, **config).train()
    objective = build_objective("cosent", encoder, wrappers={"matryoshka2d": {"dims": [32, 16, 8]}})
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.05)
    batch = batch_for(objective, encoder)
    for _ in range(3):
        optimizer.zero_grad()
        sum(objective(encoder, batch).values()).backward()
        optimizer.step()
    return encoder.eval()


def test_a_prefix_is_the_first_numbers_of_each_embedding_renormalised_where_the_model_normalises():
    encoder = matryoshka_trained()
    full = encoder.encode(TEXTS)
    assert np.array_equal(encoder.truncate(8).encode(TEXTS), full[:, :8]) and encoder.embedding_dim == 8
    encoder.normalize = True
    unit = encoder.encode(TEXTS)
    np.testing.assert_allclose(unit, full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True), rtol=1e-5)
    assert encoder.truncate(None).embedding_dim == 32


def test_kept_layers_are_the_full_models_hidden_states_at_that_depth():
    encoder = matryoshka_trained("mean")
    tokens = batch_for(build_objective("cosent", encoder), encoder)["sent0"]
    with torch.no_grad():
        hidden = encoder.backbone(**tokens, output_hidden_states=True).hidden_states[1]  # (B, T, H)
        mask = tokens["attention_mask"].unsqueeze(-1).float()
        expected = (hidden * mask).sum(1) / mask.sum(1)  # (B, H)
        torch.testing.assert_close(encoder.keep_layers(1)(**tokens), expected, rtol=1e-5, atol=1e-6)
    assert encoder.num_layers == 1 and len(encoder.backbone.encoder.layer) == 1


@pytest.mark.parametrize(("change", "message"), [
    (lambda encoder: encoder.truncate(0), r"dim 0 is outside 1\.\.32"),
    (lambda encoder: encoder.truncate(-4), r"dim -4 is outside 1\.\.32"),
    (lambda encoder: encoder.truncate(33), r"dim 33 is outside 1\.\.32"),
    (lambda encoder: encoder.keep_layers(4), r"layers 4 is outside 1\.\.3"),
    (lambda encoder: encoder.keep_layers(0), r"layers 0 is outside 1\.\.3"),
])  # fmt: skip
def test_bad_sizes_are_one_line_errors_naming_the_range(change, message):
    with pytest.raises(CsekitError, match=message):
        change(make_tiny_encoder(num_hidden_layers=3))


@pytest.mark.parametrize("pooler", ["cls_before_pooler", "mean", "cls"])
def test_a_matryoshka_model_saved_small_loads_alike_in_csekit_and_stock_sentence_transformers(tmp_path, pooler):
    encoder = matryoshka_trained(pooler).truncate(16).keep_layers(2)
    expected = encoder.encode(TEXTS)
    encoder.save(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "config_sentence_transformers.json").read_text())["truncate_dim"] == 16
    assert json.loads((tmp_path / "model" / "config.json").read_text())["num_hidden_layers"] == 2
    saved = json.loads((tmp_path / "model" / "csekit_config.json").read_text())
    assert (saved["truncate_dim"], saved["num_layers"]) == (16, 2)
    loaded = load_encoder(tmp_path / "model")
    assert (loaded.truncate_dim, loaded.num_layers) == (16, 2)
    np.testing.assert_allclose(loaded.encode(TEXTS), expected, atol=1e-6)
    by_st = SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(TEXTS)
    assert by_st.shape == (len(TEXTS), 16) and np.abs(by_st - expected).max() < 1e-5
    # A prefix asked for at load time replaces the saved one; the full width is no prefix of the cut model's.
    np.testing.assert_allclose(load_encoder(tmp_path / "model", truncate_dim=8).encode(TEXTS), expected[:, :8], atol=1e-6)
    with pytest.raises(CsekitError, match=r"dim 64 is outside 1\.\.32"):
        load_encoder(tmp_path / "model", truncate_dim=64)


def test_a_normalising_model_saved_truncated_matches_sentence_transformers_normalised_rows(tmp_path):
    """sentence-transformers truncates after its Normalize module; encode(normalize_embeddings=True) renormalises,
    as csekit does."""
    encoder = matryoshka_trained("mean").truncate(8)
    encoder.normalize = True
    encoder.save(tmp_path / "model")
    by_st = SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(TEXTS, normalize_embeddings=True)
    assert np.abs(by_st - load_encoder(tmp_path / "model").encode(TEXTS)).max() < 1e-5


def test_a_truncation_saved_by_sentence_transformers_is_read(tmp_path):
    matryoshka_trained("mean").save(tmp_path / "model")
    SentenceTransformer(str(tmp_path / "model"), device="cpu", truncate_dim=8).save(str(tmp_path / "by-st"))
    assert load_encoder(tmp_path / "by-st").embedding_dim == 8


def test_load_encoder_cuts_layers_of_a_full_model(tmp_path):
    encoder = matryoshka_trained("mean")
    encoder.save(tmp_path / "model")
    shallow = load_encoder(tmp_path / "model", layers=1, truncate_dim=16)
    np.testing.assert_allclose(shallow.encode(TEXTS), encoder.keep_layers(1).encode(TEXTS)[:, :16], atol=1e-6)
    with pytest.raises(CsekitError, match=r"layers 5 is outside 1\.\.3"):
        load_encoder(tmp_path / "model", layers=5)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("depth") / "model"
    matryoshka_trained("mean").save(folder)
    return str(folder)


def test_eval_dims_prints_sts_against_width_from_one_encoding_pass(saved_model, data_dir, tmp_path, capsys, monkeypatch):
    from csekit.models.encoder import SentenceEncoder

    passes = []
    encode = SentenceEncoder.encode
    monkeypatch.setattr(SentenceEncoder, "encode", lambda self, texts, **kw: passes.append(len(texts)) or encode(self, texts, **kw))
    out = tmp_path / "dims.json"
    assert main(["eval", saved_model, "--tasks", "stsb,sickr", "--mode", "dev", "--data-dir", str(data_dir),
                 "--dims", "all,16,8", "--layers", "2", "--json", str(out)]) == 0  # fmt: skip
    assert len(passes) == 1
    printed = capsys.readouterr().out
    rows = [line.split() for line in printed.splitlines() if line.strip()[:2] in ("32", "16", "8 ")]
    assert [row[0] for row in rows] == ["32", "16", "8"]
    record = json.loads(out.read_text())
    assert record["layers"] == 2 and list(record["dims"]) == ["32", "16", "8"]
    # Each row is what evaluating that prefix alone gives.
    assert main(["eval", saved_model, "--tasks", "stsb,sickr", "--mode", "dev", "--data-dir", str(data_dir),
                 "--dim", "16", "--layers", "2", "--json", str(tmp_path / "one.json")]) == 0  # fmt: skip
    alone = json.loads((tmp_path / "one.json").read_text())["results"]
    assert alone["sts"]["avg"] == pytest.approx(record["dims"]["16"]["sts"]["avg"], abs=1e-9)


@pytest.mark.parametrize(("options", "message"), [
    (["--dim", "0"], r"dim 0 is outside 1\.\.32"),
    (["--dim", "64"], r"dim 64 is outside 1\.\.32"),
    (["--dims", "all,40"], r"--dims: 40 is outside 1\.\.32"),
    (["--dims", "all,half"], "--dims: 'half' is not a width"),
    (["--layers", "7"], r"layers 7 is outside 1\.\.3"),
    (["--dim", "8", "--dims", "all"], "not both"),
])  # fmt: skip
def test_eval_size_mistakes_are_one_line_errors(saved_model, data_dir, capsys, options, message):
    assert main(["eval", saved_model, "--tasks", "stsb", "--mode", "dev", "--data-dir", str(data_dir), *options]) == 2
    error = capsys.readouterr().err.strip()
    assert re.search(message, error) and len(error.splitlines()) == 1
