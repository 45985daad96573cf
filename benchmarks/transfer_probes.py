"""SentEval's L2 selection by k-fold cross-validation, three ways: one probe per (fold, L2) as SentEval
trains them; the four L2s of a fold together; every fold and L2 together (one batched layer, what
``TransferEvaluator`` runs). All three give the same probes (tests/test_transfer.py); this prints what
the sharing saves.

    python benchmarks/transfer_probes.py                   # fasttest: 5 folds x 4 L2s on an MR-sized set
    python benchmarks/transfer_probes.py --modes test      # 10 folds x 4 L2s (SentEval one by one: minutes)

The data: 10,662 examples (MR's size, an inner cross-validation's training part is 4/5 or 9/10 of it),
384 Gaussian dimensions with one informative direction (a linear probe reaches ~80%), so early stopping
runs a realistic number of epochs. Medians over ``--repeats``; one CPU thread, as the evaluator runs.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from csekit.evaluation.transfer import L2_GRID, MODES, LinearProbes, ProbeFactory, stratified_folds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=10662)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--modes", nargs="+", default=["fasttest"], choices=list(MODES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, args.examples)
    x = rng.standard_normal((args.examples, args.dim)).astype(np.float32)
    x[:, 0] += np.where(y == 1, 0.85, -0.85)

    print(f"{platform.machine()}, {torch.get_num_threads()} thread; {args.examples} examples x {args.dim} dims, "
          f"L2 grid {list(L2_GRID)}; seconds, median of {args.repeats}\n")  # fmt: skip
    print("| setting | probes | one by one | L2s together | folds and L2s together | speed-up | same accuracies |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for mode in args.modes:
        config = MODES[mode]
        folds = stratified_folds(y, config.kfold, seed=1111)
        make = ProbeFactory(args.dim, 2, config, 1111)
        ways = {"one by one": _one_by_one, "L2s together": _l2s_together, "all together": _all_together}
        times = {name: [] for name in ways}
        results = {}
        for _ in range(args.repeats):
            for name, way in ways.items():
                start = time.perf_counter()
                results[name] = way(make, x, y, folds)
                times[name].append(time.perf_counter() - start)
        median = {name: statistics.median(values) for name, values in times.items()}
        same = results["one by one"] == results["L2s together"] == results["all together"]
        print(f"| {mode} | {len(folds) * len(L2_GRID)} | {median['one by one']:.1f} | {median['L2s together']:.1f} | "
              f"{median['all together']:.1f} | {median['one by one'] / median['all together']:.1f}x | {same} |",
              flush=True)  # fmt: skip


def _one_by_one(make: ProbeFactory, x, y, folds) -> list[list[float]]:
    return [[make([l2]).fit(x[train], y[train], validation=(x[test], y[test]))[0] for l2 in L2_GRID]
            for train, test in folds]  # fmt: skip


def _l2s_together(make: ProbeFactory, x, y, folds) -> list[list[float]]:
    return [make(L2_GRID).fit(x[train], y[train], validation=(x[test], y[test])) for train, test in folds]


def _all_together(make: ProbeFactory, x, y, folds) -> list[list[float]]:
    probes: LinearProbes = make(L2_GRID, sets=len(folds))
    return probes.fit_sets([(x[train], y[train], x[test], y[test]) for train, test in folds])


if __name__ == "__main__":
    main()
