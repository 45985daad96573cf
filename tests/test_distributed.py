"""Two real processes (gloo, CPU) under DDP train exactly like one process holding the whole batch.

The comparison runs in float64: the two paths add the same numbers in different orders (the
gradient all-reduce, the gathered softmax), and float32 rounding would blur a 1e-6 comparison.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import make_tiny_encoder, run_gloo_workers
from torch.nn.parallel import DistributedDataParallel

from csekit import losses
from csekit.distributed import all_gather_with_grad, get_rank, get_world_size
from csekit.losses import energy_hinge, hard_negative_weights, improved_contrastive, info_nce

WORLD_SIZE = 2
TRIPLETS = [
    ("a man is playing a guitar .", "a person plays an instrument .", "nobody is making music ."),
    ("two dogs run in the snow .", "animals are outside in winter .", "the dogs are asleep indoors ."),
    ("a woman slices an onion .", "someone is cooking .", "the woman is swimming ."),
    ("children play in a park .", "kids are outdoors .", "the children are at school ."),
    ("the train leaves at noon .", "a train departs midday .", "the train was cancelled ."),
    ("a cat sits on the mat .", "an animal is resting .", "the cat is chasing a mouse ."),
    ("he reads a long novel .", "a man is reading a book .", "he is watching television ."),
    ("the market opens early .", "shops open in the morning .", "the market is closed today ."),
]
#: case -> hard-negative weight (None: pairs only, no hard negatives).
CASES = {"pairs": None, "triplets": 0.5}


def _encoder():
    encoder = make_tiny_encoder(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, seed=0)
    return encoder.double().train()


def _loss(model, tokenizer, rows, hard_negative_weight: float | None):
    columns = list(zip(*rows)) if hard_negative_weight is not None else list(zip(*rows))[:2]
    texts = [text for column in columns for text in column]
    tokens = tokenizer(texts, padding=True, return_tensors="pt")  # (k * b, T)
    anchors, *others = model(**tokens).split(len(rows))  # k x (b, H): one forward, as DDP wants
    candidates = torch.cat(others)  # (b or 2b, H)
    weights = None
    if hard_negative_weight is not None:
        weights = hard_negative_weights(len(rows), len(candidates), hard_negative_weight, dtype=torch.float64)
    return info_nce(anchors, candidates, 0.05, weights=weights)


def _improved_contrastive_loss(model, tokenizer, rows):
    """GTE's loss over (premise, entailment) pairs: every partition sum runs over the queries and documents of all ranks."""
    texts = [row[0] for row in rows] + [row[1] for row in rows]
    queries, documents = model(**tokenizer(texts, padding=True, return_tensors="pt")).split(len(rows))  # 2 x (b, H)
    return improved_contrastive(queries, documents, 0.05)


def _energy_hinge_loss(model, tokenizer, rows):
    """PromCSE's hinge over triplets: each anchor's rivals are the positives and hard negatives of all ranks."""
    texts = [text for column in zip(*rows) for text in column]
    anchors, positives, negatives = model(**tokenizer(texts, padding=True, return_tensors="pt")).split(len(rows))  # 3 x (b, H)
    return energy_hinge(anchors, positives, negatives, margin=0.5)


#: Losses whose every term reads the embeddings of all ranks, by name.
GATHERED_LOSSES = {"improved_contrastive": _improved_contrastive_loss, "energy_hinge": _energy_hinge_loss}


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: param.grad.clone() for name, param in module.named_parameters() if param.grad is not None}


def _own_slice_gather(tensor):
    """The shortcut all_gather_with_grad refuses: gather without gradient, put the local copy back."""
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.detach().contiguous())
    gathered[dist.get_rank()] = tensor
    return torch.cat(gathered)  # (W * B, H)


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        assert (get_rank(), get_world_size()) == (rank, WORLD_SIZE)
        gathered = all_gather_with_grad(torch.full((2, 3), float(rank)))
        assert gathered[:, 0].tolist() == [0.0, 0.0, 1.0, 1.0]  # rank order
        shard = TRIPLETS[rank::WORLD_SIZE]  # any split works: the loss is a mean over equal halves
        results = {}
        for case, weight in [*CASES.items(), ("own-slice", None)]:
            encoder = _encoder()
            model = DistributedDataParallel(encoder)  # averages gradients in backward
            if case == "own-slice":
                losses.all_gather_with_grad = _own_slice_gather
            loss = _loss(model, encoder.tokenizer, shard, weight)
            loss.backward()
            results[case] = {"loss": loss.detach(), "grads": _grads(encoder)}
        losses.all_gather_with_grad = all_gather_with_grad
        for name, loss_of in GATHERED_LOSSES.items():
            encoder = _encoder()
            model = DistributedDataParallel(encoder)  # held until backward: its hooks average the gradients
            loss = loss_of(model, encoder.tokenizer, shard)
            loss.backward()
            results[name] = {"loss": loss.detach(), "grads": _grads(encoder)}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ranks")
    return run_gloo_workers(_worker, out_dir, world_size=WORLD_SIZE)


@functools.cache
def _single_process(hard_negative_weight: float | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    encoder = _encoder()
    loss = _loss(encoder, encoder.tokenizer, TRIPLETS, hard_negative_weight)
    loss.backward()
    return loss.detach(), _grads(encoder)


@pytest.mark.parametrize("case", CASES)
def test_two_processes_equal_one_process_with_the_whole_batch(rank_results, case):
    loss, grads = _single_process(CASES[case])
    mean_loss = sum(result[case]["loss"] for result in rank_results) / WORLD_SIZE  # what DDP optimises
    torch.testing.assert_close(mean_loss, loss, rtol=0, atol=1e-6)
    assert len(grads) > 0
    for result in rank_results:  # DDP leaves the same averaged gradient on every rank
        assert result[case]["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(result[case]["grads"][name], grad, rtol=0, atol=1e-6, msg=name)


@pytest.mark.parametrize("loss_name", GATHERED_LOSSES)
def test_gtes_partition_and_promcses_hinge_over_two_processes_equal_one_process_with_the_whole_batch(rank_results, loss_name):
    encoder = _encoder()
    loss = GATHERED_LOSSES[loss_name](encoder, encoder.tokenizer, TRIPLETS)
    loss.backward()
    grads = _grads(encoder)
    assert loss > 0 and len(grads) > 0
    mean_loss = sum(result[loss_name]["loss"] for result in rank_results) / WORLD_SIZE
    torch.testing.assert_close(mean_loss, loss.detach(), rtol=0, atol=1e-6)
    for result in rank_results:
        for name, grad in grads.items():
            torch.testing.assert_close(result[loss_name]["grads"][name], grad, rtol=0, atol=1e-6, msg=name)


def test_replacing_only_the_own_slice_loses_gradient(rank_results):
    """The test above can fail: the usual shortcut gives the same loss but other gradients."""
    loss, grads = _single_process(None)
    results = [result["own-slice"] for result in rank_results]
    mean_loss = sum(result["loss"] for result in results) / WORLD_SIZE
    torch.testing.assert_close(mean_loss, loss, rtol=0, atol=1e-6)
    gap = max((results[0]["grads"][name] - grad).abs().max().item() for name, grad in grads.items())
    assert gap > 1e-4


def test_single_process_fallback():
    tensor = torch.randn(3, 4, requires_grad=True)
    assert (get_rank(), get_world_size()) == (0, 1)
    assert all_gather_with_grad(tensor) is tensor
