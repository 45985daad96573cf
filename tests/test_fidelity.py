"""Where csekit departed from the authors' code, now made faithful, each against a naive re-statement of
the reference's behaviour: SimCSE's auxiliary MLM term, SimCSE's fresh ``cls`` head, PromptBERT's test-time
period (GCSE's independent base head is in test_debias.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_encoder
from transformers import BertForMaskedLM, BertModel

import csekit.objectives.mlm as mlm
from csekit import load_encoder
from csekit.data.collate import pad_batch
from csekit.models.modules import MLPHead
from csekit.objectives import RunContext, build_objective
from csekit.training.config import TrainConfig
from csekit.training.trainer import build_model

SENTENCES = ["a man plays the guitar .", "two dogs run in a field .", "the stock market fell today .",
             "a woman is slicing an onion ."]  # fmt: skip


def tokens(encoder, texts):
    ids = encoder.tokenize(texts)
    return pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], encoder.pad_token_id)


def _record_masks(monkeypatch) -> list:
    """Every (masked ids, labels) the MLM wrapper draws."""
    drawn, original = [], mlm.mask_tokens

    def recording(*args, **kwargs):
        drawn.append(original(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(mlm, "mask_tokens", recording)
    return drawn


def naive_mlm_loss(backbone, head, masked_ids, attention_mask, labels) -> torch.Tensor:
    """SimCSE's ``masked_lm_loss``: one cross-entropy mean over every masked token of the flattened batch,
    token by token, in the model's dtype."""
    hidden = backbone(input_ids=masked_ids, attention_mask=attention_mask).last_hidden_state
    total, count = 0.0, 0
    for i in range(masked_ids.shape[0]):
        for t in range(masked_ids.shape[1]):
            if labels[i, t] != -100:
                scores = head(hidden[i : i + 1, t : t + 1])[0, 0]  # (V,)
                total = total - torch.log_softmax(scores, dim=0)[labels[i, t]]
                count += 1
    return total / count


@pytest.mark.parametrize(("objective", "views"), [("simcse", 2), ("simcse_sup", 3)])
def test_mlm_masks_every_sentence_of_the_forward_pass_with_its_own_pretrained_head(monkeypatch, objective, views,
                                                                                    bert_mini):
    drawn = _record_masks(monkeypatch)
    config = TrainConfig(model=str(bert_mini), objective=objective, wrappers={"mlm": {"weight": 0.1}},
                         pooler="cls", dropout=0.0)  # fmt: skip
    encoder, wrapper = build_model(config)
    encoder, wrapper = encoder.double(), wrapper.double()  # a float64 run keeps float64
    batch = {column: tokens(encoder, SENTENCES[shift:] + SENTENCES[:shift]) for shift, column in enumerate(wrapper.columns)}
    torch.manual_seed(0)
    terms = wrapper(encoder, batch)
    (masked, labels), = drawn
    # The reference's collator masks the flattened batch: each of the views of each sentence (unsupervised
    # SimCSE's two copies of the anchor; supervised SimCSE's anchor, positive and hard negative).
    expected_rows = torch.cat([batch[column]["input_ids"] for column in wrapper.views])
    assert wrapper.views == (("sent0",) * 2 if objective == "simcse" else ("sent0", "sent1", "hard_neg"))
    assert masked.shape[0] == views * len(SENTENCES) and torch.equal(labels[labels != -100], expected_rows[labels != -100])
    # Its own copy of the pretrained MLM head (train.py: lm_head.load_state_dict(cls.predictions.state_dict())).
    pretrained = BertForMaskedLM.from_pretrained(bert_mini).cls.double()
    for (name, ours), theirs in zip(wrapper.head.state_dict().items(), pretrained.state_dict().values(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0, msg=name)
    assert wrapper.head.predictions.decoder.weight is not encoder.backbone.get_input_embeddings().weight
    attention = torch.cat([batch[column]["attention_mask"] for column in wrapper.views])
    encoder.eval()  # dropout is 0: the naive pass equals the training one
    naive = naive_mlm_loss(encoder.backbone, wrapper.head, masked, attention, labels)
    assert terms["mlm"].dtype == torch.float64
    assert terms["mlm"].item() == pytest.approx(0.1 * naive.item(), rel=1e-10)
    # It trains on its own: the decoder's gradient is the head's, not the word embeddings'.
    terms["mlm"].backward()
    assert wrapper.head.predictions.decoder.weight.grad is not None


def test_mlm_can_keep_csekits_earlier_form(monkeypatch, bert_mini):
    drawn = _record_masks(monkeypatch)
    encoder = load_encoder(str(bert_mini), pooler="cls")
    wrapper = build_objective("simcse", encoder, context=RunContext(model=str(bert_mini)),
                              wrappers={"mlm": {"sentences": "anchors", "tie_decoder": True}})  # fmt: skip
    wrapper(encoder, {"sent0": tokens(encoder, SENTENCES)})
    assert drawn[0][0].shape[0] == len(SENTENCES)  # the anchors only
    assert wrapper.head.predictions.decoder.weight is encoder.backbone.get_input_embeddings().weight


def test_training_starts_the_cls_head_fresh_while_evaluation_reads_the_checkpoints_pooler(tmp_path):
    """SimCSE's MLPLayer is new in training (its maintainers keep it so, issue #179); its evaluation of a raw
    checkpoint with ``--pooler cls`` reads BERT's own pretrained pooler (``pooler_output``)."""
    torch.manual_seed(0)
    tiny = make_tiny_encoder()
    checkpoint = BertModel(tiny.backbone.config, add_pooling_layer=True)
    with torch.no_grad():
        checkpoint.pooler.dense.weight.fill_(0.5)
    checkpoint.save_pretrained(tmp_path / "bert")
    tiny.tokenizer.save_pretrained(tmp_path / "bert")
    evaluated = load_encoder(str(tmp_path / "bert"), pooler="cls")
    torch.testing.assert_close(evaluated.head.dense.weight, checkpoint.pooler.dense.weight)

    config = TrainConfig(model=str(tmp_path / "bert"), objective="simcse", pooler="cls")
    torch.manual_seed(4)
    encoder, _ = build_model(config)
    # A naive re-statement: loading, then BERT's initialisation of one new dense + tanh layer.
    torch.manual_seed(4)
    reference = load_encoder(str(tmp_path / "bert"), pooler="mean")
    expected = MLPHead(reference.backbone.config.hidden_size).reset_parameters(0.02)
    torch.testing.assert_close(encoder.head.dense.weight, expected.dense.weight, rtol=0, atol=0)
    assert not encoder.head.dense.bias.any()
    pretrained, _ = build_model(TrainConfig(model=str(tmp_path / "bert"), objective="simcse", head_init="pretrained"))
    torch.testing.assert_close(pretrained.head.dense.weight, checkpoint.pooler.dense.weight)


def test_prompt_poolers_end_a_sentence_with_a_period_at_inference_as_promptberts_test_protocol():
    encoder = make_tiny_encoder("mask_denoised").eval()
    texts = ["a man plays", "is it so?", 'he said "yes"', "it's", "done .", ""]

    def reference_batcher(sentence: str) -> str:  # evaluation.py's batcher, the text before the template
        if len(sentence) > 0 and sentence[-1] not in '.?"\'':
            sentence += "."
        return sentence

    assert encoder.pooler.inference_texts(texts) == [reference_batcher(text) for text in texts]
    periods = encoder.encode([reference_batcher(text) for text in texts])
    without = type(encoder.pooler)(encoder.pooler.prompt, end_with_period=False)
    plain = make_tiny_encoder("mask_denoised").eval().set_pooler(without)
    assert float(abs(encoder.encode(texts) - plain.encode([reference_batcher(t) for t in texts])).max()) < 1e-6
    assert float(abs(encoder.encode(texts) - periods).max()) < 1e-6
    assert float(abs(encoder.encode(texts) - plain.encode(texts)).max()) > 1e-3  # the period changes the embedding
    # Training data is tokenized as it is, as the reference's train.py does.
    assert encoder.tokenize(["a man plays"]) != encoder.tokenize(["a man plays."])
