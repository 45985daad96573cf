"""One suite over every registered pooler: the contract of models/pooling.py, on a tiny encoder.

Each pooler computes (B, H) rows that do not depend on the batch they are in, rebuilds from its saved
settings, and saves into a folder that csekit and sentence-transformers load with the same embeddings:
with stock modules where they express it, with csekit's input module where they cannot.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_tiny_encoder_with
from sentence_transformers import SentenceTransformer

import csekit
from csekit import POOLERS, load_encoder
from csekit.models.pooling import Pooler

TEXTS = ["a man is playing a guitar .", "hi", "two dogs run across a field of grass",
         "the quick brown fox jumps over the lazy dog while a cat watches from the window ."]  # fmt: skip


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a - b).max())


def test_registry_holds_every_pooler_defined_in_the_package():
    """A Pooler subclass written anywhere in csekit but missing from POOLERS fails here."""
    defined = set()
    for module_info in pkgutil.walk_packages(csekit.__path__, prefix="csekit."):
        if module_info.name.startswith("csekit.cli"):
            continue
        module = importlib.import_module(module_info.name)
        defined |= {cls for cls in vars(module).values() if inspect.isclass(cls) and issubclass(cls, Pooler)
                    and cls.__module__ == module.__name__ and "name" in vars(cls)}  # fmt: skip
    assert defined == set(POOLERS.values())
    assert all(POOLERS[cls.name] is cls for cls in defined)


@pytest.mark.parametrize("name", list(POOLERS))
def test_pooler_gives_batch_independent_rows_and_rebuilds_from_its_settings(name):
    encoder = make_tiny_encoder_with(name).eval()
    assert encoder.pooler.name == name
    embeddings = encoder.encode(TEXTS, batch_size=len(TEXTS))  # one padded batch
    assert embeddings.shape == (len(TEXTS), encoder.embedding_dim) and np.isfinite(embeddings).all()
    alone = np.concatenate([encoder.encode([text]) for text in TEXTS])  # no padding at all
    assert _max_diff(embeddings, alone) < 1e-5
    settings = json.loads(json.dumps(encoder.pooler.config()))  # JSON-ready
    rebuilt = type(encoder.pooler).create(settings, config=encoder.backbone.config, tokenizer=encoder.tokenizer)
    assert rebuilt.config() == encoder.pooler.config()


@pytest.mark.parametrize("name", list(POOLERS))
def test_saved_pooler_loads_in_csekit_and_sentence_transformers_with_the_same_embeddings(tmp_path, name):
    encoder = make_tiny_encoder_with(name)
    encoder.normalize = True
    expected = encoder.encode(TEXTS)
    folder = tmp_path / "model"
    encoder.save(folder)
    reloaded = load_encoder(folder)
    assert reloaded.pooler.config() == encoder.pooler.config()
    assert _max_diff(reloaded.encode(TEXTS), expected) < 1e-6
    first = json.loads((folder / "modules.json").read_text(encoding="utf-8"))[0]["type"]
    stock = encoder.pooler.stock_modules(32, 3) is not None
    assert first.startswith("sentence_transformers.") == stock
    # Stock modules load anywhere; csekit's input module needs sentence-transformers' trust flag.
    by_st = SentenceTransformer(str(folder), device="cpu", trust_remote_code=not stock).encode(TEXTS)
    assert _max_diff(by_st, expected) < 1e-5


def test_without_csekit_sentence_transformers_says_what_to_install(tmp_path):
    """A folder with csekit's input module, loaded where csekit cannot be imported."""
    make_tiny_encoder_with("ditto").save(tmp_path / "ditto")
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    # A path entry that makes `import csekit` fail as it does where csekit is not installed.
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class NoCsekit:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'csekit' or name.startswith('csekit.'):\n"
        "            raise ModuleNotFoundError(\"No module named 'csekit'\", name='csekit')\n"
        "sys.meta_path.insert(0, NoCsekit())\n", encoding="utf-8")  # fmt: skip
    code = ("from sentence_transformers import SentenceTransformer\n"
            f"SentenceTransformer({str(tmp_path / 'ditto')!r}, device='cpu', trust_remote_code=True)\n")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(blocker)}
    finished = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode != 0
    assert "No module named 'csekit'" in finished.stderr.strip().splitlines()[-1]


def test_the_cls_pooler_takes_the_head_and_every_other_pooler_drops_it():
    for name, cls in POOLERS.items():
        encoder = make_tiny_encoder_with(name)
        assert (encoder.head is not None) == cls.wants_head == (name == "cls")
    encoder = make_tiny_encoder_with("cls")
    with torch.no_grad():
        encoder.head.dense.weight.mul_(2)
    head = encoder.head
    assert encoder.set_pooler("cls").head is head  # switching to cls again keeps the trained head
