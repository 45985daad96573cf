"""Quick-Thoughts: the neighbour classification against a loop, the two encoders (and the shared one),
and contiguous batches of consecutive sentences."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_encoder

from csekit import CsekitError
from csekit.data.batches import TrainingData
from csekit.losses import quick_thoughts
from csekit.objectives import build_objective


def naive_quick_thoughts(first: torch.Tensor, second: torch.Tensor, context_size: int) -> torch.Tensor:
    """S2V's build_loss written out: scores f_i . g_j with 0 on the diagonal, softmax over j, the target
    spread evenly over the neighbours within context_size, cross-entropy averaged over i."""
    size = len(first)
    total = 0.0
    for i in range(size):
        scores = [torch.dot(first[i], second[j]) if j != i else torch.zeros((), dtype=first.dtype) for j in range(size)]
        log_partition = torch.logsumexp(torch.stack(scores), dim=0)
        neighbours = [j for j in range(size) if 1 <= abs(i - j) <= context_size]
        total = total - sum(scores[j] - log_partition for j in neighbours) / len(neighbours)
    return total / size


@pytest.mark.parametrize("context_size", [1, 2])
def test_the_loss_is_s2vs_neighbour_classification_in_value_and_gradient(context_size):
    torch.manual_seed(0)
    first = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    second = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    loss = quick_thoughts(first, second, context_size=context_size)
    expected = naive_quick_thoughts(first, second, context_size)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    for got, want in zip(torch.autograd.grad(loss, [first, second]), torch.autograd.grad(expected, [first, second])):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_two_encoders_train_f_and_g_apart_and_one_shared_encoder_is_f_twice():
    encoder = make_tiny_encoder("mean").train()
    objective = build_objective("quick_thoughts", encoder).train()
    assert objective.context_encoder is not encoder
    ids = encoder.tokenize(["a man plays .", "two dogs run .", "the market fell .", "she slices an onion ."])
    batch = {"sent0": {key: torch.nn.utils.rnn.pad_sequence([torch.tensor(row) for row in value], batch_first=True)
                       for key, value in ids.items()}}  # fmt: skip
    terms = objective(encoder, batch)
    terms["neighbours"].backward()
    assert all(p.grad is not None for p in encoder.backbone.encoder.parameters())
    assert all(p.grad is not None for p in objective.context_encoder.backbone.encoder.parameters())
    assert "context_encoder.backbone.embeddings.word_embeddings.weight" in objective.trainable_state_dict()
    shared = build_objective("quick_thoughts", encoder, options={"shared_encoder": True}).eval()
    embeddings = shared.embed(encoder.eval(), batch)
    assert embeddings["f"] is embeddings["g"] and not list(shared.parameters())
    with pytest.raises(CsekitError, match="context_size must be >= 1"):
        build_objective("quick_thoughts", encoder, options={"context_size": 0})


def _data(tmp_path, lines: int) -> TrainingData:
    text = tmp_path / "ordered.txt"
    text.write_text("".join(f"{i}\n" for i in range(lines)), encoding="utf-8")
    tokenize = lambda texts: {"input_ids": [[int(t) + 5] for t in texts], "attention_mask": [[1] for _ in texts]}  # noqa: E731
    return TrainingData([text], columns=("sent0",), tokenize=tokenize, pad_token_id=0)


def test_contiguous_batches_are_consecutive_lines_in_shuffled_blocks(tmp_path):
    data = _data(tmp_path, 26)
    rows = lambda batches: [(b["sent0"]["input_ids"][:, 0] - 5).tolist() for b in batches]  # noqa: E731
    epoch = rows(data.batches(0, seed=1, batch_size=4, contiguous=True))
    assert len(epoch) == 6 and sorted(epoch) == [list(range(s, s + 4)) for s in range(0, 24, 4)]
    assert epoch != sorted(epoch) or rows(data.batches(1, seed=1, batch_size=4, contiguous=True)) != epoch
    assert epoch == rows(data.batches(0, seed=1, batch_size=4, contiguous=True))  # a pure function of (seed, epoch)
    assert rows(data.batches(0, seed=1, batch_size=4, contiguous=True, skip=2)) == epoch[2:]  # resumable
    # Two ranks take the two halves of each consecutive global block.
    halves = [rows(data.batches(0, seed=1, batch_size=2, contiguous=True, rank=r, world_size=2)) for r in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == epoch
    with pytest.raises(CsekitError, match="contiguous batches"):
        next(data.batches(0, seed=1, batch_size=4, contiguous=True, drop_last=False))


def test_a_run_trains_on_consecutive_lines_and_saves_f_as_a_plain_sentence_transformers_folder(tmp_path):
    from conftest import write_recipe
    from sentence_transformers import SentenceTransformer

    from csekit.cli.main import main
    from csekit.models import load_transformer

    model = tmp_path / "tiny"
    make_tiny_encoder("mean", hidden_dropout_prob=0.1).save(model)
    recipe = write_recipe(tmp_path, model, objective="quick_thoughts", pooler="mean", mlp_only_train=False,
                          max_steps=2)  # fmt: skip
    assert main(["train", str(recipe)]) == 0
    final = tmp_path / "run" / "final"
    stock = SentenceTransformer(str(final), device="cpu").encode(["two dogs run ."])
    ours = load_transformer(str(final), purpose="a test").encode(["two dogs run ."])
    assert stock.shape == (1, 32)  # f alone, the encoder's width
    torch.testing.assert_close(torch.from_numpy(stock), torch.from_numpy(ours), rtol=1e-5, atol=1e-6)
