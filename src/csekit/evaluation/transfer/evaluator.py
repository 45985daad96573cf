"""The transfer evaluator: SentEval's seven classification tasks over one model's embeddings."""

from __future__ import annotations

import os

import numpy as np
import torch

from csekit.data.senteval import resolve_data_dir
from csekit.errors import CsekitError
from csekit.evaluation.base import EvaluationSettings, Evaluator
from csekit.evaluation.transfer.data import TITLES, TRANSFER_TASKS, load_transfer_task, parse_transfer_tasks, subsample
from csekit.evaluation.transfer.probes import MODES, torch_threads
from csekit.evaluation.transfer.protocols import run_task


class TransferEvaluator(Evaluator):
    """Evaluate SentEval transfer tasks; ``evaluate(model)`` returns flat metrics, ``avg`` being the headline.

    Keys: ``<task>`` (test accuracy x100), ``<task>/dev`` (SentEval's ``devacc``: the selection
    score), ``mrpc/f1``, and ``avg`` over the tasks evaluated. ``limit`` keeps a seeded random subset
    of at most that many examples per split (smoke tests and quick looks: not SentEval's numbers).
    ``device`` is where the probes train; ``threads`` the CPU threads they use (see :func:`torch_threads`).
    """

    family = "transfer"
    tasks_known = TRANSFER_TASKS
    primary_metric = "avg"

    @classmethod
    def from_settings(cls, tasks: list[str], settings: EvaluationSettings) -> TransferEvaluator:
        return cls(tasks, mode=settings.transfer_mode, data_dir=settings.data_dir, batch_size=settings.batch_size,
                   limit=settings.limit)  # fmt: skip

    def __init__(
        self,
        tasks: str | list[str] | tuple[str, ...] = TRANSFER_TASKS,
        *,
        mode: str = "test",
        data_dir: str | os.PathLike | None = None,
        batch_size: int = 128,
        seed: int = 1111,
        verify: bool = True,
        limit: int | None = None,
        device: str | torch.device = "cpu",
        threads: int | None = 1,
    ):
        if mode not in MODES:
            raise CsekitError(f"transfer mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.tasks = parse_transfer_tasks(tasks)
        self.mode, self.config = mode, MODES[mode]
        self.batch_size, self.seed, self.device, self.threads = batch_size, seed, device, threads
        self.data_dir = resolve_data_dir(data_dir)
        self.data = {task: load_transfer_task(self.data_dir, task, verify=verify) for task in self.tasks}
        if limit is not None:
            self.data = {task: {name: subsample(split, limit, seed) for name, split in splits.items()}
                         for task, splits in self.data.items()}  # fmt: skip
        # Each distinct sentence once, for all tasks together.
        texts = {
            t for splits in self.data.values() for s in splits.values() for t in (*s.texts, *(s.second or ()))
        }
        self.sentences = sorted(texts)

    def score(self, table: np.ndarray) -> dict[str, float]:
        """Metrics from embeddings of ``self.sentences`` (row i embeds sentence i)."""
        row = {text: i for i, text in enumerate(self.sentences)}
        results: dict[str, float] = {}
        with torch_threads(self.threads):
            for task in self.tasks:
                results.update(run_task(task, self.data[task], lambda texts: table[[row[t] for t in texts]],
                                        config=self.config, seed=self.seed, device=self.device))  # fmt: skip
        results["avg"] = float(np.mean([results[task] for task in self.tasks]))
        return results

    def format_table(self, metrics: dict[str, float]) -> str:
        """Test accuracy (SimCSE's transfer table), SentEval's dev accuracy, MRPC's F1, then the average."""
        header = f"{'task':<8} {'acc':>7} {'dev':>7} {'f1':>7}"
        rows = [header, "-" * len(header)]
        for task in self.tasks:
            f1 = f"{metrics['mrpc/f1']:7.2f}" if task == "mrpc" else ""
            rows.append(f"{TITLES[task]:<8} {metrics[task]:7.2f} {metrics[f'{task}/dev']:7.2f} {f1}".rstrip())
        rows.append(f"{'avg':<8} {metrics['avg']:7.2f}")
        return "\n".join(rows)

    def summary_rows(self) -> list[tuple[str, str, int]]:
        return [(task, TITLES[task], 2) for task in self.tasks] + [("avg", "avg", 2)]
