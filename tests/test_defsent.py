"""DefSent: the loss against a naive pass through the masked LM's own head, one-token headwords only, the
frozen prediction layer and embeddings, and the WordNet dictionary."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_encoder, shared_file
from test_objectives_contract import TINY_MLM
from transformers import BertForMaskedLM

from csekit import CsekitError
from csekit.data.collate import pad_batch
from csekit.data.dictionary import definition_of, wordnet_data_files
from csekit.data.readers import read_examples
from csekit.objectives import RunContext, build_objective

DEFINITIONS = ["a man who plays the guitar .", "two dogs that run .", "the market of a town .", "a red car ."]
HEADWORDS = ["man", "dogs", "market place", "car"]


def _column(encoder, texts):
    ids = encoder.tokenize(texts)
    return pad_batch([{key: ids[key][i] for key in ids} for i in range(len(texts))], encoder.pad_token_id)


def _defsent(pooler: str = "mean"):
    encoder = make_tiny_encoder(pooler).double().train()
    objective = build_objective("defsent", encoder, context=RunContext(model=TINY_MLM)).double()
    batch = {"sent0": _column(encoder, DEFINITIONS), "sent1": _column(encoder, HEADWORDS)}
    return encoder, objective, batch


@pytest.mark.parametrize("pooler", ["cls_before_pooler", "mean", "max"])
def test_the_loss_is_the_cross_entropy_of_the_masked_lms_own_head_over_one_token_headwords(pooler):
    encoder, objective, batch = _defsent(pooler)
    embeddings = objective.embed(encoder, batch)
    loss = objective.loss(embeddings, batch)["headword"]
    # Naively: the checkpoint's cls.predictions over each definition's embedding, -log p(headword), averaged
    # over the headwords that are one token.
    head = BertForMaskedLM.from_pretrained(TINY_MLM).double().cls
    tokenizer = encoder.tokenizer
    terms = []
    for i, word in enumerate(HEADWORDS):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            continue
        logits = head(embeddings["definition"][i : i + 1])[0]  # (V,)
        terms.append(torch.logsumexp(logits, dim=0) - logits[ids[0]])
    assert 0 < len(terms) < len(HEADWORDS)  # "market place" is two tokens: no term
    expected = torch.stack(terms).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    (got,) = torch.autograd.grad(loss, embeddings["definition"], retain_graph=True)
    (want,) = torch.autograd.grad(expected, embeddings["definition"])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_the_prediction_layer_and_the_embeddings_stay_frozen_while_the_layers_train():
    encoder, objective, batch = _defsent()
    trainable = [p for p in [*encoder.parameters(), *objective.parameters()] if p.requires_grad]
    frozen = {**{f"head.{k}": v.clone() for k, v in objective.prediction_layer.state_dict().items()},
              **{f"emb.{k}": v.clone() for k, v in encoder.backbone.embeddings.state_dict().items()}}  # fmt: skip
    layers = {k: v.clone() for k, v in encoder.backbone.encoder.state_dict().items()}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    objective(encoder, batch)["headword"].backward()
    optimizer.step()
    now = {**{f"head.{k}": v for k, v in objective.prediction_layer.state_dict().items()},
           **{f"emb.{k}": v for k, v in encoder.backbone.embeddings.state_dict().items()}}  # fmt: skip
    assert all(torch.equal(frozen[k], now[k]) for k in frozen)
    assert any(not torch.equal(layers[k], v) for k, v in encoder.backbone.encoder.state_dict().items())
    assert not any(p.requires_grad for p in objective.parameters())


def test_a_batch_without_one_token_headwords_has_a_zero_loss_with_a_gradient():
    encoder, objective, batch = _defsent()
    batch["sent1"] = _column(encoder, ["market place"] * 4)
    loss = objective(encoder, batch)["headword"]
    assert loss.item() == 0.0 and loss.requires_grad


def test_a_checkpoint_without_a_masked_lm_head_is_refused():
    with pytest.raises(CsekitError, match="needs the starting model's checkpoint"):
        build_objective("defsent", make_tiny_encoder())


def test_wordnet_definitions_are_the_shared_glosses_with_their_one_word_headwords():
    folder = wordnet_data_files("/usr/share/wordnet", check=False)[0].parent
    if not folder.joinpath("data.noun").is_file():
        pytest.skip("needs the WordNet 3.0 database in /usr/share/wordnet (apt-get install wordnet-base)")
    glosses = shared_file("data/train/unsup/wordnet30_glosses.txt").read_text(encoding="utf-8").splitlines()
    definitions = [definition_of(line.partition(" | ")[2]) for path in wordnet_data_files(folder)
                   for line in path.open(encoding="utf-8") if not line.startswith("  ")]  # fmt: skip
    assert len(definitions) == len(glosses) == 117_659
    # The same text in the same order, but for 143 glosses whose examples are malformed in the database (an
    # opening quote missing): the file and definition_of end those definitions at different places.
    differing = [(a, b) for a, b in zip(glosses, definitions) if a != b]
    assert len(differing) == 143
    examples = list(read_examples(f"wordnet:{folder}", columns=("sent0", "sent1")))
    assert examples[:2] == [{"sent0": glosses[0], "sent1": "entity"}, {"sent0": glosses[2], "sent1": "abstraction"}]
    assert all("_" not in example["sent1"] for example in examples) and len(examples) == 138_896


def test_a_folder_without_wordnet_is_named(tmp_path):
    with pytest.raises(CsekitError, match="is no WordNet database .*apt-get install wordnet-base"):
        list(read_examples(f"wordnet:{tmp_path}", columns=("sent0", "sent1")))
