"""A report as a format-free page: titled sections of text, one table and one figure each.

The HTML and Markdown renderers only lay this out; what is shown is decided here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from csekit.evaluation.sts import TASKS as STS_TASKS
from csekit.evaluation.sts import TITLES
from csekit.evaluation.transfer import TITLES as TRANSFER_TITLES
from csekit.evaluation.transfer import TRANSFER_TASKS
from csekit.report import plots
from csekit.report.collect import HEATMAP_SENTENCES, RunData


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def numeric(self) -> list[bool]:
        """Per column: every cell a number (or "-"), so the renderers right-align it."""

        def is_number(cell: str) -> bool:
            try:
                float(cell)
            except ValueError:
                return cell == "-"
            return True

        return [all(is_number(row[i]) for row in self.rows) for i in range(len(self.header))]


@dataclass
class Figure:
    name: str  # file stem of the PNG beside the Markdown page
    png: bytes
    caption: str


@dataclass
class Section:
    title: str
    text: list[str] = field(default_factory=list)
    table: Table | None = None
    figure: Figure | None = None


@dataclass
class Page:
    title: str
    sections: list[Section]


def build_page(runs: list[RunData]) -> Page:
    title = f"csekit report: {runs[0].name}" if len(runs) == 1 else "csekit comparison: " + " vs ".join(r.name for r in runs)
    sections = [_overview(runs)]
    for section in (_sts(runs), _transfer(runs), _curves(runs), _align_uniform(runs), _heatmap(runs)):
        if section is not None:
            sections.append(section)
    notes = [f"{run.name}: {note}" for run in runs for note in run.notes]
    if notes:
        sections.append(Section("Notes", text=notes))
    return Page(title, sections)


def _overview(runs: list[RunData]) -> Section:
    rows = []
    for run in runs:
        best = run.best_dev
        rows.append([run.name, str(run.config.get("objective", "?")), str(run.config.get("model", "?")),
                     str(run.config.get("pooler", "?")), str(run.last_step), str(run.best_step if best is not None else "-"),
                     f"{best:.2f}" if best is not None else "-"])  # fmt: skip
    header = ["run", "objective", "starting model", "pooler", "steps", "best step", "best dev"]
    return Section("Runs", text=[f"{run.name}: {run.path}" for run in runs], table=Table(header, rows))


def _score_table(runs: list[RunData], family: str, tasks: tuple[str, ...], titles: dict) -> Table | None:
    keys = [f"{family}/{task}" for task in (*tasks, "avg")]
    present = [key for key in keys[:-1] if any(key in run.results for run in runs)]
    if not present:
        return None
    rows = [[run.name, *(f"{run.results[key]:.2f}" if key in run.results else "-" for key in (*present, keys[-1]))]
            for run in runs]  # fmt: skip
    return Table(["run", *(titles[key.split("/", 1)[1]] for key in present), "avg"], rows)


def _sts(runs: list[RunData]) -> Section | None:
    table = _score_table(runs, "sts", STS_TASKS, TITLES)
    if table is None:
        return None
    text = ["Test sets, Spearman ×100 of cosine similarity (STS12–16: SentEval's \"all\"); best/ model."]
    return Section("STS", text=text, table=table)


def _transfer(runs: list[RunData]) -> Section | None:
    table = _score_table(runs, "transfer", TRANSFER_TASKS, TRANSFER_TITLES)
    if table is None:
        return None
    return Section("Transfer", text=["SentEval logistic regression, test accuracy ×100."], table=table)


def _curves(runs: list[RunData]) -> Section | None:
    png = plots.training_curves(runs)
    if png is None:
        return None
    caption = "Training loss, learning rate and dev score (metrics.jsonl) against optimizer step."
    return Section("Training curves", figure=Figure("training-curves", png, caption))


def _align_uniform(runs: list[RunData]) -> Section | None:
    png = plots.align_uniform(runs)
    if png is None:
        return None
    rows = [[run.name, p.label, str(p.step), f"{p.align:.4g}", f"{p.uniform:.4g}"] for run in runs for p in run.points]
    text = ["Alignment and uniformity (Wang & Isola 2020) on STS-B dev, as in SimCSE Fig. 2: lower is better "
            "for both; the line follows training (starting model, best, final)."]  # fmt: skip
    return Section("Alignment and uniformity", text=text, table=Table(["run", "model", "step", "align", "uniform"], rows),
                   figure=Figure("align-uniform", png, "Alignment against uniformity over training."))  # fmt: skip


def _heatmap(runs: list[RunData]) -> Section | None:
    png = plots.similarity_heatmaps(runs)
    if png is None:
        return None
    text = ["Cosine similarity of six fixed sentences (three paraphrase pairs) under the best/ model:"]
    text += [f"{i}. {sentence}" for i, sentence in enumerate(HEATMAP_SENTENCES, start=1)]
    return Section("Embedding similarity", text=text,
                   figure=Figure("similarity", png, "Cosine similarity of the fixed sentences."))  # fmt: skip
