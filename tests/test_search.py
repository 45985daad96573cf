"""FAISS indexes over encode's files: exact search equals a numpy reference, approximate kinds find most of
the exact neighbours, saved indexes answer the same, and a query model other than the corpus's is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_encoder

from csekit.cli.main import main
from csekit.errors import CsekitError
from csekit.inference.store import read_embeddings
from csekit.models import load_encoder
from csekit.search import build_index, load_index

pytest.importorskip("faiss")

WORDS = "red blue green small large quick slow happy sad bright dark warm cold soft loud quiet".split()
TEXTS = [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(2 + i % 9)) + f" {i}" for i in range(2000)]
QUERIES = ["red green quick", "dark cold quiet soft", "happy bright warm loud 7"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny normalised model and its 2000-text corpus encoded to float32."""
    folder = tmp_path_factory.mktemp("search")
    make_tiny_encoder("mean").save(folder / "tiny")
    (folder / "corpus.txt").write_text("\n".join(TEXTS) + "\n")
    assert main(["encode", str(folder / "tiny"), str(folder / "corpus.txt"), "--output", str(folder / "corpus.npy"),
                 "--normalize"]) == 0  # fmt: skip
    return folder / "tiny", folder / "corpus.npy"


def _exact(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]  # (Q, k)


def test_flat_search_equals_a_numpy_reference_and_queries_embed_like_the_corpus(corpus):
    model, embeddings_file = corpus
    embeddings, encoder = read_embeddings(embeddings_file), load_encoder(model)
    index = build_index(embeddings, "flat")
    # A corpus text as a query finds itself first: queries are embedded as the corpus was.
    hits = index.query(encoder, [TEXTS[5], TEXTS[1234]], k=3)
    assert [found[0][0] for found in hits] == ["6", "1235"] and hits[0][0][1] == pytest.approx(1.0, abs=1e-5)
    queries = index.embed_queries(encoder, QUERIES)
    found = index.search(queries, 10)
    reference = _exact(embeddings.floats(), queries, 10)
    assert [[id_ for id_, _ in row] for row in found] == [[embeddings.ids[i] for i in row] for row in reference]
    scores = np.array([[score for _, score in row] for row in found])
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ embeddings.floats().T, reference, 1), atol=1e-5)


@pytest.mark.parametrize(("kind", "settings", "least_recall"), [
    ("hnsw", {"m": 16}, 0.95),
    ("ivfpq", {"nlist": 16, "nprobe": 8, "pq_m": 32, "nbits": 5}, 0.6),  # tiny vectors lie close: fine codes
])  # fmt: skip
def test_approximate_kinds_find_most_exact_neighbours_and_reload_the_same(corpus, tmp_path, kind, settings, least_recall):
    embeddings_file = corpus[1]
    embeddings = read_embeddings(embeddings_file)
    queries = embeddings.floats()[::40]  # (50, D)
    exact = build_index(embeddings, "flat").search(queries, 10)
    index = build_index(embeddings, kind, **settings)
    found = index.search(queries, 10)
    recall = np.mean([len({i for i, _ in a} & {i for i, _ in b}) / 10 for a, b in zip(found, exact)])
    assert recall >= least_recall, recall
    index.save(tmp_path / "index")
    assert load_index(tmp_path / "index").search(queries, 10) == found


def test_binary_files_are_searched_by_hamming_distance(corpus, tmp_path):
    model, _ = corpus
    assert main(["encode", str(model), str(corpus[1].parent / "corpus.txt"), "--output", str(tmp_path / "bits.npy"),
                 "--precision", "binary"]) == 0  # fmt: skip
    embeddings = read_embeddings(tmp_path / "bits.npy")
    index = build_index(embeddings, "flat")
    bits = np.unpackbits(embeddings.vectors, axis=1)  # (N, D)
    query_bits = bits[:3]
    agreement = (query_bits[:, None, :] == bits[None, :, :]).sum(-1)  # (3, N) equal bits
    found = index.search(np.where(query_bits > 0, 1.0, -1.0), 5)
    for row, hits in zip(agreement, found):
        assert [score for _, score in hits] == sorted(row, reverse=True)[:5]


def test_another_model_is_refused_and_the_cli_searches_with_the_recorded_one(corpus, tmp_path, capsys):
    model, embeddings_file = corpus
    assert main(["index", str(embeddings_file), "--output", str(tmp_path / "index"), "--kind", "hnsw"]) == 0
    index = load_index(tmp_path / "index")
    index.check_model(load_encoder(model))
    with pytest.raises(CsekitError, match="was made with another model"):
        index.check_model(make_tiny_encoder("mean", seed=1))
    with pytest.raises(CsekitError, match="was made with another model"):
        index.check_model(load_encoder(model, pooler="max"))
    capsys.readouterr()
    assert main(["search", str(tmp_path / "index"), TEXTS[41], "-k", "3", "--json"]) == 0
    record = json.loads(capsys.readouterr().out.splitlines()[0])
    assert record["query"] == TEXTS[41] and record["hits"][0]["id"] == "42" and len(record["hits"]) == 3
    other = tmp_path / "other"
    make_tiny_encoder("mean", seed=1).save(other)
    assert main(["search", str(tmp_path / "index"), "a query", "--model", str(other)]) == 2
    assert "was made with another model" in capsys.readouterr().err


def test_only_search_time_settings_change_after_building(corpus):
    embeddings = read_embeddings(corpus[1])
    index = build_index(embeddings, "hnsw", m=8, ef_search=4)
    assert index.tune(ef_search=64).index.hnsw.efSearch == 64 and index.meta["settings"]["ef_search"] == 64
    with pytest.raises(CsekitError, match="m is fixed when the index is built"):
        index.tune(m=16)
    with pytest.raises(CsekitError, match="a flat index has no setting"):
        build_index(embeddings, "flat").tune(nprobe=4)
    ivfpq = build_index(embeddings, "ivfpq", nlist=8, nbits=4)
    assert ivfpq.meta["settings"]["pq_m"] == 4 and ivfpq.index.pq.M == 4  # a byte for every 8 of 32 dimensions
