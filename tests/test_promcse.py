"""PromCSE: the prefixed attention against a naive one-layer BERT, prefix-only training, the saved prefix
reloading with the same embeddings (csekit and sentence-transformers), and the energy-based hinge loss
against a naive loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_encoder, write_recipe
from sentence_transformers import SentenceTransformer
from torch.nn import functional as F
from transformers import BertConfig

from csekit import CsekitError, load_encoder
from csekit.data.collate import pad_batch
from csekit.losses import energy_hinge
from csekit.models.prefix import DeepPrefix
from csekit.objectives import build_objective

TEXTS = ["a man is playing a guitar .", "hi", "two dogs run in the snow while a cat watches .", "the market fell"]


def padded(encoder, texts) -> dict[str, torch.Tensor]:
    ids = encoder.tokenize(texts)
    return pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], encoder.pad_token_id)


def naive_prefixed_layer(backbone, prefix: DeepPrefix, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """A one-layer BERT written out, with the prefix's keys and values concatenated before the tokens' by hand."""
    (layer,) = backbone.encoder.layer
    embeddings, attention = backbone.embeddings, layer.attention.self
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    size, tokens = ids.shape
    length, heads, head_dim = prefix.length, prefix.heads, prefix.head_dim
    positions = torch.arange(length, length + tokens)  # the tokens come after the prefix
    hidden = embeddings.word_embeddings(ids) + embeddings.position_embeddings(positions) + embeddings.token_type_embeddings(inputs["token_type_ids"])
    hidden = embeddings.LayerNorm(hidden)  # (B, T, H)
    table = prefix.embedding.weight.view(length, 2, heads, head_dim)  # one layer: its key, then its value
    output = torch.empty_like(hidden)
    for row in range(size):
        for head in range(heads):
            part = slice(head * head_dim, (head + 1) * head_dim)
            query = hidden[row] @ attention.query.weight[part].T + attention.query.bias[part]  # (T, d)
            key = torch.cat([table[:, 0, head], hidden[row] @ attention.key.weight[part].T + attention.key.bias[part]])
            value = torch.cat([table[:, 1, head], hidden[row] @ attention.value.weight[part].T + attention.value.bias[part]])
            scores = query @ key.T / math.sqrt(head_dim)  # (T, P + T)
            visible = torch.cat([torch.ones(length, dtype=torch.bool), mask[row].bool()])  # (P + T,)
            scores = scores.masked_fill(~visible, -math.inf)
            output[row, :, part] = scores.softmax(dim=-1) @ value  # (T, d)
    attended = layer.attention.output.LayerNorm(layer.attention.output.dense(output) + hidden)
    return layer.output.LayerNorm(layer.output.dense(layer.intermediate(attended)) + attended)  # (B, T, H)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_prefixed_attention_equals_a_naive_concatenation_of_prefix_keys_and_values(implementation):
    encoder = make_tiny_encoder("mean", num_hidden_layers=1).double().eval()
    encoder.backbone.set_attn_implementation(implementation)
    encoder.set_prefix(DeepPrefix(encoder.backbone.config, 3))
    with torch.no_grad():
        encoder.prefix.embedding.weight.normal_(std=1.0)  # far from zero, so a dropped prefix would show
    inputs = padded(encoder, TEXTS)
    assert (inputs["attention_mask"] == 0).any()  # padding is masked among the keys
    prefixed = {**inputs, **encoder.prefix.backbone_inputs(encoder.backbone, inputs["attention_mask"])}
    states = encoder.backbone(**prefixed).last_hidden_state  # (B, T, H)
    expected = naive_prefixed_layer(encoder.backbone, encoder.prefix, inputs)
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(states[real], expected[real], rtol=0, atol=1e-10)
    # The sentence embedding pools those states; without the prefix it would differ.
    pooled = encoder(**inputs)
    torch.testing.assert_close(pooled, (expected * real[..., None]).sum(1) / real.sum(1, keepdim=True), rtol=0, atol=1e-10)
    assert (pooled - encoder.set_prefix(None)(**inputs)).abs().max() > 1e-3


def test_only_the_prefix_and_the_head_train_and_the_backbone_stays_as_it_was():
    encoder = make_tiny_encoder(hidden_dropout_prob=0.1).train()
    before = {name: value.clone() for name, value in encoder.backbone.state_dict().items()}
    objective = build_objective("promcse", encoder, options={"prefix_length": 4})
    trainable = {name for name, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {"prefix.embedding.weight", "head.dense.weight", "head.dense.bias"}
    config = encoder.backbone.config
    assert encoder.prefix.embedding.weight.numel() == 4 * config.num_hidden_layers * 2 * config.hidden_size
    optimizer = torch.optim.AdamW([p for p in encoder.parameters() if p.requires_grad], lr=1e-2)
    prefix_before = encoder.prefix.embedding.weight.detach().clone()
    for _ in range(2):
        sum(objective(encoder, {"sent0": padded(encoder, TEXTS)}).values()).backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(value, before[name]) for name, value in encoder.backbone.state_dict().items())
    assert not torch.equal(encoder.prefix.embedding.weight, prefix_before)
    with pytest.raises(CsekitError, match="already has a 4-token prefix"):
        build_objective("promcse", encoder, options={"prefix_length": 16})


def test_prefix_parameter_count_for_bert_base_is_the_papers_fraction():
    """16 tokens x 12 layers x (key + value) x 768 = 294,912 numbers, 0.27% of BERT-base's 110M."""
    assert DeepPrefix(BertConfig(), 16).embedding.weight.numel() == 294_912


@pytest.mark.parametrize("pooler, mlp_only_train", [("cls", True), ("cls", False), ("mean", True)])
def test_a_saved_prefix_reloads_with_the_same_embeddings_in_csekit_and_sentence_transformers(tmp_path, pooler, mlp_only_train):
    encoder = make_tiny_encoder(pooler)
    encoder.head_at_inference = not mlp_only_train
    build_objective("promcse", encoder, options={"prefix_length": 5})
    with torch.no_grad():
        encoder.prefix.embedding.weight.normal_(std=1.0)
    encoder.eval()
    expected = encoder.encode(TEXTS)
    encoder.save(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "csekit_config.json").read_text())["prefix"]["length"] == 5
    modules = json.loads((tmp_path / "model" / "modules.json").read_text())
    assert modules[0]["type"] == "csekit.models.st_module.PooledTransformer"  # the stock module would drop the prefix
    reloaded = load_encoder(tmp_path / "model")
    assert reloaded.prefix is not None and reloaded.prefix.length == 5
    assert np.abs(reloaded.encode(TEXTS) - expected).max() < 1e-5
    by_st = SentenceTransformer(str(tmp_path / "model"), device="cpu", trust_remote_code=True).encode(TEXTS)
    assert np.abs(by_st - expected).max() < 1e-5
    assert np.abs(make_tiny_encoder(pooler).eval().encode(TEXTS) - expected).max() > 1e-3  # the prefix matters
    (tmp_path / "model" / "prefix" / "model.safetensors").unlink()
    with pytest.raises(CsekitError, match="prefix/model.safetensors is missing"):
        load_encoder(tmp_path / "model")


def test_a_prefix_is_refused_where_it_cannot_work():
    encoder = make_tiny_encoder()  # 128 positions
    encoder.max_length = 128
    encoder.set_prefix(DeepPrefix(encoder.backbone.config, 8))
    assert encoder.max_length == 120  # the tokens' positions start after the prefix: encode() cuts sentences to fit
    long_row = {"input_ids": torch.ones(1, 125, dtype=torch.long), "attention_mask": torch.ones(1, 125, dtype=torch.long)}
    with pytest.raises(CsekitError, match="125 tokens after a 8-token prefix pass the model's 128 positions"):
        encoder(**long_row)
    with pytest.raises(CsekitError, match="leaves none of the model's 128 positions"):
        encoder.set_prefix(DeepPrefix(encoder.backbone.config, 128))
    with pytest.raises(CsekitError, match="padded batches"):
        encoder.pack(64)


def naive_energy_hinge(anchors, positives, negatives, margin):
    total = 0.0
    for i in range(len(anchors)):
        own = F.cosine_similarity(anchors[i], positives[i], dim=0)
        rivals = [F.cosine_similarity(anchors[i], positives[j], dim=0) for j in range(len(positives)) if j != i]
        rivals += [F.cosine_similarity(anchors[i], negative, dim=0) for negative in negatives]
        total = total + torch.clamp(margin - own + max(rivals), min=0)
    return total / len(anchors)


def test_energy_hinge_equals_a_naive_loop_in_value_and_gradient():
    torch.manual_seed(0)
    tensors = [torch.randn(6, 8, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    with torch.no_grad():  # anchor 0 sits far above its rivals: a zero term, whose gradient must be zero too
        tensors[1][0] = tensors[0][0] * 3
    for margin in (0.2, 1.5):
        loss = energy_hinge(*tensors, margin=margin)
        grads = torch.autograd.grad(loss, tensors)
        expected = naive_energy_hinge(*tensors, margin)
        expected_grads = torch.autograd.grad(expected, tensors)
        torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
        for grad, expected_grad in zip(grads, expected_grads):
            torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)
    assert energy_hinge(*tensors, margin=0.2) < energy_hinge(*tensors, margin=1.5)


def test_the_supervised_loss_adds_the_weighted_hinge_to_supervised_simcse():
    encoder = make_tiny_encoder(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).eval()
    objective = build_objective("promcse_sup", encoder, options={"eh_weight": 10.0, "eh_margin": 0.2, "prefix_length": 2})
    batch = {column: padded(encoder, TEXTS[shift:] + TEXTS[:shift]) for shift, column in enumerate(objective.columns)}
    embeddings = objective.embed(encoder, batch)
    terms = objective.loss(embeddings, batch)
    anchors, positives, negatives = (embeddings[column] for column in objective.columns)
    torch.testing.assert_close(terms["energy_hinge"], 10.0 * naive_energy_hinge(anchors, positives, negatives, 0.2))
    logits = F.cosine_similarity(anchors[:, None], torch.cat([positives, negatives])[None], dim=-1) / 0.05  # (B, 2B)
    torch.testing.assert_close(terms["contrastive"], F.cross_entropy(logits, torch.arange(len(TEXTS))))


def test_a_promcse_run_trains_the_prefix_only_and_saves_it(tmp_path):
    from csekit.cli.main import main

    model = tmp_path / "tiny"
    make_tiny_encoder().save(model)
    recipe = write_recipe(tmp_path, model, objective="promcse", options={"prefix_length": 4}, max_steps=2, learning_rate=3e-2)
    assert main(["train", str(recipe)]) == 0
    start, final = load_encoder(model), load_encoder(tmp_path / "run" / "final")
    assert final.prefix is not None and final.prefix.length == 4
    for (name, before), after in zip(start.backbone.state_dict().items(), final.backbone.state_dict().values()):
        assert torch.equal(before, after), name
