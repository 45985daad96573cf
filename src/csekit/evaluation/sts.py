"""Semantic textual similarity, scored exactly as SentEval scores it for SimCSE's tables.

Protocol (SentEval ``senteval/sts.py`` as used by SimCSE's ``evaluation.py``; Gao et al. 2021, Sec. 5.1
and Appendix B):

- STS12–STS16: every subset file of the year; pairs whose gold score is blank are skipped; sentences
  are whitespace-tokenised and re-joined with single spaces. The reported number is the "all"
  aggregate: Spearman correlation of cosine similarity and gold score over the pairs of all subsets
  pooled. The unweighted ("mean") and pair-weighted ("wmean") averages of per-subset correlations are
  reported too, since other papers use them.
- STS-B and SICK-R: the test split (``dev`` mode: STS-B dev, SICK-R trial), cosine Spearman, no
  regressor trained.
- Numbers are correlations ×100; the headline is the plain average of the seven tasks' Spearman.

Speed: sentences repeat across pairs and tasks, so each distinct sentence is encoded once, in
length-sorted batches, and the cosines are read off one embedding table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr

from csekit.data.senteval import resolve_data_dir, verify_files
from csekit.errors import CsekitError
from csekit.evaluation.base import EvaluationSettings, Evaluator, parse_task_names

#: SentEval's STS12–16 subsets (STS13 has no SMT subset: its licence forbids redistribution).
YEARLY_SUBSETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sts12": ("STS/STS12-en-test", ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews")),
    "sts13": ("STS/STS13-en-test", ("FNWN", "headlines", "OnWN")),
    "sts14": ("STS/STS14-en-test", ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news")),
    "sts15": ("STS/STS15-en-test", ("answers-forums", "answers-students", "belief", "headlines", "images")),
    "sts16": ("STS/STS16-en-test", ("answer-answer", "headlines", "plagiarism", "postediting", "question-question")),
}
#: Single-file tasks: mode -> file.
SPLIT_FILES: dict[str, dict[str, str]] = {
    "stsb": {"test": "STS/STSBenchmark/sts-test.csv", "dev": "STS/STSBenchmark/sts-dev.csv"},
    "sickr": {"test": "SICK/SICK_test_annotated.txt", "dev": "SICK/SICK_trial.txt"},
}
TASKS: tuple[str, ...] = (*YEARLY_SUBSETS, *SPLIT_FILES)
TITLES = {"sts12": "STS12", "sts13": "STS13", "sts14": "STS14", "sts15": "STS15", "sts16": "STS16",
          "stsb": "STS-B", "sickr": "SICK-R"}  # fmt: skip
#: Scored pairs per task and mode: a second check, after the checksums, that the reader read it all.
EXPECTED_PAIRS = {
    ("sts12", "test"): 3108, ("sts13", "test"): 1500, ("sts14", "test"): 3750, ("sts15", "test"): 3000,
    ("sts16", "test"): 1186, ("stsb", "test"): 1379, ("sickr", "test"): 4927,
    ("stsb", "dev"): 1500, ("sickr", "dev"): 500,
}  # fmt: skip


@dataclass(frozen=True)
class ScoredPairs:
    """One subset: sentence pairs with gold similarity scores."""

    name: str
    first: list[str]
    second: list[str]
    gold: np.ndarray  # (N,) float64


# ------------------------------------------------------------------------------------ reading
def _words(text: str) -> str:
    return " ".join(text.split())  # SentEval splits on whitespace; SimCSE's batcher re-joins with " "


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise CsekitError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def read_sts_subset(input_path: Path, gold_path: Path, name: str = "") -> ScoredPairs:
    """A SentEval STS subset: ``STS.input.X.txt`` (two tab-separated sentences a line) + ``STS.gs.X.txt``."""
    inputs, golds = _lines(input_path), _lines(gold_path)
    if len(inputs) != len(golds):
        raise CsekitError(
            f"{gold_path} has {len(golds)} lines but {input_path} has {len(inputs)}: one of them is truncated"
        )
    first, second, gold = [], [], []
    for number, (line, score) in enumerate(zip(inputs, golds), start=1):
        fields = line.split("\t")
        if len(fields) != 2:
            raise CsekitError(f"{input_path}:{number}: expected 2 tab-separated sentences, found {len(fields)} field(s)")
        if score.strip() == "":
            continue  # SentEval skips pairs with no gold score
        first.append(_words(fields[0]))
        second.append(_words(fields[1]))
        gold.append(_parse_score(score, gold_path, number))
    return ScoredPairs(name or input_path.name, first, second, np.asarray(gold, dtype=np.float64))


def read_split_file(path: Path, task: str) -> ScoredPairs:
    """STS-B (``genre, file, year, id, score, s1, s2[, ...]``) or SICK (header; ``id, s1, s2, score, ...``)."""
    columns, skip_header = ((5, 6, 4), False) if task == "stsb" else ((1, 2, 3), True)
    first, second, gold = [], [], []
    for number, line in enumerate(_lines(path), start=1):
        if skip_header and number == 1:
            continue
        fields = line.strip().split("\t")
        if len(fields) <= max(columns):
            raise CsekitError(f"{path}:{number}: expected at least {max(columns) + 1} tab-separated fields, found {len(fields)}")
        a, b, score = columns
        first.append(_words(fields[a]))
        second.append(_words(fields[b]))
        gold.append(_parse_score(fields[score], path, number))
    return ScoredPairs(path.name, first, second, np.asarray(gold, dtype=np.float64))


def _parse_score(text: str, path: Path, number: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise CsekitError(f"{path}:{number}: gold score {text.strip()!r} is not a number") from None


def task_files(task: str, mode: str) -> list[str]:
    """Relative paths (inside downstream/) of the files ``task`` reads in ``mode``."""
    if task in YEARLY_SUBSETS:
        if mode != "test":
            raise CsekitError(f"{task} has only a test set; dev mode evaluates stsb and sickr")
        folder, subsets = YEARLY_SUBSETS[task]
        return [f"{folder}/STS.{kind}.{subset}.txt" for subset in subsets for kind in ("input", "gs")]
    return [SPLIT_FILES[task][mode]]


def load_task(data_dir: Path, task: str, mode: str = "test", *, verify: bool = True) -> list[ScoredPairs]:
    files = task_files(task, mode)
    if verify:
        verify_files(data_dir, files)
    if task in YEARLY_SUBSETS:
        subsets = [
            read_sts_subset(data_dir / inputs, data_dir / gold, name=subset)
            for subset, inputs, gold in zip(YEARLY_SUBSETS[task][1], files[0::2], files[1::2])
        ]
    else:
        subsets = [read_split_file(data_dir / files[0], task)]
    pairs = sum(len(subset.gold) for subset in subsets)
    expected = EXPECTED_PAIRS[(task, mode)]
    if verify and pairs != expected:
        raise CsekitError(f"{task} ({mode}) has {pairs} scored pairs in {data_dir}, expected {expected}")
    return subsets


def parse_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"sts"`` (the seven), or names separated by commas: ``"sts12,stsb"``."""
    return parse_task_names(spec, known=TASKS, group="sts")


# ------------------------------------------------------------------------------------ scoring
def cosine_rows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Row-wise cosine of (N, H) arrays in float64; a zero vector scores 0, as SentEval's nan_to_num does.

    SentEval's formula, u.v / sqrt(u.u * v.v): for a pair of identical sentences (one embedding row) it is
    exactly 1, so such pairs tie as they should. ``norm(u) * norm(v)`` is off by rounding in most rows,
    which would order those ties by float noise and move Spearman (e.g. STS12 SMTeuroparl has 65 such pairs).
    """
    first, second = first.astype(np.float64), second.astype(np.float64)
    squares = np.einsum("nh,nh->n", first, first) * np.einsum("nh,nh->n", second, second)  # (N,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(np.einsum("nh,nh->n", first, second) / np.sqrt(squares))


def correlations(similarity: np.ndarray, gold: np.ndarray) -> tuple[float, float]:
    """(Spearman, Pearson) ×100."""
    return 100 * float(spearmanr(similarity, gold)[0]), 100 * float(pearsonr(similarity, gold)[0])


class STSEvaluator(Evaluator):
    """Evaluate STS tasks; ``evaluate(model)`` returns flat metrics, ``avg`` being the headline.

    Keys: ``<task>`` (Spearman ×100; for STS12–16 the "all" aggregate), ``<task>/pearson``,
    ``<task>/pairs``; for STS12–16 also ``/spearman_mean``, ``/spearman_wmean``, ``/pearson_mean``,
    ``/pearson_wmean`` and ``<task>/<subset>/spearman`` etc.; ``avg`` over the tasks evaluated.
    """

    family = "sts"
    tasks_known = TASKS
    primary_metric = "avg"

    @classmethod
    def from_settings(cls, tasks: list[str], settings: EvaluationSettings) -> STSEvaluator:
        return cls(tasks, mode=settings.mode, data_dir=settings.data_dir, batch_size=settings.batch_size)

    @classmethod
    def expand(cls, name: str, settings: EvaluationSettings) -> list[str]:
        if name == cls.family and settings.mode == "dev":
            return list(SPLIT_FILES)  # STS12-16 have no dev sets: STS-B dev and SICK-R trial
        return super().expand(name, settings)

    def __init__(
        self,
        tasks: str | list[str] | tuple[str, ...] = TASKS,
        *,
        mode: str = "test",
        data_dir: str | os.PathLike | None = None,
        batch_size: int = 128,
        verify: bool = True,
    ):
        if mode not in ("test", "dev"):
            raise CsekitError(f"mode must be 'test' or 'dev', not {mode!r}")
        self.tasks = parse_tasks(tasks)
        self.mode = mode
        self.batch_size = batch_size
        self.data_dir = resolve_data_dir(data_dir)
        self.data = {task: load_task(self.data_dir, task, mode, verify=verify) for task in self.tasks}
        # Each distinct sentence once, for all tasks together.
        texts = {text for subsets in self.data.values() for s in subsets for text in (*s.first, *s.second)}
        self.sentences = sorted(texts)
        self._row = {text: row for row, text in enumerate(self.sentences)}

    def score(self, table: np.ndarray) -> dict[str, float]:
        """Metrics from embeddings of ``self.sentences`` (row i embeds sentence i)."""
        results: dict[str, float] = {}
        for task, subsets in self.data.items():
            similarities = [self._similarities(table, subset) for subset in subsets]
            if task in YEARLY_SUBSETS:
                results.update(_aggregate(task, subsets, similarities))
            else:
                spearman, pearson = correlations(similarities[0], subsets[0].gold)
                results.update({task: spearman, f"{task}/pearson": pearson, f"{task}/pairs": len(subsets[0].gold)})
        results["avg"] = float(np.mean([results[task] for task in self.tasks]))
        return results

    def predictions(self, table: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Task -> (cosine (N,), gold (N,)) per scored pair, from embeddings of ``self.sentences``.

        STS12–16 pool their subsets in file order, so the Spearman of a task's pair is its headline
        ("all") number; a paired bootstrap resamples these pairs (:mod:`csekit.evaluation.statistics`).
        """
        pairs = {}
        for task, subsets in self.data.items():
            similarity = np.concatenate([self._similarities(table, subset) for subset in subsets])  # (N,)
            pairs[task] = (similarity, np.concatenate([subset.gold for subset in subsets]))
        return pairs

    def format_table(self, metrics: dict[str, float]) -> str:
        """Tasks × metrics (Spearman first: the number SimCSE's tables report), then the average."""
        header = f"{'task':<8} {'spearman':>9} {'pearson':>8} {'sp.mean':>8} {'sp.wmean':>9} {'pairs':>6}"
        rows = [header, "-" * len(header)]
        for task in self.tasks:
            yearly = task in YEARLY_SUBSETS
            mean = f"{metrics[f'{task}/spearman_mean']:8.2f}" if yearly else f"{'':8}"
            wmean = f"{metrics[f'{task}/spearman_wmean']:9.2f}" if yearly else f"{'':9}"
            rows.append(f"{TITLES[task]:<8} {metrics[task]:9.2f} {metrics[f'{task}/pearson']:8.2f} {mean} {wmean} "
                        f"{int(metrics[f'{task}/pairs']):6d}")  # fmt: skip
        rows.append(f"{'avg':<8} {metrics['avg']:9.2f}")
        return "\n".join(rows)

    def summary_rows(self) -> list[tuple[str, str, int]]:
        return [(task, TITLES[task], 2) for task in self.tasks] + [("avg", "avg", 2)]

    def _similarities(self, table: np.ndarray, subset: ScoredPairs) -> np.ndarray:
        first = table[[self._row[text] for text in subset.first]]  # (N, H)
        second = table[[self._row[text] for text in subset.second]]  # (N, H)
        return cosine_rows(first, second)


def _aggregate(task: str, subsets: list[ScoredPairs], similarities: list[np.ndarray]) -> dict[str, float]:
    """SentEval's "all" (pooled pairs), "mean" and "wmean" (weighted by pairs) aggregates."""
    results: dict[str, float] = {}
    per_subset = []
    for subset, similarity in zip(subsets, similarities):
        spearman, pearson = correlations(similarity, subset.gold)
        per_subset.append((spearman, pearson, len(subset.gold)))
        results.update({f"{task}/{subset.name}/spearman": spearman, f"{task}/{subset.name}/pearson": pearson})
    spearmans, pearsons, weights = (np.array(column, dtype=np.float64) for column in zip(*per_subset))
    spearman_all, pearson_all = correlations(np.concatenate(similarities), np.concatenate([s.gold for s in subsets]))
    results.update({
        task: spearman_all,
        f"{task}/pearson": pearson_all,
        f"{task}/spearman_mean": float(spearmans.mean()),
        f"{task}/spearman_wmean": float(np.average(spearmans, weights=weights)),
        f"{task}/pearson_mean": float(pearsons.mean()),
        f"{task}/pearson_wmean": float(np.average(pearsons, weights=weights)),
        f"{task}/pairs": float(weights.sum()),
    })  # fmt: skip
    return results
