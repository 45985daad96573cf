"""SentEval's L2 grid on one cross-validation fold: the four probes trained together (one ``Linear``
with 4 x classes outputs, csekit's ``LinearProbes``) against one by one (SentEval's loop, one probe a
penalty). Both give the same probes (tests/test_transfer.py); this prints what the sharing saves.

    python benchmarks/transfer_probes.py                  # MR-sized fold: 8,530 train, 2,132 test, 384 dims

The features are Gaussian with one informative direction (a linear probe reaches ~80%), so the early
stopping runs for a realistic number of epochs. Medians over ``--repeats``; one CPU thread, as the
evaluator runs its probes.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from csekit.evaluation.transfer import L2_GRID, MODES, LinearProbes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=8530)
    parser.add_argument("--test", type=int, default=2132)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, args.train + args.test)
    features = rng.standard_normal((len(labels), args.dim)).astype(np.float32)
    features[:, 0] += np.where(labels == 1, 0.85, -0.85)
    train = features[: args.train], labels[: args.train]
    test = features[args.train :], labels[args.train :]

    print(f"{platform.machine()}, {torch.get_num_threads()} thread; {args.train} train / {args.test} test x "
          f"{args.dim} dims, L2 grid {list(L2_GRID)}; median of {args.repeats}\n")  # fmt: skip
    print("| setting | one by one (s) | together (s) | speed-up | same accuracies |")
    print("| --- | ---: | ---: | ---: | --- |")
    for mode in args.modes:
        config = MODES[mode]
        alone_times, together_times = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            alone = []
            for l2 in L2_GRID:
                probe = LinearProbes(args.dim, 2, l2s=[l2], config=config, seed=1111)
                probe.fit(*train, validation=test)
                alone += probe.score(*test)
            alone_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            probes = LinearProbes(args.dim, 2, l2s=L2_GRID, config=config, seed=1111)
            probes.fit(*train, validation=test)
            together = probes.score(*test)
            together_times.append(time.perf_counter() - start)
        one, shared = statistics.median(alone_times), statistics.median(together_times)
        print(f"| {mode} | {one:.2f} | {shared:.2f} | {one / shared:.1f}x | {alone == together} |", flush=True)


if __name__ == "__main__":
    main()
