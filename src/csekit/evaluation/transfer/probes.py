"""SentEval's classifier (``tools/classifier.py``, ``MLP`` with ``nhid=0``): logistic regressions, many
trained together as one batched linear layer (see :class:`LinearProbes`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

L2_GRID: tuple[float, ...] = tuple(10.0**t for t in range(-5, -1))  # validation.py, usepytorch=True


@dataclass(frozen=True)
class ProbeConfig:
    """SentEval's ``kfold`` and ``classifier`` params (``nhid`` is 0: logistic regression)."""

    kfold: int
    optim: str  # "adam" | "rmsprop", at torch's default learning rate as in SentEval's get_optimizer
    batch_size: int
    tenacity: int
    epoch_size: int
    max_epoch: int = 200


MODES = {
    "test": ProbeConfig(kfold=10, optim="adam", batch_size=64, tenacity=5, epoch_size=4),
    "fasttest": ProbeConfig(kfold=5, optim="rmsprop", batch_size=128, tenacity=3, epoch_size=2),
}
OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}


def batches_per_pass(examples: int, batch_size: int) -> int:
    return -(-examples // batch_size)  # the last batch may be short


class LinearProbes:
    """Logistic regressions trained as SentEval's ``PyTorchClassifier`` trains its ``MLP(nhid=0)``: one per
    (training set, L2 penalty).

    SentEval trains one classifier per L2 penalty of its grid and, in cross-validation, per fold, each
    reseeded identically: the same initial weights, and per training set the same batch order; the
    penalties differ only in weight decay. So the probes here are one batched linear layer of shape
    (sets, L2s x classes, dim): each batch is one forward, backward and optimizer step for all of them
    instead of one each (the Python overhead of these tiny steps is the cost), while every probe's
    loss, gradient, update, early stopping and best weights stay its own. Each training set draws its
    batches from its own ``RandomState(seed)``, as its own classifier would; sets trained together must
    take the same number of batches a pass (k-fold training sets, a few examples apart, nearly always do).
    """

    def __init__(self, dim: int, classes: int, *, l2s: Sequence[float], config: ProbeConfig, seed: int,
                 device="cpu", sets: int = 1):  # fmt: skip
        with torch.random.fork_rng(devices=[]):  # SentEval calls torch.manual_seed(seed) here
            torch.manual_seed(seed)
            linear = nn.Linear(dim, classes)
        self.sets, self.count, self.classes = sets, len(l2s), classes
        self.device = torch.device(device)
        weight = linear.weight.detach().repeat(self.count, 1)  # (L*C, D)
        self.weight = nn.Parameter(weight.expand(sets, -1, -1).clone().to(self.device))  # (S, L*C, D)
        bias = linear.bias.detach().repeat(self.count)
        self.bias = nn.Parameter(bias.expand(sets, -1).clone().to(self.device))  # (S, L*C)
        self.decay = torch.tensor(l2s, dtype=torch.float32, device=self.device).repeat_interleave(classes)
        self.rngs = [np.random.RandomState(seed) for _ in range(sets)]  # SentEval: np.random.seed(seed)
        self.config = config
        # Weight decay is added to the gradients per probe (see _step), as torch adds weight_decay.
        self.optimizer = OPTIMIZERS[config.optim]([self.weight, self.bias])

    def fit(
        self,
        features: np.ndarray,
        labels: np.ndarray,
        *,
        validation: tuple[np.ndarray, np.ndarray] | None = None,
        validation_split: float = 0.05,
    ) -> list[float]:
        """One training set: early stopping on ``validation``, else on a random ``validation_split`` of it.

        Returns each L2's best validation accuracy (in [0, 1]); each probe keeps the weights that reached it.
        """
        if validation is None:
            order = self.rngs[0].permutation(len(features))
            cut = max(1, int(validation_split * len(features)))  # SentEval divides by zero at 0
            validation = features[order[:cut]], labels[order[:cut]]
            features, labels = features[order[cut:]], labels[order[cut:]]
        return self.fit_sets([(features, labels, *validation)])[0]

    def fit_sets(self, data: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> list[list[float]]:
        """Train on ``sets`` training sets at once: (features, labels, validation features, validation labels)
        each. Returns the best validation accuracies, (sets, L2s)."""
        if len(data) != self.sets:
            raise ValueError(f"{len(data)} training sets given to probes built for {self.sets}")
        xs, ys = zip(*(self._tensors(x, y) for x, y, _, _ in data))
        validation = [self._tensors(x, y) for _, _, x, y in data]
        if len({batches_per_pass(len(x), self.config.batch_size) for x in xs}) != 1:
            raise ValueError("training sets trained together must take the same number of batches a pass")
        best = np.full((self.sets, self.count), -1.0)
        strikes = np.zeros((self.sets, self.count), dtype=np.int64)
        stopped = np.zeros((self.sets, self.count), dtype=bool)
        best_weight, best_bias = self.weight.detach().clone(), self.bias.detach().clone()
        epoch = 0
        while epoch <= self.config.max_epoch and not stopped.all():
            for _ in range(self.config.epoch_size):
                self._one_pass(xs, ys)  # a stopped probe trains on, unused: its best weights are kept
            epoch += self.config.epoch_size
            for (s, m), accuracy in np.ndenumerate(self._accuracies(validation)):
                if stopped[s, m]:
                    continue
                if accuracy > best[s, m]:
                    best[s, m] = accuracy
                    rows = slice(m * self.classes, (m + 1) * self.classes)
                    best_weight[s, rows], best_bias[s, rows] = self.weight.detach()[s, rows], self.bias.detach()[s, rows]
                elif strikes[s, m] >= self.config.tenacity:
                    stopped[s, m] = True
                else:
                    strikes[s, m] += 1  # never reset: SentEval counts every non-improving epoch
        with torch.no_grad():
            self.weight.copy_(best_weight)
            self.bias.copy_(best_bias)
        return best.tolist()

    def _one_pass(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> None:
        orders = [torch.from_numpy(rng.permutation(len(x))).to(self.device) for rng, x in zip(self.rngs, xs)]
        for start in range(0, len(xs[0]), self.config.batch_size):
            batches = [order[start : start + self.config.batch_size] for order in orders]
            sizes = [len(batch) for batch in batches]
            if len(set(sizes)) == 1:
                x = torch.stack([x[batch] for x, batch in zip(xs, batches)])  # (S, b, D)
                y = torch.stack([y[batch] for y, batch in zip(ys, batches)])  # (S, b)
                self._step(x, y, None)
                continue
            # A last batch of different sizes: pad, and weigh the padding 0 (each mean over its own examples).
            x = xs[0].new_zeros(self.sets, max(sizes), xs[0].shape[1])
            y = ys[0].new_zeros(self.sets, max(sizes))
            mask = torch.zeros(self.sets, max(sizes), device=self.device)
            for s, batch in enumerate(batches):
                x[s, : len(batch)], y[s, : len(batch)], mask[s, : len(batch)] = xs[s][batch], ys[s][batch], 1.0
            self._step(x, y, mask)

    def _step(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> None:
        logits = self._logits(x)  # (S, b, L, C)
        targets = y[:, :, None].expand(-1, -1, self.count)  # (S, b, L)
        losses = F.cross_entropy(logits.reshape(-1, self.classes), targets.reshape(-1), reduction="none")
        losses = losses.view(targets.shape)
        if mask is None:
            loss = losses.mean(dim=1).sum()  # each probe's mean over its batch
        else:
            loss = ((losses * mask[:, :, None]).sum(dim=1) / mask.sum(dim=1, keepdim=True)).sum()
        self.optimizer.zero_grad()
        loss.backward()
        with torch.no_grad():  # torch's weight_decay: grad += l2 * param, each probe its own l2
            self.weight.grad.add_(self.weight * self.decay[:, None])
            self.bias.grad.add_(self.bias * self.decay)
        self.optimizer.step()

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """(S, N, D) -> (S, N, L, C)."""
        if self.sets == 1:  # one training set: the plain Linear's arithmetic
            logits = F.linear(x[0], self.weight[0], self.bias[0])[None]
        else:
            logits = torch.baddbmm(self.bias[:, None, :], x, self.weight.transpose(1, 2))
        return logits.view(*x.shape[:2], self.count, self.classes)

    def _tensors(self, features: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.as_tensor(features, dtype=torch.float32, device=self.device),
                torch.as_tensor(labels, dtype=torch.int64, device=self.device))  # fmt: skip

    @torch.no_grad()
    def _predict(self, s: int, x: torch.Tensor) -> torch.Tensor:
        logits = F.linear(x, self.weight[s], self.bias[s]).view(len(x), self.count, self.classes)
        return logits.argmax(dim=2).T  # (L, N)

    def _accuracies(self, data: list[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
        """(S, L) accuracies of set s's probes on data[s]; SentEval: correct / len."""
        return np.asarray([[int(correct) / len(y) for correct in (self._predict(s, x) == y).sum(dim=1)]
                           for s, (x, y) in enumerate(data)])  # fmt: skip

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(L, N) class predictions of the first set's probes, one row per L2."""
        return self._predict(0, torch.as_tensor(features, dtype=torch.float32, device=self.device)).cpu().numpy()

    def score(self, features: np.ndarray, labels: np.ndarray) -> list[float]:
        """The first set's probes' accuracies in [0, 1], one per L2."""
        return self._accuracies([self._tensors(features, labels)])[0].tolist()


@dataclass(frozen=True)
class ProbeFactory:
    """Builds SentEval's classifier for one task: features' width, classes, settings, seed, device."""

    dim: int
    classes: int
    config: ProbeConfig
    seed: int
    device: str | torch.device = "cpu"

    def __call__(self, l2s: Sequence[float], sets: int = 1) -> LinearProbes:
        return LinearProbes(self.dim, self.classes, l2s=l2s, config=self.config, seed=self.seed, device=self.device,
                            sets=sets)  # fmt: skip


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` intra-op CPU threads, then restore torch's setting (None: leave it).

    A probe's matmuls are tiny (batch x width x classes): threads only add synchronisation, and on a
    busy machine a 2-thread pass over 9k examples measured 60x slower than a 1-thread one.
    """
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
