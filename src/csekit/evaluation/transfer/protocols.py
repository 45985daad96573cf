"""SentEval's model selection (``tools/validation.py``): inner k-fold, k-fold and split classifiers, and the
metrics of one task."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from csekit.evaluation.transfer.data import CLASSES, Examples
from csekit.evaluation.transfer.folds import stratified_folds
from csekit.evaluation.transfer.probes import L2_GRID, ProbeConfig, ProbeFactory, batches_per_pass


def _percent(accuracy: float) -> float:
    return round(100 * accuracy, 2)  # SentEval: round(100 * clf.score(...), 2)


def _mean(values: list[float]) -> float:
    return float(np.round(np.mean(values), 2))  # SentEval rounds numpy means: np.round, not round()


def _mean_percent(accuracies: list[float]) -> float:
    return float(np.round(100 * np.mean(accuracies), 2))  # SentEval: round(100 * np.mean(regscores), 2)


def _kfold_l2(make: ProbeFactory, x: np.ndarray, y: np.ndarray, folds) -> tuple[float, float]:
    """Each L2's mean accuracy over ``folds`` (each model early-stops on its own test fold) -> best (l2, %)."""
    # Folds taking the same number of batches a pass train together; the accuracy a probe reaches on
    # its own test fold (its early-stopping set) is its best validation accuracy.
    groups: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for train, test in folds:
        groups.setdefault(batches_per_pass(len(train), make.config.batch_size), []).append((train, test))
    fold_scores = []  # (folds, L2s)
    for group in groups.values():
        probes = make(L2_GRID, sets=len(group))
        fold_scores += probes.fit_sets([(x[train], y[train], x[test], y[test]) for train, test in group])
    scores = [_mean_percent(list(column)) for column in zip(*fold_scores)]
    best = int(np.argmax(scores))  # the first of tied scores, as np.argmax in SentEval
    return L2_GRID[best], scores[best]


def inner_kfold_accuracy(make: ProbeFactory, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """SentEval's ``InnerKFoldClassifier``: (dev %, test %), nested stratified k-fold."""
    k, seed = make.config.kfold, make.seed
    dev_scores, test_scores = [], []
    for train, test in stratified_folds(y, k, seed=seed):
        x_train, y_train = x[train], y[train]
        l2, dev = _kfold_l2(make, x_train, y_train, stratified_folds(y_train, k, seed=seed))
        probe = make([l2])
        probe.fit(x_train, y_train, validation_split=0.05)
        dev_scores.append(dev)
        test_scores.append(_percent(probe.score(x[test], y[test])[0]))
    return _mean(dev_scores), _mean(test_scores)


def kfold_accuracy(
    make: ProbeFactory, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]
) -> tuple[float, float, np.ndarray]:
    """SentEval's ``KFoldClassifier``: (dev %, test %, test predictions), L2 chosen by k-fold on train."""
    x, y = train
    l2, dev = _kfold_l2(make, x, y, stratified_folds(y, make.config.kfold, seed=make.seed))
    probe = make([l2])
    probe.fit(x, y, validation_split=0.05)
    return dev, _percent(probe.score(*test)[0]), probe.predict(test[0])[0]


def split_accuracy(
    make: ProbeFactory, train: tuple[np.ndarray, np.ndarray], dev: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
) -> tuple[float, float]:  # fmt: skip
    """SentEval's ``SplitClassifier``: (dev %, test %), L2 chosen on dev."""
    probes = make(L2_GRID)
    probes.fit(*train, validation=dev)
    scores = [_percent(accuracy) for accuracy in probes.score(*dev)]
    best = int(np.argmax(scores))  # the first of tied scores, as np.argmax in SentEval
    # SentEval refits the chosen L2 from the same seed, which reproduces this very probe: keep it instead.
    return scores[best], _percent(probes.score(*test)[best])


def binary_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """F1 of class 1 (scikit-learn's ``f1_score`` default; 0 when there is no positive at all)."""
    true_positive = int(np.sum((predictions == 1) & (labels == 1)))
    wrong = int(np.sum(predictions != labels))
    return 0.0 if true_positive == 0 else 2 * true_positive / (2 * true_positive + wrong)


def run_task(
    task: str,
    splits: dict[str, Examples],
    embed: Callable[[list[str]], np.ndarray],
    *,
    config: ProbeConfig,
    seed: int = 1111,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """One task's metrics; ``embed`` maps texts to their (N, H) embeddings."""

    def features(split: Examples) -> tuple[np.ndarray, np.ndarray]:
        if split.second is None:
            return embed(split.texts), split.labels
        first, second = embed(split.texts), embed(split.second)  # (N, H) each
        return np.c_[
            np.abs(first - second), first * second
        ], split.labels  # (N, 2H): SentEval's MRPC features

    data = {name: features(split) for name, split in splits.items()}
    dim = next(iter(data.values()))[0].shape[1]
    make = ProbeFactory(dim, CLASSES.get(task, 2), config, seed, device)
    if "all" in data:
        dev, test = inner_kfold_accuracy(make, *data["all"])
    elif "dev" in data:
        dev, test = split_accuracy(make, data["train"], data["dev"], data["test"])
    else:
        dev, test, predictions = kfold_accuracy(make, data["train"], data["test"])
    results = {task: test, f"{task}/dev": dev}
    if task == "mrpc":
        results["mrpc/f1"] = _percent(binary_f1(data["test"][1], predictions))
    return results
