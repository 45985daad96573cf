"""The bucketed all-reduce started during backward equals the flat all-reduce after it, exactly (2 gloo ranks).

Every element is the sum of the same two ranks' values whichever bucket carries it, so the comparison
is bitwise (rtol = atol = 0), in float32, the trainer's precision.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import make_tiny_encoder, run_gloo_workers
from torch import nn

from csekit.losses import info_nce
from csekit.training.gradient_sync import GradientSync

WORLD_SIZE = 2
SENTENCES = ["a man plays a guitar .", "two dogs run in the snow .", "a woman slices an onion .",
             "children play in a park .", "the train leaves at noon .", "a cat sits on the mat .",
             "he reads a long novel .", "the market opens early ."]  # fmt: skip


def _model() -> tuple[nn.Module, list[nn.Parameter]]:
    encoder = make_tiny_encoder("mean", seed=0).train()
    unused = nn.Linear(4, 4)  # a trainable module this loss never reaches: its gradient stays None
    return encoder, [*encoder.parameters(), *unused.parameters()]


def _backward(encoder, texts: list[str]) -> None:
    torch.manual_seed(len(texts[0]))  # the same dropout masks on both paths
    tokens = encoder.tokenizer(texts + texts, padding=True, return_tensors="pt")  # (2b, T): two dropout views
    views = encoder(**tokens).chunk(2)
    info_nce(*views, 0.05).backward()


def _flat_average(parameters: list[nn.Parameter]) -> None:
    """The plain path: one all-reduce of every gradient after backward."""
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= WORLD_SIZE
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


def _grads(parameters: list[nn.Parameter]) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in parameters]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    try:
        micro_batches = [SENTENCES[rank::WORLD_SIZE][:2], SENTENCES[rank::WORLD_SIZE][2:]]  # 2 x 2 per rank
        results = {}
        for accumulation in (1, 2):
            encoder, parameters = _model()
            for texts in micro_batches[:accumulation]:
                _backward(encoder, texts)
            _flat_average(parameters)
            results[f"flat/{accumulation}"] = _grads(parameters)

            encoder, parameters = _model()
            sync = GradientSync(parameters, WORLD_SIZE, bucket_bytes=4096)  # small buckets: many of them
            sync.arm()  # a first step, whose order of ready gradients rebuilds the buckets
            _backward(encoder, micro_batches[0])
            results[f"first/{accumulation}"] = sync.started
            sync.finish()
            results[f"first/{accumulation}/grads"] = _grads(parameters)
            for parameter in parameters:
                parameter.grad = None
            for index, texts in enumerate(micro_batches[:accumulation]):
                if index == accumulation - 1:
                    sync.arm()  # the last micro-batch only: the earlier ones accumulate locally
                _backward(encoder, texts)
            complete = sum(all(p.grad is not None for p in bucket) for bucket in sync.buckets)
            results[f"started/{accumulation}"] = (sync.started, complete, len(sync.buckets))
            sync.finish()
            sync.close()
            results[f"overlapped/{accumulation}"] = _grads(parameters)

        encoder, parameters = _model()  # never armed (the gradient cache's path): all sent by finish()
        sync = GradientSync(parameters, WORLD_SIZE, bucket_bytes=4096)
        for step in range(2):  # the second step too
            for parameter in parameters:
                parameter.grad = None
            _backward(encoder, micro_batches[0])
            results["unarmed/started"] = sync.started
            sync.finish()
            results[f"unarmed/{step}"] = _grads(parameters)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory) -> list[dict]:
    return run_gloo_workers(_worker, tmp_path_factory.mktemp("ranks"), world_size=WORLD_SIZE)


def _assert_same(got: list, want: list) -> None:
    assert len(got) == len(want)
    for index, (mine, theirs) in enumerate(zip(got, want)):
        if theirs is None:
            assert mine is None, index  # no gradient: left alone, as the optimizer skips it
        else:
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0, msg=f"parameter {index}")


@pytest.mark.parametrize("accumulation", [1, 2])
def test_overlapped_all_reduce_equals_the_flat_one_exactly(rank_results, accumulation):
    for result in rank_results:
        _assert_same(result[f"overlapped/{accumulation}"], result[f"flat/{accumulation}"])
    assert any(grad is None for grad in rank_results[0][f"flat/{accumulation}"])  # the unused module is covered
    # the ranks saw different sentences, and leave with the same mean gradient
    _assert_same(rank_results[0][f"overlapped/{accumulation}"], rank_results[1][f"overlapped/{accumulation}"])


@pytest.mark.parametrize("accumulation", [1, 2])
def test_buckets_start_while_backward_runs_once_rebuilt(rank_results, accumulation):
    for result in rank_results:
        # First step: the unused module is created last, so its bucket comes first and holds every other
        # bucket back (one order of collectives on all ranks): finish() sends them all, still exact.
        assert result[f"first/{accumulation}"] == 0
        _assert_same(result[f"first/{accumulation}/grads"], result["flat/1"])
        # Rebuilt in the order the gradients became final, the unused module last: every bucket whose
        # gradients are all final started before backward returned.
        started, complete, buckets = result[f"started/{accumulation}"]
        assert started == complete >= buckets - 1 > 3


def test_without_arming_everything_is_reduced_in_finish(rank_results):
    for result in rank_results:
        assert result["unarmed/started"] == 0
        _assert_same(result["unarmed/0"], result["flat/1"])
        _assert_same(result["unarmed/1"], result["flat/1"])


def test_one_process_registers_nothing_and_leaves_gradients_alone():
    encoder, parameters = _model()
    sync = GradientSync(parameters, 1)
    sync.arm()
    _backward(encoder, SENTENCES[:4])
    before = _grads(parameters)
    sync.finish()
    assert sync.started == 0 and not sync._hooks
    _assert_same(_grads(parameters), before)
