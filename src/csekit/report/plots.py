"""The report's figures as PNG bytes, drawn with matplotlib's Agg renderer.

Figures are built from ``matplotlib.figure.Figure`` directly, not pyplot: no global backend or
figure registry is touched, so a report can be drawn inside any program (and headless).
"""

from __future__ import annotations

import io
import textwrap

import numpy as np

from csekit.report.collect import HEATMAP_SENTENCES, RunData

#: Curves drawn when the log has them: (metrics.jsonl key, panel title); ``DEV`` is each run's dev score.
DEV = "dev"
CURVES = (("train/loss", "training loss"), ("train/lr", "learning rate"), (DEV, "dev score"))
DPI = 100


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    return buffer.getvalue()


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def training_curves(runs: list[RunData]) -> bytes | None:
    """Loss, learning rate and dev score against step, one line per run; None when no run has a log."""
    from matplotlib.ticker import MaxNLocator

    def key_of(run: RunData, key: str) -> str:
        return run.dev_key if key == DEV else key

    panels = [(key, title) for key, title in CURVES if any(key_of(run, key) in row for run in runs for row in run.log)]
    if not panels:
        return None
    figure = _figure(4.2 * len(panels), 3.2)
    axes = np.atleast_1d(figure.subplots(1, len(panels)))
    for axis, (key, title) in zip(axes, panels):
        if key == DEV:
            title = f"{title}: {runs[0].dev_key.removeprefix('dev/')}"
        for run in runs:
            points = [(row["step"], row[key_of(run, key)]) for row in run.log if key_of(run, key) in row]
            if points:
                steps, values = zip(*points)
                axis.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, label=run.name)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        if key == "train/lr":
            axis.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if len(runs) > 1:
        axes[0].legend(fontsize="small")
    return _png(figure)


def align_uniform(runs: list[RunData]) -> bytes | None:
    """Wang & Isola's plane as SimCSE's Fig. 2 draws it: uniformity (x) against alignment (y), lower-left is
    better; each run's models joined in training order. None when no run has a point."""
    if not any(run.points for run in runs):
        return None
    figure = _figure(5.5, 4.2)
    axis = figure.subplots()
    for run in runs:
        if not run.points:
            continue
        uniform = [point.uniform for point in run.points]
        align = [point.align for point in run.points]
        (line,) = axis.plot(uniform, align, marker="o", label=run.name)
        for point in run.points:
            axis.annotate(f"{point.label} ({point.step})", (point.uniform, point.align), fontsize=8,
                          xytext=(4, 4), textcoords="offset points", color=line.get_color())  # fmt: skip
    axis.set_xlabel("uniformity (log E exp(-2 d²), lower is better)")
    axis.set_ylabel("alignment (E d², lower is better)")
    axis.grid(alpha=0.3)
    if len(runs) > 1:
        axis.legend(fontsize="small")
    return _png(figure)


def similarity_heatmaps(runs: list[RunData]) -> bytes | None:
    """Cosine similarity of the fixed sentences under each run's best model; None when no model loaded."""
    shown = [run for run in runs if run.similarity is not None]
    if not shown:
        return None
    labels = ["\n".join(textwrap.wrap(text, 22)) for text in HEATMAP_SENTENCES]
    figure = _figure(5.2 * len(shown) + 0.8, 5.0)
    axes = np.atleast_1d(figure.subplots(1, len(shown)))
    for axis, run in zip(axes, shown):
        image = axis.imshow(run.similarity, vmin=-1, vmax=1, cmap="RdBu_r")
        for (row, column), value in np.ndenumerate(run.similarity):
            axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                      color="white" if abs(value) > 0.6 else "black")  # fmt: skip
        axis.set_xticks(range(len(labels)), [str(i + 1) for i in range(len(labels))])
        axis.set_yticks(range(len(labels)), [f"{i + 1}. {label}" for i, label in enumerate(labels)], fontsize=7)
        axis.set_title(run.name)
    figure.colorbar(image, ax=list(axes), shrink=0.8, label="cosine")
    return _png(figure)
