"""PromptBERT: template wrapping and truncation, [MASK] pooling and template denoising against naive
per-sentence computations, save/load, and the loss against a naive reference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from conftest import make_tiny_encoder, tiny_tokenizer, train_single_and_two_ranks, write_recipe
from sentence_transformers import SentenceTransformer
from transformers import RobertaConfig, RobertaModel

from csekit import CsekitError, SentenceEncoder, load_encoder
from csekit.data.collate import pad_batch
from csekit.models.prompt import DEFAULT_TEMPLATE, DenoisedMaskPooler, MaskPooler, Prompt
from csekit.objectives import build_objective
from csekit.objectives.promptbert import POSITIVE_TEMPLATE, TEMPLATE

TEXTS = [
    "a man is playing a guitar .",
    "hi",
    "the quick brown fox jumps over the lazy dog while a cat watches from the window .",
    "two dogs run",
    "",
]
LONG = " ".join(["word"] * 300)


def use_template(encoder, template: str) -> Prompt:
    """Wrap sentences in ``template`` from now on (the encoder's mask pooler, same denoising)."""
    prompt = Prompt.from_template(template, encoder.tokenizer)
    encoder.set_pooler(type(encoder.pooler)(prompt))
    return prompt


def padded(encoder, texts, **kwargs) -> dict[str, torch.Tensor]:
    ids = encoder.tokenize(texts, **kwargs)
    return pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], encoder.tokenizer.pad_token_id)


def reference_row(tokenizer, reference_template: str, sentence: str, budget: int = 10_000) -> list[int]:
    """The reference's ids (train.py::prepare_features): its template string cut at the sentence,
    ``encode(before)[:-1] + encode(sentence, no specials)[:budget] + encode(after)[1:]``."""
    text = reference_template.replace("*mask*", tokenizer.mask_token).replace("*sep+*", "").replace("*cls*", "")
    before, after = (part.replace("_", " ") for part in text.replace("*sent_0*", " ").split(" "))
    sentence_ids = tokenizer.encode(sentence, add_special_tokens=False)[:budget]
    return tokenizer.encode(before)[:-1] + sentence_ids + tokenizer.encode(after)[1:]


# ----------------------------------------------------------------------------- tokens
@pytest.mark.parametrize("template, reference", [
    (TEMPLATE, '*cls*_This_sentence_of_"*sent_0*"_means*mask*.*sep+*'),
    (POSITIVE_TEMPLATE, '*cls*_This_sentence_:_"*sent_0*"_means*mask*.*sep+*'),
])  # fmt: skip
def test_wrapping_matches_the_reference_token_ids(template, reference):
    encoder = make_tiny_encoder("mask")
    use_template(encoder, template)
    rows = encoder.tokenize(TEXTS)["input_ids"]
    assert rows == [reference_row(encoder.tokenizer, reference, text) for text in TEXTS]
    assert encoder.pooler.prompt.length == 10  # [CLS] this sentence of " | " means [MASK] . [SEP]


def test_truncation_cuts_the_sentence_and_keeps_the_template_whole():
    encoder = make_tiny_encoder("mask")
    prompt = encoder.pooler.prompt
    for max_length in (11, 20, 64):
        row = encoder.tokenize([LONG], max_length=max_length)["input_ids"][0]
        assert len(row) == max_length
        assert tuple(row[: len(prompt.head)]) == prompt.head and tuple(row[-len(prompt.tail) :]) == prompt.tail
        assert row == reference_row(encoder.tokenizer, '*cls*_This_sentence_:_"*sent_0*"_means*mask*.*sep+*', LONG,
                                    budget=max_length - prompt.length)  # fmt: skip
    # encode() on long sentences: the encoder's max_length bounds whole rows, each keeps its [MASK]
    batch = padded(encoder, [LONG, "short"])
    assert batch["input_ids"].shape[1] == encoder.max_length
    assert (batch["input_ids"] == encoder.tokenizer.mask_token_id).sum(dim=1).tolist() == [1, 1]
    with pytest.raises(CsekitError, match="no room for a sentence"):
        encoder.tokenize(["hi"], max_length=10)


def test_mask_text_in_a_sentence_is_not_a_mask_token():
    encoder = make_tiny_encoder("mask")
    row = encoder.tokenize(["the [MASK] is [SEP] here"])["input_ids"][0]
    assert row.count(encoder.tokenizer.mask_token_id) == 1
    assert row.count(encoder.tokenizer.sep_token_id) == 1


def test_bad_templates_are_refused_and_a_template_lives_only_in_a_mask_pooler():
    tokenizer = tiny_tokenizer()
    for template in ("no slots here", "[X] means", "[X] [MASK] [MASK]", "[X] [X] [MASK]"):
        with pytest.raises(CsekitError, match="must contain"):
            Prompt.from_template(template, tokenizer)
    encoder = make_tiny_encoder("mask")
    encoder.set_pooler("mean")  # another pooler: the template goes with the mask pooler
    assert not hasattr(encoder.pooler, "prompt")
    assert encoder.tokenize(["hi"])["input_ids"] == [tokenizer.encode("hi")]


def test_mask_position_is_found_per_row_under_padding():
    encoder = make_tiny_encoder("mask")
    batch = padded(encoder, TEXTS)
    assert (batch["attention_mask"] == 0).any(), "the batch must be padded for this test to mean anything"
    positions = encoder.pooler.prompt.mask_positions(batch["input_ids"])
    for i, row in enumerate(encoder.tokenize(TEXTS)["input_ids"]):  # unpadded rows, one at a time
        expected = row.index(encoder.tokenizer.mask_token_id)
        assert positions[i].nonzero().flatten().tolist() == [expected]
        assert expected == len(row) - 3  # ... [MASK] . [SEP]
    lengths = encoder.pooler.prompt.sentence_lengths(batch["attention_mask"]).tolist()
    assert lengths == [len(encoder.tokenizer.encode(t, add_special_tokens=False)) for t in TEXTS]
    plain = encoder.tokenizer(TEXTS[:2], padding=True, return_tensors="pt")  # not wrapped: no [MASK]
    with pytest.raises(CsekitError, match="wrapped in the prompt"):
        encoder(**plain)


# ----------------------------------------------------------------------------- states
def naive_template_state(backbone, prompt: Prompt, length: int, first_position: int = 0) -> torch.Tensor:
    """The reference's template pass for one sentence length: the template alone, its tokens after
    the sentence slot moved right by ``length`` (get_delta: ``position_ids[:, len(bs) + 1:] += length``)."""
    ids = [*prompt.head, *prompt.tail]
    positions = [first_position + j + (length if j >= len(prompt.head) else 0) for j in range(len(ids))]
    out = backbone(input_ids=torch.tensor([ids]), position_ids=torch.tensor([positions])).last_hidden_state
    return out[0, ids.index(prompt.mask_token_id)]


@pytest.mark.parametrize("pooler", ["mask", "mask_denoised"])
def test_encode_equals_a_naive_per_sentence_computation(pooler):
    encoder = make_tiny_encoder(pooler, num_hidden_layers=3).eval()
    embeddings = encoder.encode(TEXTS, batch_size=3)  # sorted, padded batches
    prompt = encoder.pooler.prompt
    with torch.no_grad():
        # Inference ends each sentence with a period (PromptBERT's test protocol): the naive rows do too.
        for i, row in enumerate(encoder.tokenize(encoder.pooler.inference_texts(TEXTS))["input_ids"]):
            mask = row.index(encoder.tokenizer.mask_token_id)
            state = encoder.backbone(input_ids=torch.tensor([row])).last_hidden_state[0, mask]
            if pooler == "mask_denoised":
                length = len(row) - prompt.length
                state = state - naive_template_state(encoder.backbone, prompt, length)
            np.testing.assert_allclose(embeddings[i], state.numpy(), atol=1e-5, rtol=1e-5)


def test_denoised_state_of_an_empty_sentence_is_zero():
    # The template with no sentence is the template pass of length 0: nothing is left.
    encoder = make_tiny_encoder("mask_denoised").eval()
    assert np.abs(encoder.encode([""])).max() < 1e-5


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_template_pass_puts_mask_where_the_filled_row_has_it(family):
    # A model-agnostic check of the positions: the template pass must equal the filled row with the
    # sentence's tokens hidden from attention (same tokens, same positions, sentence unseen).
    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    if family == "bert":
        backbone = make_tiny_encoder("mask").backbone
    else:  # positions start after the padding index (here 0 + 1)
        config = RobertaConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, max_position_embeddings=130, pad_token_id=0)  # fmt: skip
        backbone = RobertaModel(config, add_pooling_layer=False)
    backbone.eval()
    prompt = Prompt.from_template(TEMPLATE, tokenizer)
    rows = SentenceEncoder(backbone, tokenizer, pooler=MaskPooler(prompt)).tokenize(TEXTS)["input_ids"]
    batch = pad_batch([{"input_ids": row, "attention_mask": [1] * len(row)} for row in rows], 0)
    lengths = prompt.sentence_lengths(batch["attention_mask"])
    with torch.no_grad():
        states = prompt.template_states(backbone, lengths)
        for i, row in enumerate(rows):
            hidden = [1] * len(prompt.head) + [0] * int(lengths[i]) + [1] * len(prompt.tail)
            out = backbone(input_ids=torch.tensor([row]), attention_mask=torch.tensor([hidden])).last_hidden_state
            torch.testing.assert_close(states[i], out[0, row.index(prompt.mask_token_id)], atol=1e-5, rtol=1e-5)
            if family == "bert":  # and the reference's explicit position ids
                expected = naive_template_state(backbone, prompt, int(lengths[i]))
                torch.testing.assert_close(states[i], expected, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("pooler", ["mask", "mask_denoised"])
def test_save_load_round_trip_is_exact_in_csekit_and_sentence_transformers(tmp_path, pooler):
    encoder = make_tiny_encoder(pooler, num_hidden_layers=3)
    use_template(encoder, TEMPLATE)
    expected = encoder.encode([*TEXTS, LONG])
    encoder.save(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "csekit_config.json").read_text(encoding="utf-8"))
    assert saved["pooler"] == {"name": pooler, "template": TEMPLATE, "end_with_period": True}

    reloaded = load_encoder(tmp_path / "model")
    assert reloaded.pooler.name == pooler and reloaded.pooler.prompt == encoder.pooler.prompt
    assert float(np.abs(reloaded.encode([*TEXTS, LONG]) - expected).max()) < 1e-6
    # A pooler override keeps the saved template (e.g. evaluating a trained model without denoising).
    other = "mask" if pooler == "mask_denoised" else "mask_denoised"
    assert load_encoder(tmp_path / "model", pooler=other).pooler.prompt.template == TEMPLATE

    # No stock module pools at [MASK]: the folder names csekit's input module, which sentence-transformers
    # imports once trusted (it never loads something else), and which computes the same embeddings.
    with pytest.raises(ValueError, match="trust_remote_code"):
        SentenceTransformer(str(tmp_path / "model"), device="cpu")
    by_st = SentenceTransformer(str(tmp_path / "model"), device="cpu", trust_remote_code=True)
    assert float(np.abs(by_st.encode([*TEXTS, LONG]) - expected).max()) < 1e-5


def test_a_raw_model_loaded_with_a_mask_pooler_gets_the_papers_template(bert_mini):
    encoder = load_encoder(str(bert_mini), pooler="mask")
    assert encoder.pooler.prompt.template == DEFAULT_TEMPLATE and encoder.head is None


# ----------------------------------------------------------------------------- objective
def naive_info_nce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    anchors, positives = anchors.double(), positives.double()
    total = 0.0
    for i in range(len(anchors)):
        logits = torch.stack([torch.dot(anchors[i], p) / (anchors[i].norm() * p.norm()) / temperature
                              for p in positives])  # fmt: skip
        total += -(logits[i] - torch.logsumexp(logits, 0))
    return total / len(anchors)


def test_views_are_the_two_templates_denoised_and_the_loss_matches_a_naive_reference():
    encoder = make_tiny_encoder("mask", num_hidden_layers=3).eval()  # dropout off: views are deterministic
    objective = build_objective("promptbert", encoder, options={"temperature": 0.05})
    assert encoder.pooler.prompt.template == TEMPLATE  # the anchor's template is the encoder's, for inference
    batch = {"sent0": padded(encoder, TEXTS[:4])}
    with torch.no_grad():
        embeddings = objective.embed(encoder, batch)
        for view, template in (("view1", TEMPLATE), ("view2", POSITIVE_TEMPLATE)):
            # Each template tokenized afresh, the training data as it is (no period: that is inference's).
            pooler = DenoisedMaskPooler(Prompt.from_template(template, encoder.tokenizer), end_with_period=False)
            direct = SentenceEncoder(encoder.backbone, encoder.tokenizer, pooler=pooler, max_length=encoder.max_length)
            expected = objective.head(torch.from_numpy(direct.encode(TEXTS[:4])))
            torch.testing.assert_close(embeddings[view], expected, atol=1e-5, rtol=1e-5)
    loss = objective.loss(embeddings, batch)["contrastive"]
    assert loss.item() == pytest.approx(naive_info_nce(embeddings["view1"], embeddings["view2"], 0.05).item(), abs=1e-6)


def test_rewrap_equals_tokenizing_with_the_other_template():
    encoder = make_tiny_encoder("mask")
    other = Prompt.from_template('"[X]" is [MASK] indeed', encoder.tokenizer)
    rewrapped = encoder.pooler.prompt.rewrap(padded(encoder, [*TEXTS, LONG]), other, 0)
    encoder.set_pooler(MaskPooler(other))
    direct = padded(encoder, [*TEXTS, LONG], max_length=64 - 10 + other.length)  # the same sentence tokens
    for key in direct:
        assert torch.equal(rewrapped[key], direct[key]), key


def test_training_views_differ_by_dropout_and_template_and_carry_gradient_through_the_template_pass():
    encoder = make_tiny_encoder("mask_denoised", hidden_dropout_prob=0.1).train()
    objective = build_objective("promptbert", encoder).train()
    batch = {"sent0": padded(encoder, TEXTS[:4])}
    prompt = encoder.pooler.prompt
    bias = prompt.template_states(encoder.backbone, prompt.sentence_lengths(batch["sent0"]["attention_mask"]))
    assert bias.requires_grad  # the reference does not freeze the template pass
    embeddings = objective.embed(encoder, batch)
    assert not torch.allclose(embeddings["view1"], embeddings["view2"], atol=1e-4)
    objective.loss(embeddings, batch)["contrastive"].backward()
    assert objective.head.dense.weight.grad is not None


def test_objective_refuses_a_non_prompt_pooler_and_equal_templates():
    with pytest.raises(CsekitError, match="set pooler to mask_denoised or mask"):
        build_objective("promptbert", make_tiny_encoder("cls"))
    with pytest.raises(CsekitError, match="must differ"):
        build_objective("promptbert", make_tiny_encoder("mask"), options={"positive_template": TEMPLATE})


def test_trainer_evaluates_and_saves_with_the_prompt_pooler(tmp_path, data_dir):
    model = tmp_path / "tiny"
    make_tiny_encoder("mask").save(model)  # saved with the default template; the objective sets its own
    recipe = write_recipe(tmp_path, model, objective="promptbert", pooler="mask_denoised", mlp_only_train=False,
                          max_steps=2, eval_steps=2, save_steps=0, eval_tasks="stsb", data_dir=str(data_dir))  # fmt: skip
    from csekit.cli.main import main

    assert main(["train", str(recipe)]) == 0
    run = yaml.safe_load(recipe.read_text())["output_dir"]
    records = [json.loads(line) for line in open(f"{run}/metrics.jsonl", encoding="utf-8")]
    assert any("dev/sts/avg" in record for record in records)  # the dev evaluation ran
    best = load_encoder(f"{run}/best")
    assert best.pooler.name == "mask_denoised" and best.pooler.prompt.template == TEMPLATE


def test_two_processes_train_like_one_process_with_the_whole_batch(tmp_path):
    """torchrun, 2 gloo ranks x 4 examples == 1 process x 8 (negatives gathered, template passes per rank)."""
    one, two, losses = train_single_and_two_ranks(tmp_path, objective="promptbert", pooler="mask_denoised",
                                                  mlp_only_train=False, max_steps=3)  # fmt: skip
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    # The last LayerNorm's bias shifts h and h^ alike, so its gradient cancels in h - h^ and is float
    # noise, which Adam turns into full steps; a few other near-zero gradient entries flip the same way.
    # A wrong distributed gradient would move nearly every weight off.
    others = [name for name in one if name != "encoder.layer.1.output.LayerNorm.bias"]
    off = sum(int((~torch.isclose(two[name], one[name], atol=1e-5, rtol=1e-4)).sum()) for name in others)
    assert off <= 1e-4 * sum(one[name].numel() for name in others)
