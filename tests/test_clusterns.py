"""ClusterNS: the margin loss and the clustering against naive loops, the loss of a started run term by term,
the centroids checkpointed, and two gloo ranks training like one process."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import (
    assert_grad_cache_matches_plain_step,
    assert_resume_restores_the_queue,
    make_tiny_encoder,
    train_single_and_two_ranks,
    write_recipe,
)
from test_objectives_contract import batch_for

from csekit.errors import CsekitError
from csekit.losses import bidirectional_margin
from csekit.objectives import RunContext, build_objective
from csekit.objectives.clusterns import chain_init, update_centroids


def cosine(a, b) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def test_bidirectional_margin_matches_a_loop_in_value_and_gradient():
    torch.manual_seed(0)
    similarities = (torch.rand(5, 7, dtype=torch.float64) * 2 - 1).requires_grad_()
    positives = (torch.rand(5, dtype=torch.float64) * 2 - 1).requires_grad_()
    mask = torch.rand(5, 7) < 0.5
    alpha, beta = 0.2, 0.5
    naive = 0.0
    for i in range(5):
        for j in range(7):
            delta = (similarities[i, j] - positives[i]) if mask[i, j] else similarities.new_zeros(())
            naive = naive + torch.relu(delta + alpha) + torch.relu(-delta - beta)
    naive = naive / 35
    fast = bidirectional_margin(similarities, positives, mask, alpha=alpha, beta=beta)
    assert fast.item() == pytest.approx(naive.item(), abs=1e-12)
    grads = torch.autograd.grad(fast, [similarities, positives])
    expected = torch.autograd.grad(naive, [similarities, positives])
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)
    assert grads[0].abs().sum() > 0  # some pairs sit outside the margins


def naive_update(centroids: np.ndarray, points: np.ndarray, rate: float, rule: str) -> np.ndarray:
    sums = np.zeros_like(centroids)
    counts = np.zeros(len(centroids))
    for point in points:
        own = max(range(len(centroids)), key=lambda k: cosine(point, centroids[k]))
        sums[own] += point
        counts[own] += 1
    updated = centroids.copy()
    for k in range(len(centroids)):
        if counts[k]:
            updated[k] = sums[k] if rule == "kmeans" else rate * sums[k] + (1 - rate) * centroids[k]
    return updated


@pytest.mark.parametrize("rule", ["momentum", "kmeans"])
def test_centroid_update_matches_a_numpy_loop(rule):
    generator = np.random.default_rng(0)
    centroids, points = generator.normal(size=(6, 5)), generator.normal(size=(40, 5))
    got = update_centroids(torch.from_numpy(centroids), torch.from_numpy(points), rate=0.3, rule=rule)
    want = naive_update(centroids, points, 0.3, rule)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)
    assert (want != centroids).any(axis=1).sum() >= 3  # several clusters moved
    if (want == centroids).all(axis=1).any():  # an empty cluster stayed (when the draw gives one)
        assert ((got.numpy() == centroids).all(axis=1) == (want == centroids).all(axis=1)).all()


def test_the_kmeans_rule_iterated_is_lloyds_algorithm_on_directions():
    """Iterated on one set of points, the ``kmeans`` rule finds the three directions a spherical k-means finds."""
    generator = np.random.default_rng(1)
    directions = np.eye(3, 8) * 5
    points = np.concatenate([direction + generator.normal(scale=0.5, size=(20, 8)) for direction in directions])
    labels = np.repeat(np.arange(3), 20)
    similarities = torch.from_numpy(points / np.linalg.norm(points, axis=1, keepdims=True))
    similarities = similarities @ similarities.T
    centroids = chain_init(torch.from_numpy(points), similarities, 3, torch.Generator().manual_seed(0))
    for _ in range(5):
        centroids = update_centroids(centroids, torch.from_numpy(points), rate=1.0, rule="kmeans")
    assigned = (torch.nn.functional.normalize(torch.from_numpy(points), dim=1)
                @ torch.nn.functional.normalize(centroids, dim=1).T).argmax(dim=1).numpy()  # fmt: skip
    # the same partition as the truth, up to the clusters' names
    assert len({(a, b) for a, b in zip(assigned, labels)}) == 3
    for k in range(3):
        members = points[assigned == k]
        assert cosine(centroids[k].numpy(), members.mean(axis=0)) == pytest.approx(1.0, abs=1e-9)


def test_chain_init_follows_the_reference_loop():
    generator = np.random.default_rng(2)
    points = generator.normal(size=(12, 4))
    similarities = generator.uniform(-1, 1, size=(12, 12))
    got = chain_init(torch.from_numpy(points), torch.from_numpy(similarities), 5, torch.Generator().manual_seed(3))
    first = int(torch.randint(12, (1,), generator=torch.Generator().manual_seed(3)))
    table, chosen = similarities.copy(), [first]  # optimized_centroid_init, step by step
    for _ in range(4):
        table[:, chosen[-1]] = 100
        chosen.append(int(np.argmin(table[chosen[-1]])))
    assert len(set(chosen)) == 5
    np.testing.assert_array_equal(got.numpy(), points[chosen])


def started_objective(**options):
    encoder = make_tiny_encoder(hidden_dropout_prob=0.1).train()
    objective = build_objective("clusterns", encoder, options={"clusters": 3, "start_cosine": 1.0, **options},
                                context=RunContext(batch_size=6)).train()  # fmt: skip
    batch = batch_for(objective, encoder)
    objective.after_micro_batch({k: v.detach() for k, v in objective.embed(encoder, batch).items()})
    return encoder, objective, batch


def test_clustering_waits_for_the_cosine_threshold():
    encoder, objective, batch = started_objective(start_cosine=-1.0)  # a mean cosine never that low
    assert not objective.started and not objective.centroids.any()
    terms = objective(encoder, batch)
    assert terms["bml"] == 0
    _, objective, _ = started_objective()
    assert objective.started and objective.centroids.any()


def test_a_started_loss_is_infonce_with_centroid_negatives_plus_the_margin_on_its_cluster_mates():
    encoder, objective, batch = started_objective(bml_weight=0.5, centroid_lr=0.2)
    embeddings = {k: v.detach().double() for k, v in objective.embed(encoder, batch).items()}
    before = objective.centroids.clone()
    terms = objective.loss(embeddings, batch)
    assert torch.equal(objective.centroids, before)  # the loss is pure
    z1, z2 = embeddings["view1"].numpy(), embeddings["view2"].numpy()
    centroids = naive_update(before.double().numpy(), z1, 0.2, "momentum")
    ranked = [sorted(range(3), key=lambda k: -cosine(z, centroids[k])) for z in z1]
    hard = [centroids[order[1]] for order in ranked]
    candidates = list(z2) + hard
    contrastive = np.mean([-cosine(z1[i], z2[i]) / 0.05
                           + math.log(sum(math.exp(cosine(z1[i], c) / 0.05) for c in candidates))
                           for i in range(6)])  # fmt: skip
    margin, mates = 0.0, 0
    for i in range(6):
        for j in range(6):
            mate = i != j and ranked[i][0] == ranked[j][0]
            mates += mate
            delta = cosine(z1[i], z2[j]) - cosine(z1[i], z2[i]) if mate else 0.0
            margin += max(delta + 0.2, 0) + max(-delta - 0.5, 0)
    assert mates > 0  # some in-batch negatives share the anchor's cluster
    assert terms["contrastive"].item() == pytest.approx(contrastive, abs=1e-5)
    assert terms["bml"].item() == pytest.approx(0.5 * margin / 36, abs=1e-6)
    objective.after_micro_batch(embeddings)  # stores the update the loss used
    np.testing.assert_allclose(objective.centroids.double().numpy(), centroids, atol=1e-6)


def test_gradient_cache_equals_the_plain_step_once_clustering_started():
    encoder, objective, batch = started_objective(bml_weight=1.0)
    assert_grad_cache_matches_plain_step(objective, encoder, batch)


def test_bad_options_are_one_line_errors():
    encoder = make_tiny_encoder()
    with pytest.raises(CsekitError, match="clusters must be between 2 and the contrastive batch"):
        build_objective("clusterns", encoder, options={"clusters": 128}, context=RunContext(batch_size=64))
    with pytest.raises(CsekitError, match="centroid_update must be one of momentum, kmeans"):
        build_objective("clusterns", encoder, options={"clusters": 4, "centroid_update": "adamw"})


def test_resumed_run_restores_the_centroids(tmp_path):
    model = tmp_path / "tiny"
    make_tiny_encoder(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).save(model)
    options = {"clusters": 4, "start_cosine": 1.0, "bml_weight": 1.0}
    recipe = write_recipe(tmp_path, model, objective="clusterns", max_steps=6, save_steps=4, options=options)
    saved = assert_resume_restores_the_queue(recipe, tmp_path / "run", "objective.started")
    assert int(saved["objective.started"]) == 1 and saved["objective.centroids"].abs().sum() > 0


def test_two_gloo_ranks_train_like_one_process_with_the_whole_batch(tmp_path):
    """Batch 8 on one process vs 4 + 4 on two ranks: the start test, the centroids, the hard negatives and the
    margin's cluster mates all come from all ranks' rows. Mean pooling (see test_esimcse's DDP test)."""
    options = {"clusters": 4, "start_cosine": 1.0, "bml_weight": 1.0, "centroid_lr": 0.1}
    one, two, losses = train_single_and_two_ranks(tmp_path, objective="clusterns", max_steps=4, options=options,
                                                  pooler="mean")  # fmt: skip
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
