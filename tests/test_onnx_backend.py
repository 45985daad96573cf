"""The ONNX backend (csekit.inference.onnx_backend) computes what SentenceEncoder.embed_tokens computes.

Every exportable pooler is exported once per session from a tiny random encoder and checked against
PyTorch within 1e-5, raw and normalised, in one padded batch and one row alone; the host-side checks,
the refusals and the export cache are checked on those exports.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import make_tiny_encoder, make_tiny_encoder_with

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from csekit.errors import CsekitError
from csekit.inference import onnx_backend
from csekit.inference.onnx_backend import (
    EXPORTABLE_POOLERS,
    OnnxEncoder,
    export_onnx,
    fingerprint,
    onnx_encoder,
)
from csekit.models import AffineMap, MLPHead, Pooler

TEXTS = ["a man is playing a guitar .", "hi", "", "two dogs run across a field of grass",
         "the quick brown fox jumps over the lazy dog while a cat watches from the window [MASK] ."]  # fmt: skip
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Pooler name -> (encoder, its export folder), each exported the first time a test asks."""
    made: dict = {}
    root = tmp_path_factory.mktemp("onnx")

    def get(name: str):
        if name not in made:
            encoder = make_tiny_encoder_with(name)
            made[name] = (encoder, export_onnx(encoder, root / name))
        return made[name]

    return get


def _max_diff(first: np.ndarray, second: np.ndarray) -> float:
    assert first.shape == second.shape and first.dtype == second.dtype == np.float32
    return float(np.abs(first - second).max())


def assert_same_embeddings(encoder, exported: OnnxEncoder) -> None:
    """Raw rows within TOLERANCE, in one padded batch and one row alone; normalised rows too, at unit scale.

    Normalising divides a row by its norm, so a raw difference d becomes d / norm: rows shorter than 1 are
    compared scaled back to their length (mask_denoised on a random tiny encoder leaves rows ~0.01 long, the
    [MASK] state minus an almost equal template state, and the empty sentence's row ~0).
    """
    rows = encoder.inference_tokens(TEXTS)
    raw = encoder.embed_tokens(rows, normalize=False)  # (N, H)
    scale = np.minimum(1.0, np.linalg.norm(raw, axis=1, keepdims=True))  # (N, 1)
    for batch in (rows, rows[:1]):
        expected = encoder.embed_tokens(batch, normalize=False)
        assert _max_diff(exported.embed_tokens(batch, normalize=False), expected) < TOLERANCE
        normalized = exported.embed_tokens(batch, normalize=True) - encoder.embed_tokens(batch, normalize=True)
        assert float(np.abs(normalized * scale[: len(batch)]).max()) < TOLERANCE


@pytest.mark.parametrize("name", EXPORTABLE_POOLERS)
def test_export_matches_pytorch_for_every_exportable_pooler(exports, name):
    encoder, folder = exports(name)
    exported = OnnxEncoder(folder, threads=1)
    assert exported.embedding_dim == encoder.embedding_dim
    assert_same_embeddings(encoder, exported)


@pytest.mark.parametrize("name", ["mean", "mask_denoised"])
def test_output_modules_and_normalize_are_part_of_the_export(tmp_path, name):
    encoder = make_tiny_encoder_with(name)
    torch.manual_seed(1)
    whitening = AffineMap(32, 8)
    torch.nn.init.normal_(whitening.weight)
    encoder.set_outputs([whitening])
    encoder.normalize = True
    exported = OnnxEncoder(export_onnx(encoder, tmp_path / "model"), threads=1)
    assert exported.normalize and exported.embedding_dim == 8
    assert_same_embeddings(encoder, exported)
    rows = encoder.inference_tokens(TEXTS)
    assert _max_diff(exported.embed_tokens(rows), encoder.embed_tokens(rows)) < TOLERANCE  # the default: normalized


def test_a_training_only_head_is_left_out_even_when_exported_in_training_mode(tmp_path):
    encoder = make_tiny_encoder("cls")
    encoder.set_head(MLPHead(32).reset_parameters(0.5), at_inference=False)
    encoder.train()
    exported = OnnxEncoder(export_onnx(encoder, tmp_path / "model"), threads=1)
    assert encoder.training  # the export puts the mode back
    assert_same_embeddings(encoder, exported)  # embed_tokens runs in eval mode: the [CLS] state, no head


def test_rows_the_graph_would_misread_are_refused(exports):
    encoder, folder = exports("mask")
    exported = OnnxEncoder(folder, threads=1)
    plain = make_tiny_encoder("mean").inference_tokens(["no prompt around this sentence"])
    with pytest.raises(CsekitError, match="one \\[MASK\\] each"):
        exported.embed_tokens(plain)
    too_long = [{key: [value[0]] * 200 for key, value in plain[0].items()}]
    with pytest.raises(CsekitError, match="longer than the model's 128 positions"):
        exported.embed_tokens(too_long)
    assert exported.embed_tokens([]).shape == (0, encoder.embedding_dim)


def test_an_unregistered_pooler_is_refused_before_any_export(tmp_path):
    class Last(Pooler):
        name = "last_token"

        def forward(self, outputs, inputs, backbone):
            return outputs.last_hidden_state[:, -1]

    encoder = make_tiny_encoder("mean").set_pooler(Last())
    with pytest.raises(CsekitError, match="pooler 'last_token' has no ONNX export"):
        export_onnx(encoder, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_the_cache_exports_once_per_fingerprint(exports, tmp_path, monkeypatch):
    encoder, folder = exports("mean")
    twin = make_tiny_encoder_with("mean")  # the same seed: the same weights
    assert fingerprint(twin) == fingerprint(encoder)
    shutil.copytree(folder, tmp_path / fingerprint(encoder))

    def no_export(*args, **kwargs):
        raise AssertionError("exported again")

    monkeypatch.setattr(onnx_backend, "export_onnx", no_export)
    twin.normalize = True  # applied on the host: the same export serves
    cached = onnx_encoder(twin, cache_dir=tmp_path, threads=1)
    assert cached.normalize and cached.folder == tmp_path / fingerprint(encoder)
    assert_same_embeddings(twin, cached)
    with torch.no_grad():
        twin.backbone.embeddings.word_embeddings.weight[5, 0] += 1.0
    assert fingerprint(twin) != fingerprint(encoder)
    assert fingerprint(make_tiny_encoder_with("max")) != fingerprint(encoder)


def test_a_folder_that_is_no_export_is_refused(tmp_path):
    with pytest.raises(CsekitError, match="is not an ONNX export of csekit"):
        OnnxEncoder(tmp_path)
