"""Poolers against a naive per-sentence reference, and the layer/padding facts each one relies on."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import make_tiny_encoder, tiny_config

from csekit import CsekitError
from csekit.models import POOLERS
from csekit.models.pooling import build_pooler, check_pooler

#: SimCSE's poolers of the sentence's own tokens; the prompt poolers (mask) are tested in test_promptbert.py,
#: the training-free ones (layer_mean, ditto) in test_postprocess.py.
TOKEN_POOLERS = [name for name, cls in POOLERS.items() if cls.__module__ == "csekit.models.pooling"]
NEEDS_HIDDEN_STATES = {name for name in TOKEN_POOLERS if POOLERS[name].needs_hidden_states}


def pool(name: str, last_hidden: torch.Tensor, hidden_states, mask: torch.Tensor) -> torch.Tensor:
    """The pooler registered as ``name`` over hand-made backbone outputs."""
    layers = len(hidden_states) - 1 if hidden_states is not None else 2
    pooler = build_pooler(name, config=tiny_config(num_hidden_layers=layers), tokenizer=None)
    outputs = SimpleNamespace(last_hidden_state=last_hidden, hidden_states=hidden_states)
    return pooler(outputs, {"attention_mask": mask}, None)

# Sentences of different lengths, so a batch of them is padded (the short ones by many tokens).
TEXTS = [
    "a man is playing a guitar .",
    "hi",
    "the quick brown fox jumps over the lazy dog while a cat watches from the window .",
    "two dogs run",
]
# Three layers, so hidden_states[1] (first block), [-2] and [-1] are three different tensors and a
# pooler that picks the wrong layer cannot pass by coincidence (with two layers [1] == [-2]).
LAYERS = 3


def _token_mean(layer_states: list[torch.Tensor], sentence: int, real: list[int]) -> torch.Tensor:
    """Mean over the real tokens of one sentence of the average of the given layers, in float64."""
    total = torch.zeros(layer_states[0].shape[-1], dtype=torch.float64)
    for t in real:
        total += sum(states[sentence, t].double() for states in layer_states) / len(layer_states)
    return total / len(real)


def _reference_pool(name: str, hidden_states: tuple[torch.Tensor, ...], mask: torch.Tensor) -> torch.Tensor:
    """SimCSE's poolers written as plain loops over each sentence's real tokens (padding never read)."""
    batch, _, width = hidden_states[-1].shape
    rows = []
    for i in range(batch):
        real = [t for t in range(mask.shape[1]) if mask[i, t] == 1]
        if name in ("cls", "cls_before_pooler"):
            rows.append(hidden_states[-1][i, 0].double())
        elif name == "mean":
            rows.append(_token_mean([hidden_states[-1]], i, real))
        elif name == "max":
            best = [max(hidden_states[-1][i, t, h].item() for t in real) for h in range(width)]
            rows.append(torch.tensor(best, dtype=torch.float64))
        elif name == "first_last_avg":
            rows.append(_token_mean([hidden_states[1], hidden_states[-1]], i, real))
        elif name == "last2avg":
            rows.append(_token_mean([hidden_states[-2], hidden_states[-1]], i, real))
        elif name == "last_token":
            rows.append(hidden_states[-1][i, real[-1]].double())
        else:
            raise AssertionError(f"pooler {name!r} has no reference here: add one")
    return torch.stack(rows)  # (B, H)


def _backbone_outputs(encoder, texts: list[str]):
    batch = encoder.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        outputs = encoder.backbone(**batch, output_hidden_states=True, return_dict=True)
    return outputs, batch["attention_mask"]


@pytest.mark.parametrize("name", TOKEN_POOLERS)
def test_pool_matches_per_sentence_reference(name):
    encoder = make_tiny_encoder(num_hidden_layers=LAYERS).eval()
    outputs, mask = _backbone_outputs(encoder, TEXTS)
    assert (mask == 0).any(), "the batch must contain padding for this test to mean anything"
    hidden = outputs.hidden_states if name in NEEDS_HIDDEN_STATES else None
    pooled = pool(name, outputs.last_hidden_state, hidden, mask)
    expected = _reference_pool(name, outputs.hidden_states, mask)
    assert pooled.shape == (len(TEXTS), encoder.embedding_dim)
    torch.testing.assert_close(pooled.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TOKEN_POOLERS)
def test_encoder_forward_matches_reference(name):
    # The whole forward path (backbone call, hidden-state flag, head) against the reference; for
    # "cls" the encoder adds its MLP head over the [CLS] state.
    encoder = make_tiny_encoder(name, num_hidden_layers=LAYERS).eval()
    outputs, mask = _backbone_outputs(encoder, TEXTS)
    expected = _reference_pool(name, outputs.hidden_states, mask).float()
    if name == "cls":
        with torch.no_grad():
            expected = encoder.head(expected)
    batch = encoder.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        embeddings = encoder(**batch)
    torch.testing.assert_close(embeddings, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", TOKEN_POOLERS)
def test_sentence_alone_equals_sentence_in_padded_batch(name):
    encoder = make_tiny_encoder(name, num_hidden_layers=LAYERS).eval()
    short = "two dogs run"
    batch = encoder.tokenizer([TEXTS[2], short], padding=True, return_tensors="pt")
    alone = encoder.tokenizer([short], return_tensors="pt")
    assert batch["input_ids"].shape[1] > alone["input_ids"].shape[1], "the short sentence must be padded"
    with torch.no_grad():
        in_batch = encoder(**batch)[1]
        by_itself = encoder(**alone)[0]
    torch.testing.assert_close(in_batch, by_itself, atol=1e-5, rtol=1e-5)


def test_max_ignores_padding_positions():
    # Real tokens are all negative; padding holds huge values (and zeros would also beat the real
    # tokens), so reading padding at all shows up in the result.
    last_hidden = -torch.rand(2, 4, 3) - 1.0  # (B, T, H), values in [-2, -1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    last_hidden[1, 2:] = 1e6
    pooled = pool("max", last_hidden, None, mask)
    torch.testing.assert_close(pooled[0], last_hidden[0].max(dim=0).values)
    torch.testing.assert_close(pooled[1], last_hidden[1, :2].max(dim=0).values)
    assert (pooled < 0).all()


def test_mean_ignores_padding_positions():
    last_hidden = torch.rand(2, 4, 3)  # (B, T, H)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    last_hidden[1, 2:] = 1e6
    pooled = pool("mean", last_hidden, None, mask)
    torch.testing.assert_close(pooled[1], last_hidden[1, :2].mean(dim=0))


def _constant_layers(count: int) -> tuple[torch.Tensor, ...]:
    """hidden_states where layer k (0 = embeddings) is filled with the value k: the output names the layers."""
    return tuple(torch.full((1, 3, 2), float(k)) for k in range(count + 1))  # each (B=1, T=3, H=2)


def test_first_last_avg_uses_first_block_output_and_last_layer():
    layers = 4
    states = _constant_layers(layers)
    mask = torch.ones(1, 3, dtype=torch.long)
    pooled = pool("first_last_avg", states[-1], states, mask)
    # hidden_states[1] (not the embeddings [0]) and hidden_states[-1]: (1 + 4) / 2.
    torch.testing.assert_close(pooled, torch.full((1, 2), (1.0 + layers) / 2))


def test_last2avg_uses_last_two_layers():
    layers = 4
    states = _constant_layers(layers)
    mask = torch.ones(1, 3, dtype=torch.long)
    pooled = pool("last2avg", states[-1], states, mask)
    torch.testing.assert_close(pooled, torch.full((1, 2), (layers - 1.0 + layers) / 2))


def test_layer_poolers_are_declared_as_needing_hidden_states():
    # The encoder asks the backbone for every layer only for these names; a missing entry would
    # crash (hidden_states None) or silently pool the wrong tensors.
    assert NEEDS_HIDDEN_STATES == {"first_last_avg", "last2avg"}
    assert {name for name in TOKEN_POOLERS if not POOLERS[name].needs_hidden_states} == {"cls", "cls_before_pooler",
                                                                                      "mean", "max", "last_token"}
    # mean and last_token read another layer only when given one, and then ask for every layer.
    assert {name: build_pooler(name, config=tiny_config(), tokenizer=None, settings={"layer": 1}).needs_hidden_states
            for name in ("mean", "last_token")} == {"mean": True, "last_token": True}  # fmt: skip


@pytest.mark.parametrize("name", ["avg", "CLS", "", "mean_pooling"])
def test_unknown_pooler_name_raises_a_one_line_error(name):
    with pytest.raises(CsekitError, match="unknown pooler"):
        check_pooler(name)
    with pytest.raises(CsekitError, match="unknown pooler"):
        pool(name, torch.zeros(1, 2, 3), None, torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(CsekitError, match="unknown pooler"):
        make_tiny_encoder(name)
