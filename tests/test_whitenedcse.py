"""WhitenedCSE: shuffled group whitening against numpy's ZCA per group, the multi-positive loss against a loop,
and two gloo processes (each whitening its own batch, as the reference) against one process."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import assert_grad_cache_matches_plain_step, make_tiny_encoder, run_gloo_workers
from torch.nn.parallel import DistributedDataParallel

from csekit import CsekitError
from csekit.data.collate import pad_batch
from csekit.losses import info_nce
from csekit.objectives import build_objective
from csekit.objectives.whitenedcse import group_whiten

TEXTS = ["a man plays the guitar .", "two dogs run .", "the market fell today .", "she slices an onion .",
         "kids play in the snow .", "a red car .", "the train leaves at noon .", "he reads a long novel ."]  # fmt: skip


def numpy_zca(block: np.ndarray) -> np.ndarray:
    """(B, d) -> (B, d): centred over rows, times U S^-1/2 U^T of the covariance (divided by B)."""
    centred = block - block.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(block))
    return centred @ eigenvectors @ np.diag(eigenvalues**-0.5) @ eigenvectors.T


def test_each_shuffled_group_is_zca_whitened_and_returned_to_its_columns():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(32, 12, generator=generator, dtype=torch.float64) @ torch.randn(12, 12, generator=generator,
                                                                                           dtype=torch.float64)  # fmt: skip
    order = torch.randperm(12, generator=generator)
    whitened = group_whiten(features, 3, order).numpy()
    for group in order.reshape(3, 4).tolist():  # the groups are the shuffled order cut in 3
        expected = numpy_zca(features[:, group].numpy())
        np.testing.assert_allclose(whitened[:, group], expected, rtol=1e-9, atol=1e-9)
        covariance = whitened[:, group].T @ whitened[:, group] / len(whitened)
        np.testing.assert_allclose(covariance, np.eye(4), atol=1e-9)
    # a column's whitened values depend on which columns share its group: another order, other values
    assert not np.allclose(group_whiten(features, 3, torch.arange(12)).numpy(), whitened)


def test_the_whitening_matrix_carries_no_gradient_as_in_the_reference():
    """Gradients flow through the centring and the product only: d(sum x W)/dx = (1 - 1/B) 1 W^T row sums."""
    features = torch.randn(16, 4, dtype=torch.float64, requires_grad=True)
    order = torch.arange(4)
    whitened = group_whiten(features, 1, order)
    weights = torch.randn_like(whitened)
    (grad,) = torch.autograd.grad((whitened * weights).sum(), features)
    centred = features.detach() - features.detach().mean(dim=0)
    eigenvalues, eigenvectors = torch.linalg.eigh(centred.T @ centred / 16)
    zca = eigenvectors @ torch.diag(eigenvalues.rsqrt()) @ eigenvectors.T  # a constant
    expected = (weights - weights.mean(dim=0)) @ zca.T  # the centring's Jacobian, then the fixed product
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-10)


def tiny_batch(encoder, texts=TEXTS):
    ids = encoder.tokenize(texts)
    return {"sent0": pad_batch([{k: ids[k][i] for k in ids} for i in range(len(texts))], 0)}


def test_the_loss_sums_infonce_of_the_anchor_against_each_whitened_positive():
    encoder = make_tiny_encoder("cls_before_pooler", hidden_dropout_prob=0.1).double().train()
    objective = build_objective("whitenedcse", encoder, options={"num_groups": 8, "temperature": 0.1}).double()
    embeddings = objective.embed(encoder, tiny_batch(encoder))
    assert [embeddings[f"view{v}"].shape for v in (1, 2, 3)] == [(8, 32)] * 3
    torch.manual_seed(3)
    terms = objective.loss(embeddings, {})
    torch.manual_seed(3)  # the same column orders, one per view, in view order
    orders = [torch.randperm(32) for _ in range(3)]
    head = objective.head
    projected = []
    for view, order in enumerate(orders, start=1):
        block = embeddings[f"view{view}"].detach().numpy()
        whitened = np.empty_like(block)
        for group in order.reshape(8, 4).tolist():
            whitened[:, group] = numpy_zca(block[:, group])
        projected.append(np.tanh(whitened @ head.dense.weight.detach().numpy().T + head.dense.bias.detach().numpy()))
    total = 0.0
    for positive in projected[1:]:
        for i in range(8):
            logits = [np.dot(projected[0][i], positive[j]) / np.linalg.norm(projected[0][i])
                      / np.linalg.norm(positive[j]) / 0.1 for j in range(8)]  # fmt: skip
            total += -(logits[i] - np.log(np.sum(np.exp(logits)))) / 8
    assert terms["contrastive"].item() == pytest.approx(total, rel=1e-9)


def test_the_gradient_cache_equals_the_plain_step_exactly_in_float64():
    """The contract suite's float32 check needs a looser tolerance for this objective; in float64 it is exact."""
    encoder = make_tiny_encoder("cls_before_pooler", hidden_dropout_prob=0.1).double().train()
    objective = build_objective("whitenedcse", encoder, options={"num_groups": 8}).double().train()
    assert_grad_cache_matches_plain_step(objective, encoder, tiny_batch(encoder), atol=1e-12)


def test_a_head_before_the_whitening_or_groups_that_do_not_divide_are_one_line_errors():
    with pytest.raises(CsekitError, match="before its own dense \\+ tanh head"):
        build_objective("whitenedcse", make_tiny_encoder("cls"), options={"num_groups": 8})
    with pytest.raises(CsekitError, match="num_groups must divide the hidden size 32"):
        build_objective("whitenedcse", make_tiny_encoder("cls_before_pooler"), options={"num_groups": 5})


# ---------------------------------------------------------------- two processes
SEED = 11


def _setup():
    encoder = make_tiny_encoder("cls_before_pooler", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    objective = build_objective("whitenedcse", encoder, options={"num_groups": 8}).double()
    return encoder.double().train(), objective


def _grads(*modules) -> dict[str, torch.Tensor]:
    return {f"{index}.{name}": p.grad.clone() for index, module in enumerate(modules)
            for name, p in module.named_parameters() if p.grad is not None}  # fmt: skip


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        encoder, objective = _setup()
        model = DistributedDataParallel(encoder)
        embeddings = objective.embed(model, tiny_batch(encoder, TEXTS[rank * 4:(rank + 1) * 4]))
        torch.manual_seed(SEED)  # every rank draws the same column orders
        loss = sum(objective.loss(embeddings, {}).values())
        loss.backward()
        for parameter in objective.head.parameters():  # the head is outside DDP here: average it as DDP would
            dist.all_reduce(parameter.grad)
            parameter.grad /= 2
        torch.save({"loss": loss.detach(), "grads": _grads(encoder, objective.head)}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_processes_whiten_their_own_halves_and_train_like_one_process(tmp_path):
    ranks = run_gloo_workers(_worker, tmp_path, world_size=2)
    encoder, objective = _setup()
    halves = [objective.embed(encoder, tiny_batch(encoder, TEXTS[r * 4:(r + 1) * 4])) for r in range(2)]
    per_half = []
    for half in halves:  # each half whitened alone, with the orders its process drew
        torch.manual_seed(SEED)
        per_half.append(objective.whitened_views(half))
    anchor, *positives = (torch.cat(parts) for parts in zip(*per_half))  # (8, H) each, rank order
    loss = sum(info_nce(anchor, positive, objective.temperature) for positive in positives)
    loss.backward()
    grads = _grads(encoder, objective.head)
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach(), rtol=0, atol=1e-10)
    for result in ranks:
        assert result["grads"].keys() == grads.keys()
        for name, grad in grads.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=0, atol=1e-10, msg=name)
    # and it is per process: whitening the whole batch at once is another loss
    torch.manual_seed(SEED)
    whole = objective.whitened_views({key: torch.cat([h[key] for h in halves]) for key in halves[0]})
    assert abs(sum(info_nce(whole[0], p, objective.temperature) for p in whole[1:]).item() - loss.item()) > 1e-3
