"""Fine-tuning a static table against its teacher: Wada et al. 2025's knowledge distillation (``train.py``).

For a batch of sentences, teacher and student each give an in-batch distribution over the other
sentences, ``softmax_j(cos(e_i, e_j) / t)`` with t = 0.05 and the diagonal left out; the loss is the
student's cross-entropy against the teacher's (:func:`csekit.losses.similarity_kl`: the KL, which differs
by the teacher's entropy, a constant, so the gradients are the same). Only the table learns; the
teacher's embeddings are computed once, before. The reference's schedule: Adam (learning rate 1e-3),
batches of 128, the gradient norm clipped at 5, a dev loss every 40 steps (5,120 sentences drawn afresh
from the training set), the table of the lowest dev loss kept, and a stop after 5 evaluations without a
better one, or after 15 x 2,000 steps.

As in the reference the student sums its token rows (``Net.encode``); the cosine is that of the mean the
saved model computes. Rows held at zero (punctuation, special tokens) stay zero: they get no gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor, nn

from csekit.errors import CsekitError
from csekit.losses import similarity_kl
from csekit.models.static import StaticEncoder


@dataclass(frozen=True)
class FineTuneSettings:
    batch_size: int = 128  # -bs 128
    learning_rate: float = 1e-3  # optim.Adam's default, which train.py uses
    temperature: float = 0.05  # -temp 0.05
    max_steps: int = 30_000  # -epoch 15 of 2,000 steps (total_n / bs)
    eval_every: int = 40  # step_size = 128 * 40 sentences between dev losses
    patience: int = 5  # early_stop_count
    clip_norm: float = 5.0
    dev_size: int = 10_000  # 10k held-out sentences, at most a tenth of them here
    dev_batch_size: int = 256
    seed: int = 0


REFERENCE_SCHEDULE = FineTuneSettings()


class TableStep:
    """One optimiser step on a batch of sentence indices: Adam (fused: one pass over the table instead of
    several) on the sum-of-rows student, the frozen rows' gradient zeroed before the norm is clipped, which
    is the gradient of the student with those rows masked to zero (``tests`` check it against that plain
    step)."""

    def __init__(self, student: StaticEncoder, rows: Sequence[Sequence[int]], targets: Tensor, *, frozen: np.ndarray,
                 settings: FineTuneSettings):  # fmt: skip
        self.student, self.rows, self.targets, self.settings = student, rows, targets, settings
        self.frozen = torch.as_tensor(np.flatnonzero(frozen), device=student.device)
        self.optimizer = torch.optim.Adam([student.embedding.weight], lr=settings.learning_rate, fused=True)

    def loss(self, batch: np.ndarray) -> Tensor:
        input_ids, offsets = self.student.batch([self.rows[i] for i in batch])
        embedded = nn.functional.embedding_bag(input_ids, self.student.embedding.weight, offsets, mode="sum")  # (B, D)
        return similarity_kl(embedded, self.targets[batch].to(self.student.device), temperature=self.settings.temperature)

    def __call__(self, batch: np.ndarray) -> float:
        weight = self.student.embedding.weight
        self.optimizer.zero_grad()
        loss = self.loss(batch)
        loss.backward()
        weight.grad[self.frozen] = 0.0  # (V, D): zero rows stay zero (Adam moves nothing without a gradient)
        nn.utils.clip_grad_norm_([weight], self.settings.clip_norm)
        self.optimizer.step()
        return loss.item()


def fine_tune(student: StaticEncoder, sentences: Sequence[str], teacher_embeddings: np.ndarray, *, frozen: np.ndarray,
              settings: FineTuneSettings = REFERENCE_SCHEDULE) -> dict:  # fmt: skip
    """Fit ``student``'s table in place to the teacher's (N, Ht) embeddings of ``sentences``; rows ``frozen``
    (V,) bool stay as they are (zero). Returns the run's record: settings, dev losses, the step kept."""
    if len(sentences) != len(teacher_embeddings):
        raise CsekitError(f"{len(sentences)} sentences but {len(teacher_embeddings)} teacher embeddings")
    order = np.random.default_rng(settings.seed).permutation(len(sentences))
    dev_size = min(settings.dev_size, len(sentences) // 10)
    if dev_size < 2 or len(sentences) - dev_size < settings.batch_size or settings.max_steps < 1:
        raise CsekitError(f"fine-tuning needs a dev set, a batch of {settings.batch_size} and a step: "
                          f"{len(sentences)} sentences, {settings.max_steps} steps are too few")  # fmt: skip
    rows = student.tokenize(sentences)["input_ids"]
    step_on = TableStep(student, rows, torch.as_tensor(teacher_embeddings, dtype=torch.float32), frozen=frozen,
                        settings=settings)  # fmt: skip
    dev, train = order[:dev_size], order[dev_size:]

    def dev_loss() -> float:
        with torch.no_grad():
            chunks = [dev[i : i + settings.dev_batch_size] for i in range(0, len(dev), settings.dev_batch_size)]
            return float(np.mean([step_on.loss(chunk).item() for chunk in chunks if len(chunk) > 1]))

    rng = np.random.default_rng(settings.seed + 1)
    record = {"settings": asdict(settings), "train_sentences": len(train), "dev_sentences": len(dev),
              "initial_dev_loss": dev_loss(), "evaluations": []}  # fmt: skip
    best_loss, best_table, best_step, step, waited = float("inf"), None, 0, 0, 0
    while step < settings.max_steps and waited < settings.patience:
        drawn = rng.permutation(train)[: settings.batch_size * settings.eval_every]  # a fresh draw per round
        losses = []
        for start in range(0, len(drawn) - settings.batch_size + 1, settings.batch_size):
            losses.append(step_on(drawn[start : start + settings.batch_size]))
            step += 1
            if step == settings.max_steps:
                break
        current = dev_loss()
        record["evaluations"].append({"step": step, "train_loss": float(np.mean(losses)), "dev_loss": current})
        if current < best_loss:
            best_loss, best_table, best_step, waited = current, student.embedding.weight.detach().clone(), step, 0
        else:
            waited += 1
    with torch.no_grad():
        student.embedding.weight.copy_(best_table)
    record.update(best_step=best_step, best_dev_loss=best_loss, steps=step)
    return record
