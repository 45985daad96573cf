"""LoRA adapters with any objective, gradient checkpointing, and the adapter and merged saves."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_decoder, make_tiny_encoder, write_recipe
from safetensors.torch import load_file
from test_objectives_contract import CONTRACT_OPTIONS, CONTRACT_POOLERS, batch_for

from csekit.errors import CsekitError
from csekit.models import load_encoder
from csekit.models.lora import add_lora, merged
from csekit.objectives import OBJECTIVES, RunContext, build_objective
from csekit.training.config import TrainConfig
from csekit.training.trainer import build_model

#: Objectives that train a copy of the backbone, by the prefix of its parameters.
BACKBONE_COPIES = {"diffcse": "discriminator.", "quick_thoughts": "context_encoder."}
#: Objectives that train a prefix over a frozen backbone, and so refuse adapters.
PREFIX_ONLY = {"promcse", "promcse_sup"}
SENTENCES = ["a man plays the guitar .", "two dogs run in the snow .", "the market fell today ."]


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama") / "model"
    make_tiny_decoder("mean").save(folder)
    return folder


def _config(model, **overrides) -> TrainConfig:
    values = {"model": str(model), "objective": "simcse_sup", "pooler": "mean", "dropout": 0.0,
              "lora": {"r": 4, "alpha": 8, "dropout": 0.0}, "eval_steps": 0}  # fmt: skip
    return TrainConfig.from_dict({**values, **overrides})


@pytest.mark.parametrize("name", sorted(PREFIX_ONLY))
def test_prefix_only_objectives_refuse_adapters(name):
    encoder = make_tiny_encoder(CONTRACT_POOLERS.get(name, "cls"))
    add_lora(encoder, {"r": 2, "alpha": 4, "target_modules": ["query", "value"]}, base_model="tiny")
    with pytest.raises(CsekitError, match="takes no lora adapters"):
        build_objective(name, encoder, options=CONTRACT_OPTIONS.get(name), context=RunContext(batch_size=6))


@pytest.mark.parametrize("name", [name for name in OBJECTIVES if name not in PREFIX_ONLY])
def test_every_objective_trains_only_the_adapters_and_its_own_modules(name):
    encoder = make_tiny_encoder(CONTRACT_POOLERS.get(name, "cls"))
    add_lora(encoder, {"r": 2, "alpha": 4, "target_modules": ["query", "value"]}, base_model="tiny")
    objective = build_objective(name, encoder, options=CONTRACT_OPTIONS.get(name), context=RunContext(batch_size=6))
    encoder.train(), objective.train()
    loss = sum(objective(encoder, batch_for(objective, encoder)).values())
    loss.backward()
    trained = {n for n, p in encoder.backbone.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n for n in trained)  # the backbone's own weights are frozen
    assert not any(p.grad is not None for n, p in encoder.backbone.named_parameters() if n not in trained)
    # What the objective trains beside the backbone without LoRA (a head, a classifier) it still trains; a copy of
    # the backbone (DiffCSE's discriminator) is copied with its adapters and trains those.
    plain = _trained_beside_backbone(name, make_tiny_encoder(CONTRACT_POOLERS.get(name, "cls")))
    copies = BACKBONE_COPIES.get(name, "no copy")
    assert {n for n in plain if not n.startswith(copies)} <= {n for n, p in _beside_backbone(encoder, objective)
                                                              if p.requires_grad}  # fmt: skip
    b_grads = [p.grad for n, p in encoder.backbone.named_parameters() if ".lora_B." in n]
    assert all(grad is not None for grad in b_grads)
    if loss > 0:  # DebCSE's copy of the untrained model takes every negative for a false one: a zero loss
        # B starts at zero, so B gets a gradient in the first step (A's is B^T times something: zero).
        assert any(grad.abs().sum() > 0 for grad in b_grads)


def _beside_backbone(encoder, objective):
    """Parameters outside the backbone; a weight tied to one of the backbone's (DenoSent's MLM decoder, the word
    embeddings) is the backbone's."""
    named = [*(("encoder." + n, p) for n, p in encoder.named_parameters()), *objective.named_parameters()]
    backbone = {id(p) for p in encoder.backbone.parameters()}
    return [(n, p) for n, p in named if not n.startswith("encoder.backbone.") and id(p) not in backbone]


def _trained_beside_backbone(name, encoder) -> set[str]:
    objective = build_objective(name, encoder, options=CONTRACT_OPTIONS.get(name), context=RunContext(batch_size=6))
    return {n for n, p in _beside_backbone(encoder, objective) if p.requires_grad}


def test_bad_lora_options_are_one_line_errors_naming_what_is_allowed(tiny_llama):
    for lora, message in (({"rank": 8}, "unknown option.*rank; allowed: r, alpha, dropout, target_modules, save"),
                          ({"r": 0}, "r must be an integer >= 1"), ({"dropout": 1.5}, r"dropout must be a number in \[0, 1\)"),
                          ({"save": "both"}, "save must be adapter or merged"), ([8], "lora must be a mapping")):  # fmt: skip
        with pytest.raises(CsekitError, match=message) as error:
            _config(tiny_llama, lora=lora)
        assert "\n" not in str(error.value)
    with pytest.raises(CsekitError, match="target_modules wq are not linear layers of LlamaModel; it has down_proj"):
        build_model(_config(tiny_llama, lora={"target_modules": ["wq"]}))


def _loss_and_grads(config: TrainConfig):
    torch.manual_seed(0)
    encoder, objective = build_model(config)
    with torch.no_grad():  # a trained-looking adapter: A's gradients are then not zero either
        for name, parameter in encoder.backbone.named_parameters():
            if ".lora_B." in name:
                parameter.normal_(std=0.1)
    loss = sum(objective(encoder, batch_for(objective, encoder)).values())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.requires_grad}
    return loss.detach(), grads, encoder


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_llama):
    plain_loss, plain, _ = _loss_and_grads(_config(tiny_llama))
    loss, grads, encoder = _loss_and_grads(_config(tiny_llama, gradient_checkpointing=True))
    assert encoder.backbone.get_base_model().is_activation_checkpointing
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=1e-6)
    assert grads.keys() == plain.keys() and any(".lora_A." in n for n in grads)
    for name, grad in plain.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_gradient_checkpointing_without_lora_trains_every_weight(tiny_llama):
    plain_loss, plain, _ = _loss_and_grads(_config(tiny_llama, lora=None))
    loss, grads, _ = _loss_and_grads(_config(tiny_llama, lora=None, gradient_checkpointing=True))
    torch.testing.assert_close(loss, plain_loss, rtol=0, atol=1e-6)
    for name, grad in plain.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def _trained(config: TrainConfig, steps: int = 3):
    torch.manual_seed(0)
    encoder, objective = build_model(config)
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
    batch = batch_for(objective, encoder)
    for _ in range(steps):
        sum(objective(encoder, batch).values()).backward()
        optimizer.step()
        optimizer.zero_grad()
    return encoder


@pytest.mark.parametrize("pooler", ["mean", "prompteol"])
def test_adapter_and_merged_saves_reload_with_the_trained_embeddings(tiny_llama, tmp_path, pooler):
    from sentence_transformers import SentenceTransformer

    encoder = _trained(_config(tiny_llama, pooler=pooler))
    expected = encoder.encode(SENTENCES)
    untrained = load_encoder(tiny_llama, pooler=pooler).encode(SENTENCES)
    assert abs(expected - untrained).max() > 1e-3  # the adapters changed the embeddings

    encoder.save(tmp_path / "adapter")
    files = {path.name for path in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "modules.json"} <= files
    assert "model.safetensors" not in files  # the base model is referenced, not copied
    base = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base == str(tiny_llama.resolve())
    assert all(".lora_" in name for name in load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    reloaded = load_encoder(tmp_path / "adapter")
    assert abs(reloaded.encode(SENTENCES) - expected).max() < 1e-5

    merged(encoder).save(tmp_path / "merged")
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert abs(load_encoder(tmp_path / "merged").encode(SENTENCES) - expected).max() < 1e-5
    # A decoder pads on the left, which no stock module does: the folder names csekit's input module.
    st = SentenceTransformer(str(tmp_path / "merged"), device="cpu", trust_remote_code=True)
    assert abs(st.encode(SENTENCES) - expected).max() < 1e-5
    assert abs(encoder.encode(SENTENCES) - expected).max() == 0  # merging worked on a copy


def test_a_lora_run_saves_what_the_recipe_asks_and_changes_only_the_target_layers(tiny_llama, tmp_path):
    from csekit.cli.main import main

    lora = {"r": 4, "alpha": 8, "dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "save": "merged"}
    recipe = write_recipe(tmp_path, tiny_llama, pooler="mean", mlp_only_train=False, lora=lora,
                          gradient_checkpointing=True, max_steps=3, save_steps=0)  # fmt: skip
    assert main(["train", str(recipe)]) == 0
    base, trained = load_file(tiny_llama / "model.safetensors"), load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert trained.keys() == base.keys()
    changed = {name for name in base if not torch.equal(base[name], trained[name])}
    assert changed and all(name.endswith(("q_proj.weight", "v_proj.weight")) for name in changed)
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    recipe = write_recipe(adapter, tiny_llama, pooler="mean", mlp_only_train=False, lora={**lora, "save": "adapter"},
                          max_steps=3, save_steps=0)  # fmt: skip
    assert main(["train", str(recipe)]) == 0
    from_adapter = load_encoder(adapter / "run" / "final").encode(SENTENCES)
    from_merged = load_encoder(tmp_path / "run" / "final").encode(SENTENCES)
    assert abs(from_adapter - from_merged).max() < 1e-5  # checkpointing on or off, the same training



def test_a_resumed_lora_run_ends_with_the_weights_of_the_uninterrupted_one(tiny_llama, tmp_path):
    import shutil

    from safetensors.torch import save_file

    from csekit.cli.main import main
    from csekit.data.senteval import sha256_of

    recipe = write_recipe(tmp_path, tiny_llama, pooler="mean", mlp_only_train=False, lora={"r": 4, "save": "merged"},
                          max_steps=6, save_steps=4)  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", str(recipe)]) == 0
    expected = load_file(run / "final" / "model.safetensors")
    shutil.rmtree(run / "final")
    assert main(["train", str(recipe), "--resume"]) == 0  # from the checkpoint of step 4
    resumed = load_file(run / "final" / "model.safetensors")
    assert all(torch.equal(resumed[name], expected[name]) for name in expected)
    # The checkpoint's adapters are what the resumed run continues from: with B zeroed it ends elsewhere.
    checkpoint = run / "checkpoint" / "weights.safetensors"
    saved = load_file(checkpoint)
    adapters = [name for name in saved if ".lora_B." in name]
    assert adapters and all(saved[name].abs().sum() > 0 for name in adapters)
    save_file({**saved, **{name: torch.zeros_like(saved[name]) for name in adapters}}, checkpoint)
    manifest = json.loads((checkpoint.parent / "manifest.json").read_text())
    manifest[checkpoint.name] = {"sha256": sha256_of(checkpoint), "bytes": checkpoint.stat().st_size}
    (checkpoint.parent / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(run / "final")
    assert main(["train", str(recipe), "--resume"]) == 0
    emptied = load_file(run / "final" / "model.safetensors")
    assert any(not torch.equal(emptied[name], expected[name]) for name in expected)
