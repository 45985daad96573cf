"""Decoder backbones and their prompt poolers, each against a naive per-sentence computation.

The naive side runs the backbone on one sentence at a time, as the reference code's text (no padding at
all); the pooler side runs one left-padded batch through ``encode``, or the right-padded batch csekit's
training collate makes. Both must agree to float32 rounding. The contract suite
(tests/test_poolers_contract.py) adds batch independence and the save/reload round trips for every pooler.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_decoder, make_tiny_encoder

from csekit import CsekitError, load_encoder
from csekit.data.collate import pad_batch
from csekit.models.contrastive_prompting import AUXILIARY_TEMPLATE
from csekit.models.decoder import left_padded, split_reference
from csekit.models.eol import METAEOL_TEMPLATES, PROMPTEOL_TEMPLATE, clean_sentence
from csekit.models.pooling import build_pooler

TEXTS = ["A man is playing a guitar", "hi", 'Is "the quick brown fox" jumping over the lazy dog?',
         "two dogs run across a field of grass while a cat watches from the window."]  # fmt: skip


def _states(encoder, text: str) -> tuple:
    """The backbone's outputs for one text, tokenized whole with the tokenizer's defaults, no padding."""
    ids = torch.tensor([encoder.tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return encoder.backbone(input_ids=ids, output_hidden_states=True, return_dict=True), ids


def _naive_eol(encoder, template: str, text: str, layer: int = -1) -> torch.Tensor:
    outputs, _ = _states(encoder, template.replace("*sent 0*", clean_sentence(text)).strip())
    return outputs.hidden_states[layer][0, -1]


def _assert_rows(encoder, expected: list[torch.Tensor], texts=TEXTS) -> None:
    batched = encoder.encode(texts, batch_size=len(texts))  # one left-padded batch
    assert np.abs(batched - torch.stack(expected).numpy()).max() < 1e-5


def test_a_decoder_pads_left_with_eos_and_rows_match_their_unpadded_selves():
    encoder = make_tiny_decoder("last_token")
    assert encoder.is_decoder and not make_tiny_encoder().is_decoder
    assert encoder.tokenizer.pad_token == encoder.tokenizer.eos_token and encoder.tokenizer.padding_side == "left"
    _assert_rows(encoder, [_states(encoder, text)[0].last_hidden_state[0, -1] for text in TEXTS])
    mean = encoder.set_pooler(build_pooler("mean", config=encoder.backbone.config, tokenizer=None, settings={"layer": -2}))
    _assert_rows(mean, [_states(encoder, text)[0].hidden_states[-2][0].mean(dim=0) for text in TEXTS])
    # The training path: csekit's collate pads right; the decoder still sees each row as if alone.
    rows = encoder.inference_tokens(TEXTS)
    with torch.no_grad():
        trained = encoder.train()(**pad_batch(rows, encoder.pad_token_id))
    assert (trained - torch.from_numpy(mean.encode(TEXTS, batch_size=1))).abs().max() < 1e-5


def test_left_padded_moves_padding_first_and_counts_positions_from_the_first_token():
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 0, 0], [1, 2, 3, 4, 5]]),
              "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}  # fmt: skip
    moved = left_padded(inputs)
    assert moved["input_ids"].tolist() == [[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]]
    assert moved["attention_mask"].tolist() == [[0, 0, 1, 1, 1], [1] * 5]
    assert moved["position_ids"].tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert torch.equal(left_padded(moved)["input_ids"], moved["input_ids"])  # already left: unchanged


def test_prompteol_is_the_last_token_of_the_reference_template():
    assert PROMPTEOL_TEMPLATE == 'This sentence : "*sent 0*" means in one word:"'
    encoder = make_tiny_decoder("prompteol")
    _assert_rows(encoder, [_naive_eol(encoder, PROMPTEOL_TEMPLATE, text) for text in TEXTS])
    layer2 = encoder.set_pooler(build_pooler("prompteol", config=encoder.backbone.config, tokenizer=encoder.tokenizer,
                                             settings={"layer": 2}))  # fmt: skip
    _assert_rows(layer2, [_naive_eol(encoder, PROMPTEOL_TEMPLATE, text, layer=2) for text in TEXTS])
    # The reference's test-time clean-up: a period, single quotes, no final question mark.
    assert clean_sentence('Is "it" so?') == "Is 'it' so." and clean_sentence("hi") == "hi." and clean_sentence("ok.") == "ok."


def test_metaeol_averages_the_last_token_of_its_eight_prompts():
    assert len(METAEOL_TEMPLATES) == 8 and all(t.endswith('in one word:"') for t in METAEOL_TEMPLATES)
    encoder = make_tiny_decoder("metaeol")
    _assert_rows(encoder, [torch.stack([_naive_eol(encoder, t, text) for t in METAEOL_TEMPLATES]).mean(dim=0)
                           for text in TEXTS])  # fmt: skip


def _naive_contrastive(encoder, text: str, *, steer_layer: int, output_layer: int, coefficient: float) -> torch.Tensor:
    """The reference's two passes, one sentence: the auxiliary prompt's o_proj input at its last token, then the
    normal prompt with its own replaced by coefficient * (A - B)."""
    projection = encoder.backbone.layers[steer_layer].self_attn.o_proj
    seen = []
    handle = projection.register_forward_hook(lambda module, args, output: seen.append(args[0][0, -1].clone()))
    _naive_eol(encoder, AUXILIARY_TEMPLATE, text)
    handle.remove()

    def steer(module, args):
        heads = args[0].clone()
        heads[0, -1] = coefficient * (heads[0, -1] - seen[0])
        return (heads,)

    handle = projection.register_forward_pre_hook(steer)
    try:
        return _naive_eol(encoder, PROMPTEOL_TEMPLATE, text, layer=output_layer)
    finally:
        handle.remove()


def test_contrastive_prompting_steers_with_the_auxiliary_prompt():
    settings = {"steer_layer": 1, "output_layer": 2, "coefficient": 0.5}
    encoder = make_tiny_decoder()
    encoder.set_pooler(build_pooler("contrastive_prompting", config=encoder.backbone.config, tokenizer=None,
                                    settings=settings))  # fmt: skip
    expected = [_naive_contrastive(encoder, text, **settings) for text in TEXTS]
    _assert_rows(encoder, expected)
    # Steering changes the embedding: without it the row is PromptEOL's at the output layer.
    plain = [_naive_eol(encoder, PROMPTEOL_TEMPLATE, text, layer=2) for text in TEXTS]
    assert min((a - b).abs().max().item() for a, b in zip(expected, plain)) > 1e-3


@pytest.mark.parametrize("strategy", ["mean", "last"])
def test_echo_pools_the_second_copy_only(strategy):
    encoder = make_tiny_decoder()
    encoder.set_pooler(build_pooler("echo", config=encoder.backbone.config, tokenizer=None, settings={"strategy": strategy}))
    expected = []
    for text in TEXTS:
        filled = f"Rewrite the sentence: {text}, rewritten sentence: {text}"
        outputs, _ = _states(encoder, filled)
        offsets = encoder.tokenizer(filled, return_offsets_mapping=True)["offset_mapping"]
        start = filled.rindex(text)
        second = [t for t, (a, b) in enumerate(offsets) if a < start + len(text) and b > start]
        assert encoder.tokenizer.decode(encoder.tokenizer(filled)["input_ids"][second[0] : second[-1] + 1]).strip() == text
        states = outputs.last_hidden_state[0, second]
        expected.append(states.mean(dim=0) if strategy == "mean" else states[-1])
    _assert_rows(encoder, expected)


def test_a_long_sentence_is_cut_and_the_template_kept():
    encoder = make_tiny_decoder("prompteol")
    encoder.max_length = 24
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 10)
    (row,) = encoder.tokenize([long])["input_ids"]
    assert len(row) <= 24 and encoder.tokenizer.decode(row).endswith('" means in one word:"')
    encoder.max_length = 5
    with pytest.raises(CsekitError, match="leaves no room for a sentence"):
        encoder.tokenize([long])


def test_decoder_poolers_refuse_encoders_and_bad_settings():
    bert = make_tiny_encoder()
    with pytest.raises(CsekitError, match="give it a decoder backbone"):
        bert.set_pooler("prompteol")
    decoder = make_tiny_decoder()
    config = decoder.backbone.config
    with pytest.raises(CsekitError, match="layer 9 is out of range"):
        build_pooler("last_token", config=config, tokenizer=None, settings={"layer": 9})
    with pytest.raises(CsekitError, match="steer_layer 3 is out of range"):
        build_pooler("contrastive_prompting", config=config, tokenizer=None, settings={"steer_layer": 3, "output_layer": 2})
    with pytest.raises(CsekitError, match="must contain"):
        build_pooler("echo", config=config, tokenizer=None, settings={"template": "Once: *sent 0*"})
    with pytest.raises(CsekitError, match="has no setting"):
        build_pooler("prompteol", config=config, tokenizer=None, settings={"temperature": 1})
    with pytest.raises(CsekitError, match="packed rows are for encoders"):
        decoder.pack(64)


def test_gguf_references():
    assert split_reference("models/smol#gguf=model.Q4_1.gguf") == ("models/smol", "model.Q4_1.gguf")
    assert split_reference("models/smol") == ("models/smol", None)
    with pytest.raises(CsekitError, match="FOLDER#gguf=FILE.gguf"):
        split_reference("models/smol#gguf=weights.bin")


def test_smollm2_from_gguf_batches_like_single_sentences_and_saves_as_a_plain_checkpoint(smollm2, tmp_path):
    """The real model: SmolLM2-135M-Instruct de-quantized from its GGUF file, left-padded batches."""
    assert smollm2.is_decoder and smollm2.pooler.name == "last_token" and smollm2.embedding_dim == 576
    try:
        for name in ("last_token", "prompteol"):
            smollm2.set_pooler(name)
            batched = smollm2.encode(TEXTS, batch_size=len(TEXTS))
            alone = np.concatenate([smollm2.encode([text]) for text in TEXTS])
            assert np.abs(batched - alone).max() < 1e-4 * np.abs(alone).max()
        expected = _naive_eol(smollm2, PROMPTEOL_TEMPLATE, TEXTS[0]).numpy()
        assert np.abs(batched[0] - expected).max() < 1e-4 * np.abs(expected).max()
        smollm2.save(tmp_path / "smol")
        assert "quantization_config" not in json.loads((tmp_path / "smol" / "config.json").read_text())
        reloaded = load_encoder(tmp_path / "smol")
        assert reloaded.pooler.name == "prompteol" and reloaded.tokenizer.padding_side == "left"
        assert np.abs(reloaded.encode(TEXTS, batch_size=len(TEXTS)) - batched).max() < 1e-5 * np.abs(batched).max()
    finally:
        smollm2.set_pooler("last_token")


@pytest.mark.parametrize("name", ["prompteol", "metaeol", "echo", "contrastive_prompting"])
def test_prompt_poolers_train_the_decoder_from_right_padded_batches(name):
    """The training path (csekit's collate pads right) gives encode's rows, with a gradient into the backbone."""
    encoder = make_tiny_decoder()
    encoder.set_pooler(build_pooler(name, config=encoder.backbone.config, tokenizer=encoder.tokenizer,
                                    settings={"steer_layer": 1, "output_layer": 2} if name == "contrastive_prompting" else None))  # fmt: skip
    rows = encoder.inference_tokens(TEXTS)
    embeddings = encoder.train()(**pad_batch(rows, encoder.pad_token_id))  # (B, H)
    assert (embeddings.detach() - torch.from_numpy(encoder.encode(TEXTS, batch_size=1))).abs().max() < 1e-5
    embeddings.pow(2).sum().backward()
    grads = [p.grad for p in encoder.backbone.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
