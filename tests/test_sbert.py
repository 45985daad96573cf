"""Sentence-BERT's classifier is part of the saved model: trained, saved beside the encoder, reloaded with the
same logits; the trainer writes it into best/ and final/, and sentence-transformers still loads the folder."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_encoder, write_recipe
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from csekit.cli.main import main
from csekit.data.collate import pad_batch
from csekit.data.labelled import NLI_LABELS
from csekit.errors import CsekitError
from csekit.models import PairClassifier, load_encoder, load_pair_classifier
from csekit.models.pair_classifier import PAIR_CLASSIFIER
from csekit.objectives import build_objective

PAIRS = [("a man plays the guitar .", "a person makes music .", "entailment"),
         ("two dogs run .", "the dogs are asleep .", "contradiction"),
         ("the market fell today .", "stocks moved .", "neutral"),
         ("she slices an onion .", "someone is cooking .", "entailment"),
         ("kids play in the snow .", "the children are at school .", "contradiction"),
         ("a red car .", "a car is parked .", "neutral")]  # fmt: skip


def tokenized(encoder, texts):
    ids = encoder.tokenize(texts)
    return pad_batch([{key: ids[key][i] for key in ids} for i in range(len(texts))], encoder.pad_token_id)


def batch(encoder) -> dict:
    first, second, labels = zip(*PAIRS)
    return {"sent0": tokenized(encoder, first), "sent1": tokenized(encoder, second),
            "targets": {"label": torch.tensor([NLI_LABELS.index(label) for label in labels])}}  # fmt: skip


def logits(encoder, classifier, texts: list[tuple[str, str, str]]) -> torch.Tensor:
    first, second, _ = zip(*texts)
    u, v = encoder.encode(list(first)), encoder.encode(list(second))
    with torch.no_grad():
        return classifier(torch.from_numpy(u), torch.from_numpy(v))


def test_a_trained_classifier_saves_with_its_encoder_and_reloads_to_the_same_logits(tmp_path):
    encoder = make_tiny_encoder("mean").train()
    objective = build_objective("sbert_softmax", encoder, options={"features": ["u", "v", "|u-v|", "u*v"]})
    start = objective.classifier.linear.weight.detach().clone()
    optimizer = torch.optim.AdamW([*encoder.parameters(), *objective.parameters()], lr=1e-2)
    losses = []
    for _ in range(5):
        terms = objective(encoder, batch(encoder))
        losses.append(float(terms["classification"].detach()))
        terms["classification"].backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0] and not torch.equal(start, objective.classifier.linear.weight)
    encoder.save(tmp_path / "model", heads=objective.saved_heads())

    classifier = load_pair_classifier(tmp_path / "model")
    assert (classifier.labels, classifier.features) == (NLI_LABELS, ("u", "v", "|u-v|", "u*v"))
    reloaded = load_encoder(str(tmp_path / "model"))
    expected = logits(encoder, objective.classifier, PAIRS)
    assert expected.shape == (len(PAIRS), 3)
    torch.testing.assert_close(logits(reloaded, classifier, PAIRS), expected, rtol=0, atol=1e-6)
    # sentence-transformers loads the folder as before: the classifier's folder is not one of its modules.
    assert PAIR_CLASSIFIER not in (tmp_path / "model" / "modules.json").read_text()
    SentenceTransformer(str(tmp_path / "model"), device="cpu")


def test_the_trainer_writes_the_trained_classifier_into_best_and_final(tmp_path):
    model = tmp_path / "tiny"
    make_tiny_encoder("mean").save(model)
    data = tmp_path / "nli.csv"
    data.write_text("sent0,sent1,label\n" + "".join(f"{a},{b},{label}\n" for a, b, label in PAIRS * 4), encoding="utf-8")
    recipe = write_recipe(tmp_path, model, objective="sbert_softmax", pooler="mean", mlp_only_train=False,
                          train_files=[str(data)], max_steps=4, save_steps=4, batch_size=6)  # fmt: skip
    assert main(["train", str(recipe)]) == 0
    run = tmp_path / "run"
    trained = load_file(run / "checkpoint" / "weights.safetensors")["objective.classifier.linear.weight"]
    for folder in ("best", "final"):
        classifier = load_pair_classifier(run / folder)
        torch.testing.assert_close(classifier.linear.weight, trained, rtol=0, atol=0)
        assert json.loads((run / folder / PAIR_CLASSIFIER / "config.json").read_text())["labels"] == list(NLI_LABELS)
    finished = logits(load_encoder(str(run / "final")), load_pair_classifier(run / "final"), PAIRS)
    assert torch.isfinite(finished).all()


def test_a_model_without_a_classifier_says_so_in_one_line(tmp_path):
    make_tiny_encoder().save(tmp_path / "plain")
    with pytest.raises(CsekitError, match="holds no pair classifier"):
        load_pair_classifier(tmp_path / "plain")
    (tmp_path / "broken" / PAIR_CLASSIFIER).mkdir(parents=True)
    with pytest.raises(CsekitError, match="cannot load the pair classifier"):
        load_pair_classifier(tmp_path / "broken")
    with pytest.raises(CsekitError, match="pair features u-v"):
        PairClassifier(4, NLI_LABELS, features=["u", "u-v"])


def test_unknown_features_are_a_one_line_error():
    with pytest.raises(CsekitError, match="choose from u, v"):
        build_objective("sbert_softmax", make_tiny_encoder(), options={"features": ["u", "v", "uv"]})
