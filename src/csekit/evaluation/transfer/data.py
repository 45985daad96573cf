"""SentEval's transfer data: readers for each task's files, in SentEval's order (see the package docstring)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from csekit.data.senteval import verify_files
from csekit.errors import CsekitError
from csekit.evaluation.base import parse_task_names

TRANSFER_TASKS: tuple[str, ...] = ("mr", "cr", "subj", "mpqa", "sst2", "trec", "mrpc")
TITLES = {"mr": "MR", "cr": "CR", "subj": "SUBJ", "mpqa": "MPQA", "sst2": "SST2", "trec": "TREC",
          "mrpc": "MRPC"}  # fmt: skip
#: Files read per task, relative to downstream/. Binary tasks: (class 1 file, class 0 file).
TASK_FILES: dict[str, tuple[str, ...]] = {
    "mr": ("MR/rt-polarity.pos", "MR/rt-polarity.neg"),
    "cr": ("CR/custrev.pos", "CR/custrev.neg"),
    "subj": ("SUBJ/subj.objective", "SUBJ/subj.subjective"),
    "mpqa": ("MPQA/mpqa.pos", "MPQA/mpqa.neg"),
    "sst2": ("SST/binary/sentiment-train", "SST/binary/sentiment-dev", "SST/binary/sentiment-test"),
    "trec": ("TREC/train_5500.label", "TREC/TREC_10.label"),
    "mrpc": ("MRPC/msr_paraphrase_train.txt", "MRPC/msr_paraphrase_test.txt"),
}
#: Examples per split: a second check, after the checksums, that the reader read everything.
EXPECTED_EXAMPLES: dict[str, dict[str, int]] = {
    "mr": {"all": 10662}, "cr": {"all": 3775}, "subj": {"all": 10000}, "mpqa": {"all": 10606},
    "sst2": {"train": 67349, "dev": 872, "test": 1821}, "trec": {"train": 5452, "test": 500},
    "mrpc": {"train": 4076, "test": 1725},
}  # fmt: skip
TREC_CLASSES = {"ABBR": 0, "DESC": 1, "ENTY": 2, "HUM": 3, "LOC": 4, "NUM": 5}
CLASSES = {"trec": len(TREC_CLASSES)}  # every other task is binary


@dataclass(frozen=True)
class Examples:
    """One split's labelled examples, in SentEval's order."""

    texts: list[str]
    labels: np.ndarray  # (N,) int64
    second: list[str] | None = None  # MRPC: the other sentence of each pair


def _decode(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise CsekitError(f"{path}:{line}: not {encoding.upper()} text ({error.reason})") from None


def _file_lines(path: Path, encoding: str) -> list[str]:
    """Lines as Python's text-mode ``for line in f`` yields them (SST, TREC, MRPC): \\n, \\r\\n or \\r."""
    text = _decode(path, encoding).replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    return lines[:-1] if lines and lines[-1] == "" else lines


def _words(text: str) -> str:
    return " ".join(text.split())


def _label(text: str, allowed: range, path: Path, number: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
    if value not in allowed:
        raise CsekitError(f"{path}:{number}: label {text.strip()!r} is not one of {list(allowed)}")
    return value


def read_sentences(path: Path) -> list[str]:
    """MR/CR/SUBJ/MPQA: one sentence a line, latin-1, blank lines kept (``f.read().splitlines()``)."""
    return [_words(line) for line in _decode(path, "latin-1").splitlines()]


def read_sst(path: Path) -> tuple[list[str], list[int]]:
    """SST-2: ``sentence<TAB>0|1`` a line, UTF-8."""
    texts, labels = [], []
    for number, line in enumerate(_file_lines(path, "utf-8"), start=1):
        fields = line.strip().split("\t")
        if len(fields) != 2:
            raise CsekitError(f"{path}:{number}: expected 'sentence<TAB>label', found {len(fields)} field(s)")
        texts.append(_words(fields[0]))
        labels.append(_label(fields[1], range(2), path, number))
    return texts, labels


def read_trec(path: Path) -> tuple[list[str], list[int]]:
    """TREC: ``COARSE:fine question words``, latin-1; the class is the coarse label."""
    texts, labels = [], []
    for number, line in enumerate(_file_lines(path, "latin-1"), start=1):
        coarse, colon, rest = line.strip().partition(":")
        _fine, space, question = rest.partition(" ")
        if not colon or not space:
            raise CsekitError(
                f"{path}:{number}: expected 'COARSE:fine question', found {line.strip()[:40]!r}"
            )
        if coarse not in TREC_CLASSES:
            raise CsekitError(
                f"{path}:{number}: unknown class {coarse!r}; expected one of {', '.join(TREC_CLASSES)}"
            )
        texts.append(_words(question))
        labels.append(TREC_CLASSES[coarse])
    return texts, labels


def read_mrpc(path: Path) -> tuple[list[str], list[str], list[int]]:
    """MRPC: header, then ``label<TAB>id<TAB>id<TAB>s1<TAB>s2``, UTF-8."""
    first, second, labels = [], [], []
    for number, line in enumerate(_file_lines(path, "utf-8"), start=1):
        if number == 1:
            continue  # SentEval drops the first row unread: the header
        fields = line.strip().split("\t")
        if len(fields) != 5:
            raise CsekitError(f"{path}:{number}: expected 5 tab-separated fields, found {len(fields)}")
        first.append(_words(fields[3]))
        second.append(_words(fields[4]))
        labels.append(_label(fields[0], range(2), path, number))
    return first, second, labels


def senteval_order(texts: list[str], labels: list[int], second: list[str] | None = None) -> Examples:
    """Sort as SentEval's ``run`` does: by word count (of each side, for pairs), then label; stable."""
    if second is None:
        order = sorted(range(len(texts)), key=lambda i: (len(texts[i].split()), labels[i]))
    else:
        order = sorted(
            range(len(texts)), key=lambda i: (len(texts[i].split()), len(second[i].split()), labels[i])
        )
    return Examples(
        texts=[texts[i] for i in order],
        labels=np.asarray([labels[i] for i in order], dtype=np.int64),
        second=None if second is None else [second[i] for i in order],
    )


def load_transfer_task(data_dir: Path, task: str, *, verify: bool = True) -> dict[str, Examples]:
    """Split name ("all" for the cross-validated tasks, else train/dev/test) -> examples."""
    files = TASK_FILES[task]
    if verify:
        verify_files(data_dir, files)
    paths = [data_dir / relative for relative in files]
    if task in ("mr", "cr", "subj", "mpqa"):
        positive, negative = read_sentences(paths[0]), read_sentences(paths[1])
        splits = {"all": senteval_order(positive + negative, [1] * len(positive) + [0] * len(negative))}
    elif task == "sst2":
        splits = {
            name: senteval_order(*read_sst(path)) for name, path in zip(("train", "dev", "test"), paths)
        }
    elif task == "trec":
        splits = {name: senteval_order(*read_trec(path)) for name, path in zip(("train", "test"), paths)}
    else:
        splits = {}
        for name, path in zip(("train", "test"), paths):
            first, second, labels = read_mrpc(path)
            splits[name] = senteval_order(first, labels, second)
    counts = {name: len(split.labels) for name, split in splits.items()}
    if verify and counts != EXPECTED_EXAMPLES[task]:
        raise CsekitError(f"{task} has {counts} examples in {data_dir}, expected {EXPECTED_EXAMPLES[task]}")
    return splits


def parse_transfer_tasks(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"transfer"`` (the seven), or names separated by commas: ``"mr,trec"``."""
    return parse_task_names(spec, known=TRANSFER_TASKS, group="transfer")


def subsample(split: Examples, limit: int, seed: int) -> Examples:
    if len(split.labels) <= limit:
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split.labels), size=limit, replace=False))
    return replace(
        split,
        texts=[split.texts[i] for i in keep],
        labels=split.labels[keep],
        second=None if split.second is None else [split.second[i] for i in keep],
    )
