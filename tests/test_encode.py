"""``csekit encode``: the file equals ``encode()`` in every format and precision, a killed run resumes to
the same bytes, two ranks write the file one process writes, and the inputs' ids lead back to their lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, make_tiny_encoder

from csekit.cli.main import main
from csekit.inference.store import read_embeddings

WORDS = "red blue green small large quick slow happy sad bright dark warm cold soft loud quiet".split()


ENV = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}  # the threads of the in-process runs


def _texts(count: int) -> list[str]:
    """Sentences of many lengths, so batches are cut by the token budget, not by count."""
    return [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(1 + i % 23)) + f" {i}" for i in range(count)]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("encode") / "tiny"
    make_tiny_encoder("mean").save(folder)
    return folder


@pytest.fixture(scope="module")
def expected(model) -> np.ndarray:
    from csekit.models import load_encoder

    return load_encoder(model).encode(_texts(300))


def _encode(model: Path, source: Path, output: Path, *options: str) -> int:
    return main(["encode", str(model), str(source), "--output", str(output), "--shard-rows", "64",
                 "--max-tokens", "512", *options])  # fmt: skip


@pytest.mark.parametrize("suffix", [".npy", ".parquet", ".safetensors"])
def test_each_format_holds_encode_s_vectors_in_order_with_line_number_ids(model, expected, tmp_path, suffix):
    source = tmp_path / "corpus.txt"
    texts = _texts(300)
    source.write_text("\n".join(texts[:100]) + "\n\n" + "\n".join(texts[100:]) + "\n")  # an empty line 101
    assert _encode(model, source, tmp_path / f"out{suffix}") == 0
    stored = read_embeddings(tmp_path / f"out{suffix}")
    assert stored.ids == [str(n) for n in (*range(1, 101), *range(102, 302))]
    assert stored.meta["count"] == 300 and stored.meta["precision"] == "float32" and stored.meta["dim"] == 32
    np.testing.assert_allclose(stored.floats(), expected, atol=1e-5)
    assert not (tmp_path / f"out{suffix}.partial").exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".tsv", ".parquet"])
def test_field_inputs_read_the_named_column_and_ids(model, expected, tmp_path, suffix):
    texts, source = _texts(300), tmp_path / f"corpus{suffix}"
    ids = [f"doc-{i}" for i in range(300)]
    if suffix == ".jsonl":
        source.write_text("".join(json.dumps({"id": i, "body": t}) + "\n" for i, t in zip(ids, texts)))
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": ids, "body": texts}), source, row_group_size=70)
    else:
        separator = "," if suffix == ".csv" else "\t"
        source.write_text(f"id{separator}body\n" + "".join(f"{i}{separator}{t}\n" for i, t in zip(ids, texts)))
    assert _encode(model, source, tmp_path / "out.npy", "--column", "body", "--id-column", "id") == 0
    stored = read_embeddings(tmp_path / "out.npy")
    assert stored.ids == ids
    np.testing.assert_allclose(stored.floats(), expected, atol=1e-5)


def test_precisions_and_a_matryoshka_prefix(model, expected, tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_text("\n".join(_texts(300)) + "\n")
    for precision in ("float16", "int8", "binary"):
        assert _encode(model, source, tmp_path / f"{precision}.npy", "--precision", precision) == 0
    half = read_embeddings(tmp_path / "float16.npy")
    assert half.vectors.dtype == np.float16 and np.abs(half.floats() - expected).max() < 1e-2
    int8 = read_embeddings(tmp_path / "int8.npy")
    steps = np.asarray(int8.meta["calibration"]["steps"])
    assert int8.vectors.dtype == np.int8 and int8.vectors.min() == -128 and int8.vectors.max() == 127
    assert np.all(np.abs(int8.floats() - expected) <= steps / 2 + 1e-6)  # within half a level of the calibration
    binary = read_embeddings(tmp_path / "binary.npy")
    assert binary.vectors.shape == (300, 4) and np.array_equal(binary.vectors, np.packbits(expected > 0, axis=1))
    assert np.array_equal(binary.floats(), np.where(expected > 0, 1.0, -1.0))

    assert _encode(model, source, tmp_path / "prefix.npy", "--dim", "8", "--normalize") == 0
    prefix = expected[:, :8] / np.linalg.norm(expected[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(read_embeddings(tmp_path / "prefix.npy").floats(), prefix, atol=1e-5)


def _files(output: Path) -> tuple[bytes, bytes]:
    """The vectors' and the ids' bytes."""
    return output.read_bytes(), output.with_name(output.name + ".ids.txt").read_bytes()


def test_a_killed_encode_resumes_to_the_bytes_of_an_uninterrupted_one(model, tmp_path, capsys):
    source = tmp_path / "corpus.txt"
    source.write_text("\n".join(_texts(12_000)) + "\n")
    reference = tmp_path / "reference.npy"
    assert _encode(model, source, reference) == 0

    output = tmp_path / "killed.npy"
    command = [sys.executable, "-m", "csekit.cli.main", "encode", str(model), str(source), "--output", str(output),
               "--shard-rows", "64", "--max-tokens", "512"]  # fmt: skip
    process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    partial, deadline = tmp_path / "killed.npy.partial", time.time() + 120
    while time.time() < deadline and process.poll() is None and len(list(partial.glob("shard-*.json"))) < 20:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the encode finished before it could be killed"
    done = len(list(partial.glob("shard-*.json")))
    assert 0 < done < 188 and not output.exists()

    capsys.readouterr()
    assert _encode(model, source, output) == 0
    assert f"continuing the encode in {partial} ({done} shards done)" in capsys.readouterr().out
    assert _files(output) == _files(reference)


def test_two_ranks_write_the_file_one_process_writes(model, tmp_path):
    source = tmp_path / "corpus.txt"
    source.write_text("\n".join(_texts(1000)) + "\n")
    assert _encode(model, source, tmp_path / "one.parquet") == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
               "-m", "csekit.cli.main", "encode", str(model), str(source), "--output", str(tmp_path / "two.parquet"),
               "--shard-rows", "64", "--max-tokens", "512"]  # fmt: skip
    finished = subprocess.run(command, env=ENV, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "two.parquet").read_bytes()


def test_a_partial_encode_of_other_settings_is_refused_and_overwrite_starts_over(model, tmp_path, capsys):
    source = tmp_path / "corpus.txt"
    source.write_text("\n".join(_texts(300)) + "\n")
    partial = tmp_path / "out.npy.partial"
    partial.mkdir()
    (partial / "plan.json").write_text(json.dumps({"model": {}, "settings": {}, "input": {}}))
    assert _encode(model, source, tmp_path / "out.npy") == 2
    assert "was made with another model" in capsys.readouterr().err
    assert _encode(model, source, tmp_path / "out.npy", "--overwrite") == 0
    assert read_embeddings(tmp_path / "out.npy").meta["count"] == 300


def test_the_onnx_backend_writes_the_torch_backend_s_vectors_within_1e_5(model, expected, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.setenv("CSEKIT_CACHE", str(tmp_path / "cache"))  # the export's cache, not the user's
    source = tmp_path / "corpus.txt"
    source.write_text("\n".join(_texts(300)) + "\n")
    assert _encode(model, source, tmp_path / "out.npy", "--backend", "onnx") == 0
    np.testing.assert_allclose(read_embeddings(tmp_path / "out.npy").floats(), expected, rtol=0, atol=1e-5)
    assert len(list((tmp_path / "cache" / "onnx").iterdir())) == 1  # exported once, kept for the next run
