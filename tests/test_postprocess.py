"""Training-free post-processing: whitening against a naive reference, layer combinations, Ditto against a
per-sentence loop, save/load round trips (csekit and stock sentence-transformers), and the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SENTENCES, make_tiny_encoder
from sentence_transformers import SentenceTransformer

from csekit import CsekitError, load_encoder
from csekit.cli.main import main
from csekit.postprocess import (
    DittoPooler,
    LayerMeanPooler,
    fit_whitening,
    use_layers,
    whiten,
    whitening_layer,
)

TEXTS = [
    "a man is playing a guitar .",
    "hi",
    "the quick brown fox jumps over the lazy dog while a cat watches from the window .",
    "two dogs run",
]
LAYERS = 3  # hidden states 0..3: first, second-last and last are all different tensors
FIT = [f"{sentence} {i}" for i, sentence in enumerate(SENTENCES * 2)]  # 96 distinct sentences > 32 dimensions


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


def _module_kinds(folder) -> list[str]:
    return [m["type"].rsplit(".", 1)[-1] for m in json.loads((folder / "modules.json").read_text(encoding="utf-8"))]


def _correlated_table(n: int = 300, hidden: int = 6, seed: int = 0) -> np.ndarray:
    generator = np.random.default_rng(seed)
    mixing = generator.normal(size=(hidden, hidden)) * np.linspace(3.0, 0.2, hidden)  # anisotropic, correlated
    return (generator.normal(size=(n, hidden)) @ mixing + generator.normal(size=hidden) * 5).astype(np.float32)


# ------------------------------------------------------------------------------- whitening math
def _naive_whitening(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """mu and Sigma by loops, W from an eigendecomposition (not the SVD the code uses), k largest first."""
    x = x.astype(np.float64)
    n = x.shape[0]
    mu = sum(x[i] for i in range(n)) / n
    sigma = sum(np.outer(x[i] - mu, x[i] - mu) for i in range(n)) / (n - 1)
    values, vectors = np.linalg.eigh(sigma)  # ascending
    order = np.argsort(values)[::-1][:k]
    return mu, vectors[:, order] / np.sqrt(values[order])


@pytest.mark.parametrize("k", [6, 3])
def test_fit_whitening_matches_naive_reference(k):
    x = _correlated_table()
    mu, kernel = fit_whitening(x, dim=k)
    ref_mu, ref_kernel = _naive_whitening(x, k)
    assert kernel.shape == (6, k)
    np.testing.assert_allclose(mu, ref_mu, rtol=1e-9, atol=1e-9)
    # Eigenvectors are defined up to sign: compare W W^T, which is sign-free (Sigma^-1 when k = H).
    np.testing.assert_allclose(kernel @ kernel.T, ref_kernel @ ref_kernel.T, rtol=1e-7, atol=1e-9)
    whitened = (x - mu) @ kernel  # (N, k)
    np.testing.assert_allclose(whitened.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(k), atol=1e-9)
    if k < 6:  # the k kept directions are those of largest variance: they match the full fit's first k
        _, full = fit_whitening(x)
        np.testing.assert_allclose(np.abs(kernel), np.abs(full[:, :k]), rtol=1e-7, atol=1e-9)


def test_whitening_layer_computes_the_affine_map():
    x = _correlated_table()
    mu, kernel = fit_whitening(x, dim=4)
    layer = whitening_layer(mu, kernel)
    assert not any(p.requires_grad for p in layer.parameters())
    by_layer = layer(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(by_layer, (x - mu) @ kernel, rtol=1e-4, atol=1e-4)


def test_fit_whitening_refuses_too_few_or_degenerate_sentences():
    x = _correlated_table(n=5)
    with pytest.raises(CsekitError, match="more than 6 sentences"):
        fit_whitening(x)
    with pytest.raises(CsekitError, match="outside 1..6"):
        fit_whitening(x, dim=7)
    flat = np.repeat(_correlated_table(n=50)[:, :2], 3, axis=1)  # 6 columns spanning 2 directions
    with pytest.raises(CsekitError, match="only 2 of 6 directions"):
        fit_whitening(flat, dim=3)
    assert fit_whitening(flat, dim=2)[1].shape == (6, 2)


# ------------------------------------------------------------------------------- whitened encoders
# Without a dimension, whitening keeps every direction that varies: the mean of one layer's LayerNorm
# outputs lies in a hyperplane (31 of 32 directions). The random tanh head of ``cls`` saturates (its mean is
# ~800 standard deviations from the origin) and the random [CLS] state has near-null directions, so only their
# largest directions whiten to float32 precision (an affine map in float32 loses x.eps/sigma to cancellation).
@pytest.mark.parametrize(("pooler", "dim", "normalize", "width"), [
    ("mean", None, False, 31), ("cls_before_pooler", 16, True, 16), ("first_last_avg", 8, True, 8),
    ("cls", 4, True, 4),
])  # fmt: skip
def test_whitened_encoder_round_trips_through_sentence_transformers(tmp_path, pooler, dim, normalize, width):
    encoder = make_tiny_encoder(pooler, num_hidden_layers=LAYERS)
    encoder.normalize = normalize
    whiten(encoder, FIT, dim=dim)
    assert encoder.embedding_dim == width
    # The whitened fitting set has identity covariance, through the whole encode path.
    fitted = encoder.encode(FIT, normalize=False)
    np.testing.assert_allclose(np.cov(fitted.astype(np.float64), rowvar=False), np.eye(width), atol=1e-3)

    expected = encoder.encode(TEXTS)
    folder = tmp_path / "whitened"
    encoder.save(folder)
    kinds = _module_kinds(folder)
    assert kinds[-2 if normalize else -1] == "Dense"  # the whitening sits right before Normalize
    dense = json.loads((folder / f"{len(kinds) - (2 if normalize else 1)}_Dense" / "config.json").read_text())
    assert dense["activation_function"].endswith("Identity") and dense["out_features"] == width

    by_st = SentenceTransformer(str(folder), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert _max_diff(by_st, expected) < 1e-5
    reloaded = load_encoder(folder)
    assert reloaded.pooler.name == pooler and reloaded.embedding_dim == width and reloaded.normalize == normalize
    assert _max_diff(reloaded.encode(TEXTS), expected) < 1e-5


def test_whitening_again_replaces_the_first_fit():
    encoder = make_tiny_encoder("mean")
    once = whiten(encoder, FIT, dim=8).encode(TEXTS)
    twice = whiten(whiten(encoder, FIT[:60], dim=4), FIT, dim=8).encode(TEXTS)
    assert _max_diff(once, twice) < 1e-5


def test_pooler_override_of_a_whitened_folder_is_refused(tmp_path):
    encoder = whiten(make_tiny_encoder("mean"), FIT)
    encoder.save(tmp_path / "whitened")
    with pytest.raises(CsekitError, match="fitted after the mean pooler"):
        load_encoder(tmp_path / "whitened", pooler="max")


# ------------------------------------------------------------------------------- layer combinations
def test_layers_map_onto_existing_poolers():
    for spec, name in [("1,3", "first_last_avg"), ("2,3", "last2avg"), ("3", "mean"), ("3,1", "first_last_avg")]:
        encoder = use_layers(make_tiny_encoder("cls", num_hidden_layers=LAYERS), spec)
        assert (encoder.pooler.name, type(encoder.pooler).__module__, encoder.head) == (name, "csekit.models.pooling", None)
    encoder = use_layers(make_tiny_encoder("mean", num_hidden_layers=LAYERS), "0,3")
    assert encoder.pooler.name == "layer_mean" and encoder.pooler.layers == (0, 3)


def test_layer_mean_matches_naive_loop_and_round_trips(tmp_path):
    encoder = use_layers(make_tiny_encoder("mean", num_hidden_layers=LAYERS), "0,2").eval()  # no dropout
    batch = encoder.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        states = encoder.backbone(**batch, output_hidden_states=True).hidden_states
        pooled = encoder(**batch).double()
    for i in range(len(TEXTS)):
        real = [t for t in range(batch["attention_mask"].shape[1]) if batch["attention_mask"][i, t]]
        naive = sum((states[0][i, t].double() + states[2][i, t].double()) / 2 for t in real) / len(real)
        torch.testing.assert_close(pooled[i], naive, rtol=1e-5, atol=1e-6)

    whiten(encoder, FIT, dim=12)
    expected = encoder.encode(TEXTS)
    encoder.save(tmp_path / "layers")
    assert _module_kinds(tmp_path / "layers")[:3] == ["Transformer", "WeightedLayerPooling", "Pooling"]
    by_st = SentenceTransformer(str(tmp_path / "layers"), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert _max_diff(by_st, expected) < 1e-5
    reloaded = load_encoder(tmp_path / "layers")
    assert isinstance(reloaded.pooler, LayerMeanPooler) and reloaded.pooler.layers == (0, 2)
    assert _max_diff(reloaded.encode(TEXTS), expected) < 1e-5


# ------------------------------------------------------------------------------- Ditto
@pytest.mark.parametrize(("layer", "head", "layers"), [(0, 1, (0, LAYERS)), (2, 0, (LAYERS,))])
def test_ditto_matches_naive_per_sentence_computation(layer, head, layers):
    encoder = make_tiny_encoder("mean", num_hidden_layers=LAYERS).eval()  # no dropout in the naive runs
    encoder.set_pooler(DittoPooler(layer=layer, head=head, layers=layers))
    assert encoder.backbone.config._attn_implementation == "eager"
    batched = encoder.encode(TEXTS)  # length-sorted and padded batches
    for i, text in enumerate(TEXTS):
        alone = encoder.tokenizer([text], return_tensors="pt")  # no padding at all
        with torch.no_grad():
            out = encoder.backbone(**alone, output_attentions=True, output_hidden_states=True)
        attention = out.attentions[layer][0, head]  # (T, T)
        naive = torch.zeros(32, dtype=torch.float64)
        for t in range(attention.shape[0]):
            state = sum(out.hidden_states[j][0, t].double() for j in layers) / len(layers)
            naive += attention[t, t].double() * state
        np.testing.assert_allclose(batched[i], naive.numpy(), rtol=1e-5, atol=1e-6)


def test_ditto_round_trips_in_csekit_and_sentence_transformers(tmp_path):
    encoder = make_tiny_encoder("cls", num_hidden_layers=LAYERS)
    encoder.set_pooler(DittoPooler(layer=1, head=1, layers=(0, LAYERS)))
    assert encoder.head is None and encoder.pooler.name == "ditto"
    expected = encoder.encode(TEXTS)
    folder = tmp_path / "ditto"
    encoder.save(folder)
    saved = json.loads((folder / "csekit_config.json").read_text(encoding="utf-8"))
    assert saved["pooler"] == {"name": "ditto", "layer": 1, "head": 1, "layers": [0, LAYERS]}

    reloaded = load_encoder(folder)
    assert reloaded.pooler.name == "ditto" and reloaded.pooler.config() == {"layer": 1, "head": 1, "layers": [0, LAYERS]}
    assert _max_diff(reloaded.encode(TEXTS), expected) < 1e-6
    # No stock module passes attention weights on: the folder names csekit's input module, which
    # sentence-transformers imports once trusted, never loading something else (mean pooling) instead.
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(folder), device="cpu")
    by_st = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True).encode(TEXTS, convert_to_numpy=True)
    assert _max_diff(by_st, expected) < 1e-5
    # A pooler override loads the backbone with that pooler instead.
    assert load_encoder(folder, pooler="mean").pooler.name == "mean"


def test_ditto_then_whitening_round_trips(tmp_path):
    encoder = make_tiny_encoder("mean").set_pooler(DittoPooler(layer=0, head=1, layers=(0, 2)))
    whiten(encoder, FIT, dim=10)
    expected = encoder.encode(TEXTS)
    encoder.save(tmp_path / "both")
    reloaded = load_encoder(tmp_path / "both")
    assert reloaded.pooler.name == "ditto" and reloaded.embedding_dim == 10
    by_st = SentenceTransformer(str(tmp_path / "both"), device="cpu", trust_remote_code=True).encode(TEXTS)
    assert _max_diff(by_st, expected) < 1e-5
    assert _max_diff(reloaded.encode(TEXTS), expected) < 1e-5


def test_ditto_refuses_layers_and_heads_the_model_lacks():
    with pytest.raises(CsekitError, match="head 2 out of range: this model's heads are 0..1"):
        make_tiny_encoder("mean").set_pooler(DittoPooler(layer=0, head=2, layers=(0, 2)))
    with pytest.raises(CsekitError, match="layer 2 out of range"):
        make_tiny_encoder("mean").set_pooler(DittoPooler(layer=2, head=0, layers=(0, 2)))
    with pytest.raises(CsekitError, match="layer\\(s\\) 3 out of range"):
        make_tiny_encoder("mean").set_pooler(DittoPooler(layer=0, head=0, layers=(0, 3)))


# ------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("postprocess") / "tiny"
    make_tiny_encoder("mean").save(folder)
    return str(folder)


@pytest.fixture
def fit_file(tmp_path):
    path = tmp_path / "unlabelled.txt"
    path.write_text("\n".join(FIT) + "\n", encoding="utf-8")
    return str(path)


def test_cli_whitening_end_to_end(tiny_model, fit_file, tmp_path, data_dir, capsys):
    out = tmp_path / "whitened"
    code = main(["postprocess", tiny_model, "--method", "whitening", "--fit-on", fit_file, "--output", str(out),
                 "--dim", "16", "--layers", "0,2", "--max-sentences", "80"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "fitted on 80 sentences" in printed and "pooler layer_mean, 32 -> 16 dimensions" in printed
    reloaded = load_encoder(out)
    assert reloaded.embedding_dim == 16 and reloaded.pooler.layers == (0, 2)
    by_st = SentenceTransformer(str(out), device="cpu").encode(TEXTS, convert_to_numpy=True)
    assert _max_diff(by_st, reloaded.encode(TEXTS)) < 1e-5
    assert main(["eval", str(out), "--tasks", "sts13", "--data-dir", str(data_dir)]) == 0
    assert "pooler layer_mean" in capsys.readouterr().out


def test_cli_ditto_end_to_end(tiny_model, tmp_path, capsys):
    out = tmp_path / "ditto"
    assert main(["postprocess", tiny_model, "--method", "ditto", "--layer", "1", "--head", "0",
                 "--output", str(out)]) == 0  # fmt: skip
    assert "ditto: attention layer 1 head 0, hidden states 0,2" in capsys.readouterr().out
    reloaded = load_encoder(out)
    assert reloaded.pooler.name == "ditto" and reloaded.pooler.config() == {"layer": 1, "head": 0, "layers": [0, 2]}


def _one_line_error(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.err.startswith("csekit: error:")
    assert captured.err.count("\n") == 1, captured.err
    return captured.err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "whitening", "--fit-on", "EMPTY"], "no sentences to fit on"),
        (["--method", "whitening", "--fit-on", "FIT", "--dim", "33"], "whitening dimension 33 is outside 1..32"),
        (["--method", "whitening", "--fit-on", "FIT", "--max-sentences", "20"], "needs more than 32 sentences"),
        (["--method", "whitening", "--fit-on", "FIT", "--layers", "0,7"], "layer(s) 7 out of range"),
        (["--method", "whitening"], "whitening needs --fit-on"),
        (["--method", "ditto", "--head", "2"], "head 2 out of range: this model's heads are 0..1"),
        (["--method", "ditto", "--head", "9"], "head 9 out of range"),  # the BERT-base default, on 2 heads
        (["--method", "ditto", "--head", "0", "--fit-on", "FIT"], "--fit-on is a whitening option"),
        (["--method", "whitening", "--fit-on", "FIT", "--head", "1"], "--head is a ditto option"),
    ],
)
def test_cli_bad_input_is_one_line(tiny_model, fit_file, tmp_path, capsys, extra, message):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    extra = [{"EMPTY": str(empty), "FIT": fit_file}.get(arg, arg) for arg in extra]
    assert main(["postprocess", tiny_model, *extra, "--output", str(tmp_path / "out")]) == 2
    assert message in _one_line_error(capsys)
    assert not (tmp_path / "out").exists()


def test_token_poolers_drop_a_prompt_template():
    for switch in (lambda e: use_layers(e, "0,2"), lambda e: e.set_pooler(DittoPooler(layer=0, head=0, layers=(2,)))):
        encoder = switch(make_tiny_encoder("mask"))
        assert not hasattr(encoder.pooler, "prompt")
        plain = make_tiny_encoder("mean").eval()
        assert encoder.tokenize(TEXTS) == plain.tokenize(TEXTS)  # sentences no longer wrapped in the template
