"""FSDP2 under torchrun: two gloo ranks, each holding half of every weight, train like one process on the whole batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from conftest import make_tiny_decoder, run_gloo_workers, train_single_and_two_ranks

from csekit.errors import CsekitError
from csekit.models import load_encoder
from csekit.models.lora import add_lora
from csekit.training import fsdp
from csekit.training.config import TrainConfig

SENTENCES = ["a man plays the guitar .", "two dogs run in the snow .", "the market fell today ."]
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "save": "merged"}


@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora"])
def test_two_sharded_ranks_train_like_one_process_with_the_whole_batch(tmp_path, lora, request):
    model = tmp_path / "llama"
    make_tiny_decoder("mean").save(model)
    # With LoRA the runs also select a model on STS-B dev at step 2: every rank encodes, rank 0 saves best/.
    selection = {"eval_steps": 2, "eval_tasks": "stsb", "data_dir": str(request.getfixturevalue("data_dir"))} if lora else {}
    one, two, losses = train_single_and_two_ranks(tmp_path, model, fsdp=True, lora=lora, pooler="mean",
                                                  mlp_only_train=False, max_steps=3, **selection)  # fmt: skip
    if lora:
        for run in ("single", "double"):
            assert (tmp_path / run / "run" / "best" / "model.safetensors").is_file()
    start = load_encoder(model).state_dict()
    assert one.keys() == two.keys()
    moved = 0
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)  # as the other two-rank runs
        moved += not torch.equal(one[name], start[f"backbone.{name}"])
    assert moved > 0 and (lora is None or moved == 6)  # LoRA on q_proj and v_proj of three layers
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def _shard_worker(rank: int, port: int, out_dir: str, model: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        encoder = load_encoder(model)
        add_lora(encoder, {**LORA, "save": "adapter"}, base_model=model)
        with torch.no_grad():  # trained-looking adapters
            for name, parameter in encoder.named_parameters():
                if ".lora_B." in name:
                    parameter.normal_(std=0.1, generator=torch.Generator().manual_seed(len(name)))
        expected = {name: value.clone() for name, value in encoder.state_dict().items()}
        plain = fsdp.shard(encoder)
        local = {name: parameter.to_local().numel() for name, parameter in encoder.named_parameters()}
        embeddings = torch.from_numpy(encoder.encode(SENTENCES))  # a sharded forward: both ranks take part
        full = fsdp.gathered(encoder, plain)
        result = {"local": local, "embeddings": embeddings, "expected": expected}
        if full is not None:
            result["gathered"] = full.state_dict()
            result["gathered_embeddings"] = torch.from_numpy(full.encode(SENTENCES))
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_sharding_keeps_half_of_each_weight_per_rank_and_saving_gathers_it_whole_on_rank_0(tmp_path):
    model = tmp_path / "llama"
    make_tiny_decoder("mean").save(model)
    ranks = run_gloo_workers(_shard_worker, tmp_path, str(model))
    full = {name: value.numel() for name, value in ranks[0]["expected"].items()}
    for name in ranks[0]["local"]:  # dim-0 shards: half each (one more row on rank 0 when odd)
        assert ranks[0]["local"][name] + ranks[1]["local"][name] == full[name], name
        assert ranks[1]["local"][name] <= ranks[0]["local"][name] < full[name] or full[name] == 1, name
    assert "gathered" not in ranks[1]
    assert ranks[0]["gathered"].keys() == ranks[0]["expected"].keys()
    for name, value in ranks[0]["expected"].items():
        assert torch.equal(ranks[0]["gathered"][name], value), name
    torch.testing.assert_close(ranks[0]["embeddings"], ranks[1]["embeddings"], rtol=0, atol=0)
    torch.testing.assert_close(ranks[0]["gathered_embeddings"], ranks[0]["embeddings"], rtol=0, atol=1e-6)


def test_fsdp_refuses_checkpoints_it_cannot_write():
    with pytest.raises(CsekitError, match="fsdp writes no resumable checkpoint of sharded weights: leave save_steps unset"):
        TrainConfig.from_dict({"model": "m", "fsdp": True, "eval_steps": 0, "save_steps": 10})
    TrainConfig.from_dict({"model": "m", "fsdp": True, "eval_steps": 50})
