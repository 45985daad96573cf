"""Stratified k folds, as scikit-learn's ``StratifiedKFold(shuffle=True)`` assigns them (SentEval's folds)."""

from __future__ import annotations

import numpy as np

from csekit.errors import CsekitError


def stratified_folds(labels: np.ndarray, k: int, *, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) indices of scikit-learn's ``StratifiedKFold(k, shuffle=True, random_state=seed)``.

    The same assignment, so the folds equal SentEval's: classes numbered by first appearance, each
    class's fold sizes from a round robin over the sorted labels, its fold ids shuffled by a fresh
    ``RandomState(seed)`` (one stream for all classes, in class order).
    """
    labels = np.asarray(labels)
    if k < 2 or k > len(labels):
        raise CsekitError(f"cannot split {len(labels)} examples into {k} folds")
    _, first_index, inverse = np.unique(labels, return_index=True, return_inverse=True)
    _, class_of_first = np.unique(first_index, return_inverse=True)
    encoded = class_of_first[inverse.reshape(-1)]  # (N,) class ids by order of appearance
    classes = len(first_index)
    if np.all(np.bincount(encoded) < k):
        raise CsekitError(f"cannot stratify into {k} folds: every class has fewer than {k} examples")
    ordered = np.sort(encoded)
    allocation = np.asarray([np.bincount(ordered[i::k], minlength=classes) for i in range(k)])  # (k, C)
    rng = np.random.RandomState(seed)
    test_fold = np.empty(len(labels), dtype=np.int64)
    for label in range(classes):
        folds = np.arange(k).repeat(allocation[:, label])
        rng.shuffle(folds)
        test_fold[encoded == label] = folds
    indices = np.arange(len(labels))
    return [(indices[test_fold != fold], indices[test_fold == fold]) for fold in range(k)]
