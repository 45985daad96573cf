"""The static model: a mean of token rows, saved as a sentence-transformers StaticEmbedding folder that stock
sentence-transformers and every csekit command load with the same embeddings."""

from __future__ import annotations

import json

import numpy as np
import openai
import pytest
import torch
from conftest import SENTENCES, tiny_tokenizer, write_recipe
from sentence_transformers import SentenceTransformer
from test_serve import running
from transformers import AutoTokenizer

from csekit import load_encoder
from csekit.cli.main import main
from csekit.errors import CsekitError
from csekit.inference.store import read_embeddings
from csekit.models.static import StaticEncoder
from csekit.serve.app import create_app
from csekit.static.vocabulary import static_tokenizer

LONG = " ".join(["a very long sentence that goes on"] * 40)  # ~280 tokens: past MiniLM's saved truncation (128)
TEXTS = [*SENTENCES[:6], "", "Hello, World!!", "UNSEEN wordpieces: zyxwvut.", "[CLS] literal [SEP]", LONG]


def random_static(tokenizer=None, *, dim: int = 12, normalize: bool = True) -> StaticEncoder:
    tokenizer = tokenizer or tiny_tokenizer()
    rows = len(tokenizer.backend_tokenizer.get_vocab(with_added_tokens=True))
    weights = torch.randn(rows, dim, generator=torch.Generator().manual_seed(0))
    return StaticEncoder(static_tokenizer(tokenizer), weights, normalize=normalize)


def naive_mean(model: StaticEncoder, text: str, *, normalize: bool) -> np.ndarray:
    """One text at a time, a Python mean over its token ids."""
    ids = model.tokenizer.encode(text, add_special_tokens=False).ids
    table = model.embedding.weight.detach().numpy()
    vector = np.mean([table[i] for i in ids], axis=0) if ids else np.zeros(table.shape[1], dtype=np.float32)
    norm = np.linalg.norm(vector)
    return vector / max(norm, 1e-12) if normalize else vector


@pytest.mark.parametrize("normalize", [True, False])
def test_encode_is_the_mean_of_each_texts_token_rows(normalize):
    model = random_static(normalize=normalize)
    expected = np.stack([naive_mean(model, text, normalize=normalize) for text in TEXTS])
    assert np.abs(model.encode(TEXTS, batch_size=3) - expected).max() < 1e-6
    assert model.encode([]).shape == model.embed_tokens([]).shape == (0, 12)


def test_special_tokens_are_never_added_and_only_pad_and_unk_stay_special():
    tokenizer = tiny_tokenizer()
    model = random_static(tokenizer)
    ids = model.tokenizer.encode("[CLS] literal [SEP] [MASK]").ids
    assert tokenizer.cls_token_id not in ids and tokenizer.sep_token_id not in ids and tokenizer.mask_token_id not in ids
    assert model.tokenizer.encode("[UNK]").ids == [tokenizer.unk_token_id]


@pytest.fixture(params=["tiny", "minilm"])
def saved(request, tmp_path):
    """A random static model over the tiny tokenizer, and over MiniLM's (whose tokenizer.json truncates at 128)."""
    tokenizer = tiny_tokenizer() if request.param == "tiny" else AutoTokenizer.from_pretrained(request.getfixturevalue("minilm"))
    folder = tmp_path / "static"
    random_static(tokenizer).save(folder)
    return folder


def test_sentence_transformers_loads_the_folder_with_csekits_embeddings(saved):
    kinds = [entry["type"].rsplit(".", 1)[-1] for entry in json.loads((saved / "modules.json").read_text())]
    assert kinds == ["StaticEmbedding", "Normalize"]
    theirs = SentenceTransformer(str(saved), device="cpu").encode(TEXTS, batch_size=4)
    ours = load_encoder(saved).encode(TEXTS)
    assert ours.shape == (len(TEXTS), 12) and np.abs(theirs - ours).max() < 1e-5
    assert abs(np.linalg.norm(ours[0]) - 1) < 1e-5


def test_a_folder_sentence_transformers_wrote_loads_in_csekit(tmp_path):
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding

    tokenizer = static_tokenizer(tiny_tokenizer())
    theirs = SentenceTransformer(modules=[StaticEmbedding(tokenizer, embedding_dim=8), Normalize()], device="cpu")
    theirs.save(str(tmp_path / "st"))
    assert np.abs(load_encoder(tmp_path / "st").encode(TEXTS) - theirs.encode(TEXTS)).max() < 1e-5


def test_bad_static_folders_and_options_are_one_line_errors(tmp_path):
    folder = tmp_path / "static"
    random_static().save(folder)
    with pytest.raises(CsekitError, match="no pooler to choose"):
        load_encoder(folder, pooler="mean")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CsekitError, match=r"needs tokenizer\.json"):
        load_encoder(folder)
    with pytest.raises(CsekitError, match="has no row for each"):
        StaticEncoder(static_tokenizer(tiny_tokenizer()), torch.zeros(10, 4))


def test_encode_index_search_and_eval_commands_take_a_static_model(tmp_path, data_dir, capsys):
    folder = tmp_path / "static"
    random_static().save(folder)
    (tmp_path / "in.txt").write_text("\n".join(TEXTS[:6]) + "\n", encoding="utf-8")
    assert main(["encode", str(folder), str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.npy")]) == 0
    encoded = read_embeddings(tmp_path / "out.npy")
    assert np.abs(np.asarray(encoded.vectors) - load_encoder(folder).encode(TEXTS[:6])).max() < 1e-6
    assert main(["index", str(tmp_path / "out.npy"), "--output", str(tmp_path / "index")]) == 0
    capsys.readouterr()
    assert main(["search", str(tmp_path / "index"), TEXTS[2], "-k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["id"] == encoded.ids[2]
    assert main(["eval", str(folder), "--tasks", "stsb", "--data-dir", str(data_dir)]) == 0
    assert "pooler static" in capsys.readouterr().out


def test_the_server_embeds_as_encode_does(tmp_path):
    folder = tmp_path / "static"
    random_static().save(folder)
    model = load_encoder(folder)
    texts = [text for text in TEXTS if text]  # the server refuses empty inputs
    with running(create_app(load_encoder(folder), model_name="static")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        response = client.embeddings.create(model="static", input=texts, encoding_format="float")
    served = np.array([item.embedding for item in response.data], dtype=np.float32)
    assert np.abs(served - model.encode(texts)).max() < 1e-5


def test_commands_that_need_a_transformer_refuse_a_static_model(tmp_path, capsys):
    folder = tmp_path / "static"
    random_static().save(folder)
    commands = [["postprocess", str(folder), "--method", "ditto", "--output", str(tmp_path / "p")],
                ["distill-static", "--teacher", str(folder), "--method", "model2vec", "--output", str(tmp_path / "d")],
                ["train", str(write_recipe(tmp_path, folder, max_steps=1, output_dir=str(tmp_path / "run")))]]  # fmt: skip
    for command in commands:
        assert main(command) == 2
        error = capsys.readouterr().err
        assert "is a static embedding model (a table of token vectors, no transformer)" in error and error.count("\n") == 1
    assert not (tmp_path / "p").exists() and not (tmp_path / "d").exists()
