"""DenoSent: the denoising loss against a naive per-sentence, per-token cross-entropy loop (value and
gradient), the combined loss against naive formulas, and the noise, head and training-only modules."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_encoder, write_recipe
from test_objectives_contract import TINY_GENERATOR
from torch.nn import functional as F

from csekit import CsekitError, load_encoder
from csekit.data.collate import pad_batch
from csekit.objectives import build_objective

TEXTS = ["a man is playing a guitar .", "hi", "two dogs run in the snow while a cat watches .", "the market fell"]
OPTIONS = {"prediction_head": TINY_GENERATOR, "decoder_layers": 2, "decoder_feedforward": 48, "decoder_heads": 2}


def padded(encoder, texts) -> dict[str, torch.Tensor]:
    ids = encoder.tokenize(texts)
    return pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], encoder.pad_token_id)


def dropout_free(**options):
    """A float64 tiny encoder and DenoSent in eval mode: no dropout, no noise, so a loop can recompute them."""
    encoder = make_tiny_encoder("mean").double().eval()
    objective = build_objective("denosent", encoder, options={**OPTIONS, **options}).double().eval()
    return encoder, objective


def naive_denoising(encoder, objective, memory, texts) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Each sentence alone, unpadded: decode its token embeddings with its embedding as the one-token memory,
    then -log p(token) summed over its tokens. Returns the mean over all tokens and each sentence's sum."""
    sums, count = [], 0
    for row, text in enumerate(texts):
        ids = torch.tensor([encoder.tokenize([text])["input_ids"][0]])  # (1, n)
        targets = encoder.backbone.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))  # (1, n, H)
        decoded = objective.decoder(tgt=targets, memory=memory[row][None, None])  # (1, n, H)
        log_probs = objective.prediction_head(decoded)[0].log_softmax(dim=-1)  # (n, V)
        sums.append(-sum(log_probs[position, token] for position, token in enumerate(ids[0].tolist())))
        count += ids.shape[1]
    return sum(sums) / count, sums


def naive_info_nce(anchors, candidates, temperature):
    total = 0.0
    for i in range(len(anchors)):
        logits = [F.cosine_similarity(anchors[i], candidate, dim=0) / temperature for candidate in candidates]
        total = total - (logits[i] - torch.logsumexp(torch.stack(logits), dim=0))
    return total / len(anchors)


def test_denoising_loss_equals_a_naive_per_token_loop_in_value_and_gradient():
    encoder, objective = dropout_free()
    batch = {"sent0": padded(encoder, TEXTS)}
    assert (batch["sent0"]["attention_mask"] == 0).any()  # padding must be left out, not decoded or scored
    memory = torch.randn(len(TEXTS), encoder.backbone.config.hidden_size, dtype=torch.float64, requires_grad=True)
    sums, counts = objective.reconstruction(encoder, memory, batch["sent0"])
    expected, expected_sums = naive_denoising(encoder, objective, memory, TEXTS)
    torch.testing.assert_close(sums, torch.stack(expected_sums), rtol=0, atol=1e-10)
    assert counts.tolist() == [len(encoder.tokenize([text])["input_ids"][0]) for text in TEXTS]
    loss = sums.sum() / counts.sum()
    torch.testing.assert_close(loss, expected, rtol=0, atol=1e-12)
    parameters = [memory, *objective.decoder.parameters()]
    for grad, expected_grad in zip(torch.autograd.grad(loss, parameters), torch.autograd.grad(expected, parameters)):
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-10)


def test_the_combined_loss_is_the_weighted_contrastive_plus_denoising_sum():
    encoder, objective = dropout_free(contrastive_weight=5.0, denoising_weight=7.0, temperature=0.05)
    batch = {"sent0": padded(encoder, TEXTS)}
    embeddings = objective.embed(encoder, batch)
    terms = objective.loss(embeddings, batch)
    views = encoder(**batch["sent0"])  # (B, H): without dropout both views are this
    projected = objective.projector(views)
    torch.testing.assert_close(embeddings["view1"], views)
    torch.testing.assert_close(terms["contrastive"], 5.0 * naive_info_nce(projected, projected, 0.05), rtol=0, atol=1e-10)
    denoising, _ = naive_denoising(encoder, objective, projected, TEXTS)  # the memory is the projected embedding
    torch.testing.assert_close(terms["denoising"], 7.0 * denoising, rtol=0, atol=1e-10)
    assert set(terms) == {"contrastive", "denoising"}


def test_the_noise_zeroes_most_of_the_decoders_input_and_the_head_is_the_encoders_tied_mlm_head():
    encoder = make_tiny_encoder("mean").train()
    objective = build_objective("denosent", encoder, options=OPTIONS).train()
    head = objective.prediction_head.predictions.decoder
    assert head.weight is encoder.backbone.get_input_embeddings().weight
    seen = {}
    objective.decoder.register_forward_pre_hook(lambda module, args, kwargs: seen.update(tgt=kwargs["tgt"]), with_kwargs=True)
    batch = {"sent0": padded(encoder, TEXTS * 8)}
    objective.embed(encoder, batch)
    zero_share = (seen["tgt"] == 0).double().mean().item()
    assert zero_share == pytest.approx(0.825, abs=0.02)
    assert not seen["tgt"].requires_grad  # the target side is detached, as the reference's hidden_states[0]
    # Decoder, projector and noise are the objective's (trained, never saved): the encoder holds none of them.
    assert not any(p is q for p in encoder.parameters() for q in objective.decoder.parameters())


def test_bad_decoder_settings_are_one_line_errors():
    encoder = make_tiny_encoder()
    for options, match in [({"decoder_heads": 3}, "decoder_heads divide the width 32"),
                           ({"noise_dropout": 1.0}, "noise_dropout lie in"), ({"decoder_layers": 0}, "decoder_layers")]:  # fmt: skip
        with pytest.raises(CsekitError, match=match):
            build_objective("denosent", encoder, options={**OPTIONS, **options})
    assert math.isclose(build_objective("denosent", encoder, options=OPTIONS).noise.p, 0.825)


def test_the_mask_pooler_takes_the_papers_template_with_no_period_added_at_inference():
    encoder = make_tiny_encoder("mask")
    build_objective("denosent", encoder, options=OPTIONS)
    assert encoder.pooler.prompt.template == '"[X]" means [MASK].' and not encoder.pooler.end_with_period
    assert encoder.pooler.inference_texts(["two dogs run"]) == ["two dogs run"]


def test_with_given_rewrites_the_decoder_rebuilds_the_rewrite_from_the_anchors_embedding():
    """denosent_pairs: sent1 (a back-translation) is the positive and the decoder's target, sent0's embedding its memory."""
    encoder = make_tiny_encoder("mean").double().eval()
    objective = build_objective("denosent_pairs", encoder, options=OPTIONS).double().eval()
    rewrites = ["a guitar is played by a man .", "hello", "dogs run through snow as a cat looks on .", "markets dropped"]
    batch = {"sent0": padded(encoder, TEXTS), "sent1": padded(encoder, rewrites)}
    embeddings = objective.embed(encoder, batch)
    terms = objective.loss(embeddings, batch)
    anchors = objective.projector(encoder(**batch["sent0"]))
    positives = objective.projector(encoder(**batch["sent1"]))
    torch.testing.assert_close(terms["contrastive"], 5.0 * naive_info_nce(anchors, positives, 0.05), rtol=0, atol=1e-10)
    denoising, _ = naive_denoising(encoder, objective, anchors, rewrites)
    torch.testing.assert_close(terms["denoising"], 7.0 * denoising, rtol=0, atol=1e-10)


def test_a_denosent_run_trains_and_saves_the_encoder_alone(tmp_path):
    from csekit.cli.main import main

    model = tmp_path / "tiny"
    make_tiny_encoder("mask").save(model)
    recipe = write_recipe(tmp_path, model, objective="denosent", pooler="mask", options=OPTIONS, max_steps=2)
    assert main(["train", str(recipe)]) == 0
    saved = load_encoder(tmp_path / "run" / "final")
    assert saved.pooler.prompt.template == '"[X]" means [MASK].'  # the template it trained with
    assert not any(path.name.startswith(("decoder", "projector")) for path in (tmp_path / "run" / "final").iterdir())
