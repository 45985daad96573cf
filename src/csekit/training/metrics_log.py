"""metrics.jsonl (one JSON object per logged step) and, optionally, TensorBoard."""

from __future__ import annotations

import json
from pathlib import Path

from csekit.atomic import write_text
from csekit.errors import CsekitError


class MetricsLog:
    """Appends one row per logged step. A resumed run first drops the rows its killed predecessor logged
    after the checkpoint it resumes from (``keep_through``), so no step is logged twice, and a line the kill
    cut short."""

    def __init__(self, output: Path, *, tensorboard: bool, enabled: bool, keep_through: int | None = None):
        self.enabled = enabled
        self.path = output / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        if keep_through is not None and self.path.is_file():
            lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
            kept = [line for line in lines if 0 <= _step(line) <= keep_through]
            if len(kept) != len(lines):
                write_text(self.path, "".join(kept))
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise CsekitError("tensorboard: true needs the tensorboard package (pip install tensorboard)") from None
            self.writer = SummaryWriter(str(output / "tensorboard"))

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _step(line: str) -> int:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return -1  # a line cut short
