"""SimCSE's losses against a naive reference, and the dropout views that unsupervised SimCSE needs."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import make_tiny_encoder

from csekit.objectives import build_objective
from csekit.training.config import TrainConfig
from csekit.training.trainer import build_model

SENTENCES = ["a man plays the guitar .", "two dogs run in a field .", "the stock market fell today .",
             "a woman is slicing an onion ."]  # fmt: skip


def naive_simcse_loss(anchors, positives, negatives=None, temperature=0.05, hard_negative_weight=0.0):
    """SimCSE Eq. 4/5 with loops, in float64; ``hard_negative_weight`` is added to the own hard negative's logit."""
    anchors, positives = anchors.double(), positives.double()
    candidates = positives if negatives is None else torch.cat([positives, negatives.double()])
    size, total = len(anchors), 0.0
    for i in range(size):
        logits = []
        for j in range(len(candidates)):
            cosine = torch.dot(anchors[i], candidates[j]) / (anchors[i].norm() * candidates[j].norm())
            logit = cosine / temperature
            if negatives is not None and j == size + i:
                logit = logit + hard_negative_weight
            logits.append(logit)
        logits = torch.stack(logits)
        total += -(logits[i] - torch.logsumexp(logits, 0))
    return total / size


def tokens(encoder, texts):
    from csekit.data.collate import pad_batch

    ids = encoder.tokenize(texts)
    return pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], encoder.tokenizer.pad_token_id)


def test_unsupervised_loss_matches_naive_reference():
    encoder = make_tiny_encoder(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).train()
    objective = build_objective("simcse", encoder, options={"temperature": 0.05})
    torch.manual_seed(3)
    embeddings = objective.embed(encoder, {"sent0": tokens(encoder, SENTENCES)})
    loss = objective.loss(embeddings, {})["contrastive"]
    expected = naive_simcse_loss(embeddings["view1"], embeddings["view2"])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("weight", [0.0, 0.5, math.log(3.0)])
def test_supervised_loss_with_hard_negatives_matches_naive_reference(weight):
    encoder = make_tiny_encoder(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0).eval()
    objective = build_objective("simcse_sup", encoder, options={"temperature": 0.05, "hard_negative_weight": weight})
    batch = {"sent0": tokens(encoder, SENTENCES), "sent1": tokens(encoder, SENTENCES[::-1]),
             "hard_neg": tokens(encoder, ["nothing at all .", "x", "a cat sleeps on the warm sofa today .", "no"])}  # fmt: skip
    embeddings = objective.embed(encoder, batch)
    # One stacked forward pass must equal three separate ones (padding does not leak).
    alone = encoder(**batch["hard_neg"])
    torch.testing.assert_close(embeddings["hard_neg"], alone, atol=1e-5, rtol=1e-5)
    loss = objective.loss(embeddings, batch)["contrastive"]
    expected = naive_simcse_loss(embeddings["sent0"], embeddings["sent1"], embeddings["hard_neg"],
                                 hard_negative_weight=weight)  # fmt: skip
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_training_model_has_dropout_on_and_views_differ_only_in_training(bert_mini):
    # from_pretrained returns an eval-mode model; the trainer's build_model must switch dropout on.
    config = TrainConfig(model=str(bert_mini), objective="simcse", mlp_only_train=True)
    encoder, objective = build_model(config)
    batch = {"sent0": tokens(encoder, SENTENCES)}
    views = objective.embed(encoder, batch)
    assert encoder.training
    assert not torch.allclose(views["view1"], views["view2"], atol=1e-4)
    encoder.eval()
    with torch.no_grad():
        views = objective.embed(encoder, batch)
    torch.testing.assert_close(views["view1"], views["view2"])


def test_mlm_auxiliary_term_is_weighted_and_trains_the_backbone(bert_mini):
    config = TrainConfig(model=str(bert_mini), objective="simcse", wrappers={"mlm": {"weight": 0.1}})
    encoder, objective = build_model(config)
    encoder.eval()  # the pretrained head's quality, without dropout's noise (gradients flow all the same)
    torch.manual_seed(0)
    terms = objective(encoder, {"sent0": tokens(encoder, SENTENCES * 16)})
    assert set(terms) == {"contrastive", "mlm"}
    # A masked LM that was pretrained on this vocabulary predicts masked words far better than chance.
    assert 0 < terms["mlm"].item() / 0.1 < math.log(len(encoder.tokenizer)) / 2
    terms["mlm"].backward()
    assert encoder.backbone.get_input_embeddings().weight.grad is not None
