"""DiffCSE: the conditional RTD loss against a naive per-token loop, its labels, the frozen generator,
the conditioning, the BatchNorm projector, and two gloo ranks against one process with the whole batch."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from conftest import make_tiny_encoder, needs_bert_token_ids, run_gloo_workers, tiny_config
from torch import nn
from transformers import BertForMaskedLM, BertModel

import csekit.objectives.diffcse as diffcse_module
from csekit import losses
from csekit.data.collate import pad_batch
from csekit.errors import CsekitError
from csekit.objectives import RunContext, build_objective
from csekit.objectives.diffcse import BatchNormProjector, DiffCSE, batch_norm_across_ranks, replaced_labels

SENTENCES = ["a man plays the guitar .", "two dogs run in a field .", "the stock market fell sharply today .",
             "a woman is slicing an onion .", "kids play .", "the train leaves at noon .",
             "a cat sits on the warm mat .", "he reads a long novel ."]  # fmt: skip
WORLD_SIZE = 2


@pytest.fixture(scope="module")
def generator(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tiny-mlm")
    torch.manual_seed(0)
    BertForMaskedLM(tiny_config()).save_pretrained(folder)
    return str(folder)


def tokens(encoder, texts, *, max_length: int | None = None) -> dict[str, torch.Tensor]:
    if max_length is not None:  # every shard padded alike, so 2 ranks see the whole batch's positions
        return dict(encoder.tokenizer(list(texts), padding="max_length", max_length=max_length, return_tensors="pt"))
    ids = encoder.tokenize(texts)
    return pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], encoder.tokenizer.pad_token_id)


def fixed_mask(input_ids, attention_mask, tokenizer):
    """Deterministic stand-in for random masking: [MASK] every real, non-special token at positions 1, 4, 7 ..."""
    special = torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids))
    positions = torch.arange(input_ids.shape[1]).expand_as(input_ids)  # (N, T)
    chosen = attention_mask.bool() & ~special & (positions % 3 == 1)
    return input_ids.masked_fill(chosen, tokenizer.mask_token_id)


def build(generator: str, *, batchnorm: bool = False, seed: int = 0) -> tuple:
    """A dropout-free tiny encoder and its DiffCSE objective with deterministic masks."""
    encoder = make_tiny_encoder(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, seed=seed)
    encoder.head_at_inference = False
    torch.manual_seed(seed)
    objective = DiffCSE(encoder, RunContext(), generator=generator, batchnorm=batchnorm, lambda_weight=0.5)
    objective.mask = fixed_mask
    return encoder.train(), objective.train()


# ----------------------------------------------------------------------------------- the RTD loss
def naive_rtd(encoder, objective, batch) -> torch.Tensor:
    """lambda * mean over every position of both copies, one sentence and one token at a time."""
    twice = {key: torch.cat([value, value]) for key, value in batch.items()}
    views = encoder(**twice)  # (2B, H)
    disc, tokenizer = objective.discriminator, encoder.tokenizer
    total, count = 0.0, 0
    for n in range(len(views)):
        row = {key: value[n : n + 1] for key, value in twice.items()}  # (1, T)
        masked = fixed_mask(row["input_ids"], row["attention_mask"], tokenizer)
        logits = objective.generator(input_ids=masked, attention_mask=row["attention_mask"]).logits[0]  # (T, V)
        ids, labels = [], []
        for t in range(masked.shape[1]):
            original, real = row["input_ids"][0, t].item(), row["attention_mask"][0, t].item() == 1
            edited = logits[t].argmax().item()
            ids.append(original if t == 0 else edited if real else tokenizer.pad_token_id)
            labels.append(int(t > 0 and real and edited != original))
        hidden = disc.embeddings(input_ids=torch.tensor([ids]), token_type_ids=row["token_type_ids"])  # (1, T, H)
        hidden = torch.cat([views[n].view(1, 1, -1), hidden[:, 1:]], dim=1)  # the condition at [CLS]
        additive = (1.0 - row["attention_mask"][:, None, None, :].float()) * torch.finfo(torch.float32).min
        states = disc.encoder(hidden, attention_mask=additive).last_hidden_state[0]  # (T, H)
        for t, label in enumerate(labels):
            scores = objective.rtd_head(states[t])  # (2,)
            total = total - torch.log_softmax(scores, dim=0)[label]
            count += 1
    return objective.lambda_weight * total / count


def test_rtd_term_matches_a_naive_per_token_loop(generator):
    encoder, objective = build(generator)
    batch = {"sent0": tokens(encoder, SENTENCES[:4])}  # different lengths: padding counts, as in the reference
    assert (batch["sent0"]["attention_mask"] == 0).any()
    terms = objective(encoder, batch)
    assert set(terms) == {"contrastive", "rtd"}
    expected = naive_rtd(encoder, objective, batch["sent0"])
    assert terms["rtd"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_replaced_labels_compare_every_position_with_the_original():
    original = torch.tensor([[101, 7, 8, 9, 102, 0, 0]])
    edited = torch.tensor([[5, 7, 42, 9, 17, 3, 0]])  # [CLS] and padding differ, but never count
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    assert replaced_labels(original, edited, attention_mask).tolist() == [[0, 0, 1, 0, 1, 0, 0]]


class EchoGenerator(nn.Module):
    """Predicts each input token itself, ``fill`` for [MASK], and ``swap`` at position ``swap_at``."""

    def __init__(self, vocab: int, mask_id: int, fill: int, swap_at: int, swap: int):
        super().__init__()
        self.vocab, self.mask_id, self.fill, self.swap_at, self.swap = vocab, mask_id, fill, swap_at, swap
        self.weight = nn.Parameter(torch.zeros(1))  # so that freezing has something to freeze

    def forward(self, input_ids, attention_mask):
        predicted = input_ids.masked_fill(input_ids == self.mask_id, self.fill)
        predicted[:, self.swap_at] = self.swap
        return SimpleNamespace(logits=nn.functional.one_hot(predicted, self.vocab).float() + 0 * self.weight)


def test_a_token_the_generator_restores_is_not_replaced(generator):
    encoder, objective = build(generator)
    tokenizer = encoder.tokenizer
    the = tokenizer.convert_tokens_to_ids("the")
    objective.generator = EchoGenerator(len(tokenizer), tokenizer.mask_token_id, fill=the, swap_at=2, swap=999)
    nn.init.zeros_(objective.rtd_head.weight)
    with torch.no_grad():
        # a token's loss is log(1 + e^2) when labelled "kept", log(1 + e^-2) when "replaced"
        objective.rtd_head.bias.copy_(torch.tensor([0.0, 2.0]))
    batch = tokens(encoder, ["the the the the the the the .", "a man plays the guitar well ."])
    twice = {key: torch.cat([value, value]) for key, value in batch.items()}
    with torch.no_grad():
        token_loss = objective.rtd_token_loss(encoder(**twice), twice, tokenizer)  # (4, T)
    labels = (token_loss < math.log(2)).long()  # read the label back from each position's loss
    masked = fixed_mask(twice["input_ids"], twice["attention_mask"], tokenizer) == tokenizer.mask_token_id
    expected = (masked & (twice["input_ids"] != the)).long()  # [MASK] filled with "the": replaced unless it was "the"
    expected[:, 2] = (twice["input_ids"][:, 2] != 999).long()  # an unmasked token the generator changed counts too
    expected[twice["attention_mask"] == 0] = 0
    assert labels.tolist() == expected.tolist()
    assert masked[0].any() and expected[0, 1:].tolist().count(1) == 1  # row 0: only the swap, every [MASK] restored


# ----------------------------------------------------------------------------------- the pieces
def test_generator_is_frozen_in_eval_mode_and_the_discriminator_trains(generator):
    encoder, objective = build(generator)
    objective.train()
    assert not objective.generator.training and objective.discriminator.training
    assert not any(p.requires_grad for p in objective.generator.parameters())
    # the discriminator starts as a copy of the encoder (same weights, its own parameters)
    pairs = list(zip(objective.discriminator.parameters(), encoder.backbone.parameters(), strict=True))
    assert all(torch.equal(ours, theirs) and ours is not theirs for ours, theirs in pairs)
    sum(objective(encoder, {"sent0": tokens(encoder, SENTENCES[:4])}).values()).backward()
    assert all(p.grad is None for p in objective.generator.parameters())
    assert all(p.grad is not None for p in objective.discriminator.encoder.parameters())
    assert objective.rtd_head.weight.grad is not None


def test_the_sentence_embedding_conditions_the_discriminator_and_trains_the_encoder(generator):
    encoder, objective = build(generator)
    tokenizer = encoder.tokenizer
    # a generator that ignores context, so that only the discriminator sees position 0
    objective.generator = EchoGenerator(len(tokenizer), tokenizer.mask_token_id, fill=1996, swap_at=2, swap=999)
    batch = tokens(encoder, SENTENCES[:4])
    views = encoder(**batch)  # (B, H)
    loss = objective.rtd_token_loss(views, batch, encoder.tokenizer).mean()
    other = objective.rtd_token_loss(torch.randn_like(views), batch, encoder.tokenizer).mean()
    assert abs(loss.item() - other.item()) > 1e-4
    # h replaces the whole input at position 0: the [CLS] id itself no longer matters
    relabelled = {**batch, "input_ids": batch["input_ids"].clone()}
    relabelled["input_ids"][:, 0] = encoder.tokenizer.convert_tokens_to_ids("the")
    same = objective.rtd_token_loss(views, relabelled, encoder.tokenizer).mean()
    assert same.item() == pytest.approx(loss.item(), abs=1e-6)
    loss.backward()  # not detached: the RTD loss reaches the encoder through h
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.backbone.encoder.parameters())


def test_masking_is_seeded_keeps_special_tokens_and_masks_about_the_ratio(generator):
    encoder = make_tiny_encoder()
    objective = DiffCSE(encoder, RunContext(), generator=generator, masking_ratio=0.3)
    batch = tokens(encoder, SENTENCES * 32)
    draws = []
    for _ in range(2):
        torch.manual_seed(5)
        draws.append(objective.mask(batch["input_ids"], batch["attention_mask"], encoder.tokenizer))
    assert torch.equal(*draws)
    changed = draws[0] != batch["input_ids"]
    special = torch.isin(batch["input_ids"], torch.tensor(encoder.tokenizer.all_special_ids))
    assert not (changed & special).any() and not (changed & (batch["attention_mask"] == 0)).any()
    candidates = (~special & batch["attention_mask"].bool()).sum().item()
    assert 0.22 < changed.sum().item() / candidates < 0.32  # 30% chosen, of which 10% kept as they are


def test_batch_norm_across_ranks_is_batchnorm1d_in_a_single_process():
    features = torch.randn(6, 5)
    reference = nn.BatchNorm1d(5).train()
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5), reference.bias.uniform_(-1, 1)
    ours = batch_norm_across_ranks(features, weight=reference.weight, bias=reference.bias)
    torch.testing.assert_close(ours, reference(features))
    torch.testing.assert_close(batch_norm_across_ranks(features), nn.BatchNorm1d(5, affine=False).train()(features))


def test_batchnorm_projector_is_the_training_head_and_is_dropped_at_inference(generator, tmp_path):
    encoder, objective = build(generator, batchnorm=True)
    assert isinstance(encoder.head, BatchNormProjector) and not objective.supports_grad_cache
    assert objective.supports_grad_cache is False and build(generator)[1].supports_grad_cache
    projector = encoder.head
    shapes = {name: tuple(p.shape) for name, p in projector.named_parameters()}
    assert shapes == {"scale": (64,), "shift": (64,), "expand.weight": (64, 32), "reduce.weight": (32, 64)}  # no biases
    batch = tokens(encoder, SENTENCES[:4])
    trained = encoder(**batch)
    torch.testing.assert_close(trained.mean(0), torch.zeros(32), atol=1e-5, rtol=0)  # last BN: no affine
    encoder.eval()
    states = encoder.backbone(**batch).last_hidden_state[:, 0]  # (B, H): inference is [CLS] as it is
    torch.testing.assert_close(encoder(**batch), states)
    encoder.save(tmp_path / "saved")
    assert "Dense" not in (tmp_path / "saved" / "modules.json").read_text()


def test_bad_options_are_clear_errors(generator, tmp_path):
    encoder = make_tiny_encoder()
    with pytest.raises(CsekitError, match="options.generator"):
        build_objective("diffcse", encoder)
    with pytest.raises(CsekitError, match="mlp_only_train"):
        DiffCSE(encoder, RunContext(), generator=generator, batchnorm=True)
    with pytest.raises(CsekitError, match="pooler: cls"):
        DiffCSE(make_tiny_encoder("mean"), RunContext(), generator=generator, batchnorm=True)
    BertModel(tiny_config()).save_pretrained(tmp_path / "no-head")
    with pytest.raises(CsekitError, match="no pretrained masked-LM head.*options.generator"):
        build_objective("diffcse", encoder, context=RunContext(model=str(tmp_path / "no-head")))
    BertForMaskedLM(tiny_config(vocab_size=1000)).save_pretrained(tmp_path / "small-vocab")
    with pytest.raises(CsekitError, match="vocabulary"):
        DiffCSE(encoder, RunContext(), generator=str(tmp_path / "small-vocab"))
    with pytest.raises(CsekitError, match="masking_ratio"):
        DiffCSE(encoder, RunContext(), generator=generator, masking_ratio=0.0)
    # without options.generator the recipe's model is the generator
    assert isinstance(build_objective("diffcse", encoder, context=RunContext(model=generator)).generator.module, BertForMaskedLM)


# ------------------------------------------------------------------- two ranks == one process
#: case -> (what is broken on purpose in the workers, expected to equal the single process)
CASES = {"diffcse": True, "contrastive-not-gathered": False, "batch-norm-per-rank": False}


def _run(encoder, objective, texts) -> dict:
    batch = {"sent0": tokens(encoder, texts, max_length=16)}
    terms = objective(encoder, batch)
    sum(terms.values()).backward()
    named = [*encoder.named_parameters(prefix="encoder"), *objective.named_parameters(prefix="objective")]
    grads = {name: param.grad.clone() for name, param in named if param.grad is not None}
    return {"terms": {key: value.detach() for key, value in terms.items()}, "grads": grads}


def _build_double(generator: str) -> tuple:
    encoder, objective = build(generator, batchnorm=True)
    return encoder.double(), objective.double()


def _worker(rank: int, port: int, out_dir: str, generator: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        shard = SENTENCES[rank * 4 : rank * 4 + 4]
        results = {}
        for case in CASES:
            patches = {"contrastive-not-gathered": ("info_nce", functools.partial(losses.info_nce, gather=False)),
                       "batch-norm-per-rank": ("all_gather_with_grad", lambda tensor: tensor)}  # fmt: skip
            name, replacement = patches.get(case, (None, None))
            original = getattr(diffcse_module, name) if name else None
            if name:
                setattr(diffcse_module, name, replacement)
            try:
                result = _run(*_build_double(generator), shard)
            finally:
                if name:
                    setattr(diffcse_module, name, original)
            for grad in result["grads"].values():  # what the trainer does after backward
                dist.all_reduce(grad)
                grad /= WORLD_SIZE
            results[case] = result
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory, generator) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ranks")
    return run_gloo_workers(_worker, out_dir, generator, world_size=WORLD_SIZE)


@pytest.mark.parametrize("case", CASES)
def test_two_ranks_equal_one_process_with_the_whole_batch(rank_results, generator, case):
    """Contrastive term and BN statistics gathered, RTD per rank: DDP's mean equals the whole batch."""
    single = _run(*_build_double(generator), SENTENCES)
    ranks = [result[case] for result in rank_results]
    mean_terms = {key: sum(rank["terms"][key] for rank in ranks) / WORLD_SIZE for key in single["terms"]}
    gaps = [abs(mean_terms[key] - value).item() for key, value in single["terms"].items()]
    gaps += [(rank["grads"][name] - grad).abs().max().item() for rank in ranks for name, grad in single["grads"].items()]  # fmt: skip
    assert ranks[0]["grads"].keys() == single["grads"].keys()
    assert any(name.startswith("objective.discriminator") for name in single["grads"])
    if CASES[case]:
        assert max(gaps) < 1e-9, case
    else:  # the check can fail: either shortcut changes the loss or the gradient
        if case == "contrastive-not-gathered":
            needs_bert_token_ids("the margin of this shortcut's gap was measured on")
        assert max(gaps) > 1e-4, case
