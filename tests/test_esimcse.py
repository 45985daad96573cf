"""ESimCSE: word repetition, the loss with a momentum queue, the momentum update, the queue's FIFO
order, gradient cache, two ranks equal to one process, and a resumed run that restores the queue."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_resume_restores_the_queue, make_tiny_encoder, train_single_and_two_ranks, write_recipe

from csekit.augment.repetition import repeat_tokens
from csekit.data.collate import pad_batch
from csekit.errors import CsekitError
from csekit.objectives import RunContext, build_objective
from csekit.training.grad_cache import grad_cache_step, split_batch
from csekit.training.trainer import _unique_trainable

SENTENCES = ["a man plays the guitar .", "two dogs run in a field .", "the stock market fell sharply today .",
             "a woman is slicing an onion .", "kids play .",
             "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen"]  # fmt: skip
# Every token distinct within its sentence, so a repeated view collapses back to its original exactly.
DISTINCT = ["alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma",
            "red green blue", "one two three four five six seven eight nine ten", "hello"]  # fmt: skip


def tokens(encoder, texts):
    ids = encoder.tokenize(texts)
    return pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], encoder.tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def encoder():
    return make_tiny_encoder()


def real_rows(batch):
    """The unpadded token ids of each row."""
    return [row[: int(mask.sum())].tolist() for row, mask in zip(batch["input_ids"], batch["attention_mask"])]


def collapse(row, original):
    """Undo a repetition: drop a token equal to the one before it (original tokens are all distinct)."""
    return [token for i, token in enumerate(row) if i == 0 or token != row[i - 1] or token not in original]


# ------------------------------------------------------------------------------ word repetition
def test_repetition_is_deterministic_given_a_seed_and_differs_across_seeds(encoder):
    batch = tokens(encoder, SENTENCES * 4)
    first = repeat_tokens(batch, generator=torch.Generator().manual_seed(3))
    again = repeat_tokens(batch, generator=torch.Generator().manual_seed(3))
    other = repeat_tokens(batch, generator=torch.Generator().manual_seed(4))
    for key in first:
        assert torch.equal(first[key], again[key])
    assert real_rows(first) != real_rows(other)
    torch.manual_seed(5)  # generator=None: the global RNG, which the trainer seeds and checkpoints
    global_first = repeat_tokens(batch)
    torch.manual_seed(5)
    assert torch.equal(repeat_tokens(batch)["input_ids"], global_first["input_ids"])


def test_repetition_only_doubles_inner_tokens_and_keeps_special_tokens(encoder):
    batch = tokens(encoder, DISTINCT * 25)
    cls, sep, pad = encoder.tokenizer.cls_token_id, encoder.tokenizer.sep_token_id, encoder.tokenizer.pad_token_id
    repeated = repeat_tokens(batch, dup_rate=0.32, pad_token_id=pad, generator=torch.Generator().manual_seed(0))
    assert set(repeated) == {"input_ids", "attention_mask", "token_type_ids"}
    assert repeated["input_ids"].shape == repeated["token_type_ids"].shape == repeated["attention_mask"].shape
    grew = 0
    for original, row, mask, types in zip(real_rows(batch), repeated["input_ids"], repeated["attention_mask"],
                                          repeated["token_type_ids"]):  # fmt: skip
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()  # right padding, as pad_batch gives it
        assert (row[length:] == pad).all() and not types.any()
        new = row[:length].tolist()
        assert new[0] == cls and new[-1] == sep and new.count(cls) == 1 and new.count(sep) == 1 and pad not in new
        assert collapse(new, original) == original  # nothing dropped, reordered or invented
        limit = min(10, int(0.32 * len(original)))
        assert 0 <= len(new) - len(original) <= max(limit - 1, 0)
        grew += len(new) > len(original)
    assert grew > 0


@pytest.mark.parametrize(("words", "expected"), [(30, set(range(10))), (10, {0, 1, 2}), (1, {0})])
def test_number_of_repeated_tokens_is_drawn_as_in_the_reference(encoder, words, expected):
    """N tokens with specials: k uniform in {0, ..., min(10, int(0.32 N)) - 1}; none when int(0.32 N) == 0."""
    sentence = " ".join(["word"] * words)
    batch = tokens(encoder, [sentence] * 400)
    length = batch["input_ids"].shape[1]  # words + [CLS] + [SEP]
    repeated = repeat_tokens(batch, generator=torch.Generator().manual_seed(0))
    extra = {int(mask.sum()) - length for mask in repeated["attention_mask"]}
    assert extra == expected


def test_repetition_respects_max_length_and_keeps_the_end_token(encoder):
    batch = tokens(encoder, DISTINCT * 10)
    longest = batch["input_ids"].shape[1]
    sep = encoder.tokenizer.sep_token_id
    repeated = repeat_tokens(batch, dup_rate=1.0, max_length=longest, generator=torch.Generator().manual_seed(1))
    assert repeated["input_ids"].shape[1] == longest
    for row in real_rows(repeated):
        assert row[-1] == sep and row.count(sep) == 1
    with pytest.raises(CsekitError, match="dup_rate"):
        repeat_tokens(batch, dup_rate=1.5)


# ------------------------------------------------------------------------------ the loss and the queue
def naive_loss_with_queue(anchors, positives, queue, temperature):
    """ESimCSE's loss with loops in float64: positives of the batch and the queue are the negatives."""
    anchors, positives, queue = anchors.double(), positives.double(), queue.double()
    total = 0.0
    for i, anchor in enumerate(anchors):
        logits = torch.stack([torch.dot(anchor, other) / (anchor.norm() * other.norm()) / temperature
                              for other in [*positives, *queue]])  # fmt: skip
        total += -(logits[i] - torch.logsumexp(logits, 0))
    return total / len(anchors)


def test_loss_with_a_queue_matches_naive_reference():
    encoder = make_tiny_encoder(hidden_dropout_prob=0.1).train()
    objective = build_objective("esimcse", encoder, options={"temperature": 0.05}, context=RunContext(batch_size=4)).train()
    objective.enqueue(torch.randn(7, encoder.embedding_dim))
    torch.manual_seed(0)
    embeddings = objective.embed(encoder, {"sent0": tokens(encoder, SENTENCES)})
    loss = objective.loss(embeddings, {})["contrastive"]
    expected = naive_loss_with_queue(embeddings["anchors"], embeddings["positives"], objective.queue[:7], 0.05)
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)  # float32 logits scaled by 1 / 0.05
    objective.after_micro_batch(embeddings)
    assert int(objective.queue_length) == 7  # the micro-batch hook stages its keys; only a step enqueues them


def test_keys_are_the_momentum_embedding_of_the_original_sentence_without_dropout():
    encoder = make_tiny_encoder(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3).train()
    objective = build_objective("esimcse", encoder).train()
    batch = {"sent0": tokens(encoder, SENTENCES)}
    keys = objective.embed(encoder, batch)["keys"]
    assert not keys.requires_grad
    encoder.eval()  # the momentum encoder starts as a copy; eval: dropout off, head on (head_at_inference)
    with torch.no_grad():
        torch.testing.assert_close(keys, encoder(**batch["sent0"]))


def test_momentum_update_follows_the_formula_and_the_momentum_encoder_stays_frozen():
    encoder = make_tiny_encoder(hidden_dropout_prob=0.1).train()
    objective = build_objective("esimcse", encoder, options={"momentum": 0.9}).train()
    momentum = objective.momentum_encoder
    assert not momentum.training and momentum.head is None
    assert all(not p.requires_grad for p in momentum.parameters())
    trainable = {id(p) for p in _unique_trainable(encoder, objective)}
    assert not trainable & {id(p) for p in momentum.parameters()}
    before = {name: p.clone() for name, p in momentum.backbone.named_parameters()}
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(torch.randn_like(p))
    objective.after_step(encoder)
    online = dict(encoder.backbone.named_parameters())
    for name, p in momentum.backbone.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[name] + 0.1 * online[name], rtol=1e-6, atol=1e-6)
    assert not torch.equal(p, before[name])


def test_queue_is_fifo_of_the_staged_keys_and_bounded():
    encoder = make_tiny_encoder()
    objective = build_objective("esimcse", encoder, context=RunContext(batch_size=4)).train()  # 2.5 x 4 = 10 rows
    width = encoder.embedding_dim
    anchors = torch.randn(4, width)
    keys_per_step = [torch.arange(4.0 * s, 4.0 * s + 4).unsqueeze(1).expand(4, width) for s in range(4)]
    lengths = []
    for keys in keys_per_step:
        objective.after_micro_batch({"anchors": anchors, "positives": anchors + 0.1, "keys": keys})
        objective.after_step(encoder)
        lengths.append(int(objective.queue_length))
    assert lengths == [4, 8, 10, 10]
    assert objective.queue[:, 0].tolist() == list(range(6, 16))  # the newest 10 keys, oldest first
    # Gradient accumulation: both micro-batches' keys enter at the step, in order.
    for keys in keys_per_step[:2]:
        objective.after_micro_batch({"anchors": anchors, "positives": anchors, "keys": keys + 100})
    assert objective.queue[:, 0].tolist() == list(range(6, 16))
    objective.after_step(encoder)
    assert objective.queue[:, 0].tolist() == [14, 15, *range(100, 108)]


def test_gradient_cache_with_a_full_queue_equals_the_plain_step_and_stages_keys_once():
    encoder = make_tiny_encoder(hidden_dropout_prob=0.1).train()
    objective = build_objective("esimcse", encoder, context=RunContext(batch_size=6)).train()
    objective.enqueue(torch.randn(15, encoder.embedding_dim))
    batch = {"sent0": tokens(encoder, SENTENCES)}
    params = [p for p in encoder.parameters() if p.requires_grad]
    torch.manual_seed(2)  # the plain step embeds the same chunks in the same order (same draws)
    parts = [objective.embed(encoder, chunk) for chunk in split_batch(batch, 2)]
    joined = {key: torch.cat([part[key] for part in parts]) for key in parts[0]}
    plain = objective.loss(joined, batch)["contrastive"]
    plain.backward()
    objective.after_micro_batch(joined)
    plain_grads = [p.grad.clone() for p in params]
    plain_keys = objective._staged.pop()
    encoder.zero_grad()
    torch.manual_seed(2)
    cached = grad_cache_step(objective, encoder, batch, 2)["contrastive"]
    assert cached.item() == pytest.approx(plain.item(), abs=1e-6)
    for expected, param in zip(plain_grads, params):
        torch.testing.assert_close(param.grad, expected, atol=1e-6, rtol=1e-5)
    assert len(objective._staged) == 1  # embed ran twice per chunk, the loss once
    torch.testing.assert_close(objective._staged[0], plain_keys)


def test_bad_options_are_one_line_errors():
    encoder = make_tiny_encoder()
    for options, word in [({"dup_rate": 1.5}, "dup_rate"), ({"momentum": 2}, "momentum"),
                          ({"queue_ratio": -1}, "queue_ratio")]:  # fmt: skip
        with pytest.raises(CsekitError, match=word):
            build_objective("esimcse", encoder, options=options)


# ------------------------------------------------------------------------------ training runs
def test_two_processes_train_like_one_process_with_the_whole_batch(tmp_path):
    """2 gloo ranks x 4 == 1 process x 8: queue keys gathered in rank order (eviction included:
    2.5 x 8 = 20 rows, full from step 3). No repetition: its draws, like dropout masks, are per rank.
    Mean pooling: a random [CLS] head makes every first-step similarity alike, and Adam's first step
    (the gradient's sign) turns float noise into visible differences."""
    options = {"dup_rate": 0.0, "queue_ratio": 2.5}
    one, two, losses = train_single_and_two_ranks(tmp_path, objective="esimcse", max_steps=4, options=options,
                                                  pooler="mean")  # fmt: skip
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_resumed_run_restores_queue_and_momentum_encoder(tmp_path):
    model = tmp_path / "tiny"
    make_tiny_encoder(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).save(model)
    recipe = write_recipe(tmp_path, model, objective="esimcse", max_steps=6, save_steps=4, options={"momentum": 0.9})
    saved = assert_resume_restores_the_queue(recipe, tmp_path / "run", "objective.queue_length")
    assert int(saved["objective.queue_length"]) == 20  # 2.5 x 8; 4 steps x 8 keys, the oldest dropped
    assert any(key.startswith("objective.momentum_encoder.backbone.") for key in saved)
