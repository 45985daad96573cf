"""Stream training examples from .txt, .csv, .tsv and .jsonl files, one line at a time.

Every reader yields ``{column: text}`` dicts for the columns an objective needs (``sent0``, ``sent1``,
``hard_neg``) and never holds more than one line in memory, so files larger than memory work.

- ``.txt``: one sentence per line; it supplies the first column only (``sent0`` for unsupervised
  methods).
- ``.csv``: a header row naming the columns (``sent0,sent1,hard_neg``); quoted fields as Python's
  ``csv`` module reads them (strict, so a stray quote is an error rather than a merged row).
- ``.tsv``: a header row, fields split on tabs with no quoting: TSV has no quote convention, and
  treating ``"`` as a quote would silently glue lines of text that merely contain quotes.
- ``.jsonl``: one JSON object per line with (at least) the needed keys, string values (a ``score``
  may be a number).

Labelled pairs (:mod:`csekit.data.labelled`) carry a ``score`` on [0, 1] or an NLI ``label`` column
besides their texts, in any of the formats above, or in one of SentEval's layouts, named before the
path (:data:`LAYOUTS`):

- ``stsb:PATH``: STS-B (``sts-train.csv``, ``sts-dev.csv``): tab-separated, no header; genre, file,
  year, id, score (0–5), sentence 1, sentence 2 (some copies add source fields after them).
- ``sick:PATH``: SICK (``SICK_train.txt``, ``SICK_trial.txt``): a header row, then tab-separated pair
  id, sentence A, sentence B, relatedness (1–5), entailment judgment.
- ``snli:DIR/s1.SPLIT``: SentEval's SNLI split: ``s1.SPLIT`` (premises), ``s2.SPLIT`` (hypotheses) and
  ``labels.SPLIT`` side by side, line by line.

Two layouts build examples that are not one line each, for methods that read more than a sentence:

- ``documents=N:PATH``: a .txt of one sentence a line, every N consecutive non-blank lines joined (by a
  space) into one document (DeCLUTR's spans come from documents); a last shorter group is a document too.
- ``wordnet:DIR``: a WordNet database folder (``/usr/share/wordnet``), one example per one-word headword
  and definition, ``sent0`` the definition and ``sent1`` the headword (:mod:`csekit.data.dictionary`).

Each layout's score scale maps onto [0, 1] by its ends (STS-B ``s / 5``, SICK ``(s - 1) / 4``), so the
lowest and highest grades of both mean the same. Test files are refused by checksum before a run
reads them (:func:`csekit.data.labelled.refuse_held_out`).

Empty lines, and rows whose needed fields are all blank, are skipped and counted. A malformed line
(undecodable bytes, a wrong number of fields, a missing key, invalid JSON) is a
:class:`~csekit.errors.CsekitError` naming ``file:line``, or, with ``skip_bad_lines=True``, is
counted in :class:`ReadStats` and skipped.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from csekit.data.dictionary import wordnet_data_files, wordnet_definitions
from csekit.data.labelled import LABEL, SCORE, canonical_target, target_problem
from csekit.errors import CsekitError

SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl")
#: SentEval's layouts of labelled pairs (``stsb:PATH``) -> the columns each supplies.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "stsb": ("sent0", "sent1", SCORE),
    "sick": ("sent0", "sent1", SCORE, LABEL),
    "snli": ("sent0", "sent1", LABEL),
    "documents": ("sent0",),
    "wordnet": ("sent0", "sent1"),
}
#: How many bad line numbers ReadStats keeps: enough to find the pattern, bounded for huge files.
MAX_BAD_LINES = 10

Example = dict[str, str]


@dataclass
class ReadStats:
    """What a read did: examples yielded, blank lines skipped, bad lines skipped."""

    read: int = 0
    empty: int = 0
    bad: int = 0
    #: Line numbers (within their file) of the first MAX_BAD_LINES bad lines.
    bad_lines: list[int] = field(default_factory=list)
    #: The full message of the first bad line (it names the file, which bad_lines does not).
    first_bad: str | None = None

    def summary(self) -> str:
        text = f"{self.read} examples read, {self.empty} empty skipped, {self.bad} bad skipped"
        if self.bad:
            more = ", ..." if self.bad > len(self.bad_lines) else ""
            lines = ", ".join(map(str, self.bad_lines))
            text += f" (lines {lines}{more}; first: {self.first_bad})"
        return text

    def _add_bad(self, line: int, message: str, lines: int = 1) -> None:
        self.bad += lines
        if len(self.bad_lines) < MAX_BAD_LINES:
            self.bad_lines.append(line)
        if self.first_bad is None:
            self.first_bad = message


def read_examples(
    path: str | os.PathLike,
    *,
    columns: tuple[str, ...],
    targets: tuple[str, ...] = (),
    skip_bad_lines: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[Example]:
    """Yield ``{column: text}`` for each usable line of ``path`` (format chosen by its extension).

    ``targets`` are target columns (``score``, ``label``) to read and check after the text ``columns``.
    ``path`` may name one of SentEval's :data:`LAYOUTS` before it (``stsb:PATH``). Problems with the file
    as a whole (missing, unknown extension, a .txt asked for several columns, a layout without a needed
    column) raise at once; problems inside it (header, lines) raise when the iteration reaches them.
    Pass a ``stats`` object to learn how many lines were read, empty, or skipped as bad.
    """
    numbered = read_numbered(path, columns=columns, targets=targets, skip_bad_lines=skip_bad_lines, stats=stats)
    return (example for _, example in numbered)


def read_numbered(
    path: str | os.PathLike,
    *,
    columns: tuple[str, ...],
    targets: tuple[str, ...] = (),
    skip_bad_lines: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[tuple[int, Example]]:
    """``(line, example)`` for each usable line of ``path``, ``line`` being where its record starts:
    :func:`read_examples` for a reader that must tell which line a result came from."""
    layout, path = split_layout(path)
    columns, targets = tuple(columns), tuple(targets)
    parsed_as = _check_file(path, columns + targets, layout)
    stats = stats if stats is not None else ReadStats()
    if parsed_as == "wordnet":  # a database folder, not a file of lines
        return _numbered_wordnet(path, columns, stats)
    return _numbered(path, parsed_as, columns, targets, skip_bad_lines, stats)


def split_layout(spec: str | os.PathLike) -> tuple[str | None, Path]:
    """``"stsb:PATH"`` -> ``("stsb", PATH)``, ``"documents=8:PATH"`` -> ``("documents=8", PATH)``; a path
    without a layout's name before it -> ``(None, path)``."""
    if isinstance(spec, str):
        layout, sep, rest = spec.partition(":")
        if sep and layout.partition("=")[0] in LAYOUTS:
            return layout, Path(rest)
    return None, Path(spec)


def document_lines(layout: str) -> int:
    """N of ``documents=N``, checked."""
    name, _, count = layout.partition("=")
    if name != "documents" or not count.isdigit() or int(count) < 1:
        raise CsekitError(f"layout {layout!r}: write documents=N with N >= 1 lines per document, e.g. documents=8:PATH")
    return int(count)


def source_files(spec: str | os.PathLike) -> list[Path]:
    """Every file a training file's spec reads (``snli:DIR/s1.SPLIT`` reads three)."""
    layout, path = split_layout(spec)
    if layout == "wordnet":  # (the reader says what is missing)
        return wordnet_data_files(path, check=False)
    return [path, *_snli_siblings(path)] if layout == "snli" else [path]


def _check_file(path: Path, columns: tuple[str, ...], layout: str | None = None) -> str:
    """The problems of a file as a whole, raised at once; its layout's name, else its suffix."""
    if not columns:
        raise ValueError("columns must name at least one column")
    if not path.exists():
        raise CsekitError(f"training file {str(path)!r} does not exist")
    if layout == "wordnet":
        return _check_layout(path, columns, layout)
    if path.is_dir():
        raise CsekitError(f"training path {str(path)!r} is a directory; give a file ({', '.join(SUFFIXES)})")
    if layout is not None:
        return _check_layout(path, columns, layout)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise CsekitError(
            f"{path}: unknown training file type {suffix!r}; expected one of {', '.join(SUFFIXES)}"
        )
    if suffix == ".txt" and len(columns) > 1:
        raise CsekitError(
            f"{path}: a .txt file holds one sentence per line, but {', '.join(columns)} are needed; "
            "use a .csv, .tsv or .jsonl file with those columns"
        )
    return suffix


def _check_layout(path: Path, columns: tuple[str, ...], layout: str) -> str:
    if layout.startswith("documents"):
        document_lines(layout)
    elif layout == "wordnet":
        wordnet_data_files(path)
    supplied = LAYOUTS[layout.partition("=")[0]]
    missing = [column for column in columns if column not in supplied]
    if missing:
        raise CsekitError(f"{layout}:{path} supplies {', '.join(supplied)}, not {', '.join(missing)}")
    if layout == "snli":
        if not path.name.startswith("s1."):
            raise CsekitError(f"snli:{path}: name the premises file s1.SPLIT (s2.SPLIT and labels.SPLIT beside it)")
        for sibling in _snli_siblings(path):
            if not sibling.is_file():
                raise CsekitError(f"snli:{path}: {sibling.name} is missing beside it")
    return layout


def _snli_siblings(path: Path) -> tuple[Path, Path]:
    """s2.SPLIT and labels.SPLIT beside s1.SPLIT."""
    split = path.name.removeprefix("s1.")
    return path.with_name(f"s2.{split}"), path.with_name(f"labels.{split}")


def read_many(
    paths: Iterable[str | os.PathLike],
    *,
    columns: tuple[str, ...],
    targets: tuple[str, ...] = (),
    skip_bad_lines: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[Example]:
    """``read_examples`` over several files in turn, counting into one ``stats``."""
    stats = stats if stats is not None else ReadStats()
    # Check every path up front so a typo in the last file fails before hours of reading the first.
    readers = [
        read_examples(path, columns=columns, targets=targets, skip_bad_lines=skip_bad_lines, stats=stats)
        for path in paths
    ]
    return itertools.chain.from_iterable(readers)


# ---------------------------------------------------------------------------------------- internals
ReportBad = Callable[..., None]  # (line, reason, lines=1): ``lines`` a bad record spans


def _numbered(path: Path, suffix: str, columns: tuple[str, ...], targets: tuple[str, ...], skip_bad_lines: bool,
              stats: ReadStats):  # fmt: skip
    def report_for(where: Path) -> ReportBad:
        def report_bad(line: int, reason: str, lines: int = 1) -> None:
            message = f"{where}:{line}: {reason}"
            if not skip_bad_lines:
                raise CsekitError(f"{message} (skip_bad_lines skips such lines)")
            stats._add_bad(line, message, lines)

        return report_bad

    report_bad = report_for(path)
    parse = {".txt": _parse_txt, ".csv": _parse_csv, ".tsv": _parse_csv, ".jsonl": _parse_jsonl,
             "stsb": _parse_stsb, "sick": _parse_sick, "snli": _parse_snli,
             "documents": _parse_documents}[suffix.partition("=")[0]]  # fmt: skip
    texts, columns = columns, columns + targets
    with path.open("rb") as file:  # bytes, so a decoding error names its line, not a buffer offset
        lines = _Lines(file, report_bad, keep_bad=suffix == "snli")
        for example in parse(lines, path=path, suffix=suffix, columns=columns, targets=targets,
                             report_bad=report_bad, report_for=report_for):  # fmt: skip
            if example is None or all(not example[column].strip() for column in texts):
                stats.empty += 1
                continue
            line = lines.first if suffix in (".csv", ".tsv") else lines.number
            problems = [problem for column in targets if (problem := target_problem(column, example[column]))]
            if problems:
                report_bad(line, problems[0])
                continue
            example.update({column: canonical_target(column, example[column]) for column in targets})
            stats.read += 1
            # A csv record may span lines: it starts where the parser last reset ``first``.
            yield line, example


class _Lines:
    """Decoded lines of a binary file, without their line ends, remembering line numbers.

    Undecodable lines go to ``report_bad`` and are left out (the csv module cannot resume after an
    exception from its input, so they must not raise when bad lines are being skipped), or, with
    ``keep_bad``, come out as None, so that files read side by side stay in step.
    """

    def __init__(self, file: BinaryIO, report_bad: ReportBad, *, keep_bad: bool = False):
        self.file = file
        self.report_bad = report_bad
        self.keep_bad = keep_bad
        self.number = 0  # of the line last handed out
        # The first line handed out since a caller reset this to None: where a csv record starts.
        self.first: int | None = None

    def __iter__(self) -> Iterator[str | None]:
        for raw in self.file:  # buffered, one line at a time
            self.number += 1
            try:
                # utf-8-sig on the first line drops a byte-order mark (files saved by Excel and Notepad).
                text = raw.decode("utf-8-sig" if self.number == 1 else "utf-8", errors="strict")
            except UnicodeDecodeError as error:
                self.report_bad(self.number, f"not valid UTF-8 (byte {error.start + 1} of the line)")
                if self.keep_bad:
                    yield None
                continue
            if self.first is None:
                self.first = self.number
            yield text.rstrip("\r\n")


def _parse_txt(lines: _Lines, *, columns: tuple[str, ...], **_) -> Iterator[Example | None]:
    for text in lines:
        yield {columns[0]: text}


def _parse_documents(lines: _Lines, *, suffix: str, columns: tuple[str, ...], **_) -> Iterator[Example | None]:
    """Every N consecutive non-blank lines joined into one document (``documents=N``)."""
    size, group = document_lines(suffix), []
    for text in lines:
        if text.strip():
            group.append(text.strip())
        if len(group) == size:
            yield {columns[0]: " ".join(group)}
            group = []
    if group:
        yield {columns[0]: " ".join(group)}


def _numbered_wordnet(folder: Path, columns: tuple[str, ...], stats: ReadStats) -> Iterator[tuple[int, Example]]:
    for number, example in wordnet_definitions(folder):
        stats.read += 1
        yield number, {column: example[column] for column in columns}


def _parse_jsonl(lines: _Lines, *, columns: tuple[str, ...], targets: tuple[str, ...], report_bad: ReportBad, **_):
    for text in lines:
        if not text.strip():
            yield None
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            report_bad(lines.number, f"invalid JSON ({error.msg} at column {error.colno})")
            continue
        if not isinstance(record, dict):
            report_bad(lines.number, f"expected a JSON object, found {type(record).__name__}")
            continue
        missing = [column for column in columns if column not in record]
        if missing:
            report_bad(lines.number, f"missing key(s) {', '.join(missing)} (keys found: {', '.join(record)})")
            continue
        # A score may be a JSON number; every other value is text.
        numbers = {column: str(record[column]) for column in targets if column == SCORE
                   and isinstance(record[column], int | float) and not isinstance(record[column], bool)}  # fmt: skip
        not_text = [column for column in columns if column not in numbers and not isinstance(record[column], str)]
        if not_text:
            report_bad(lines.number, f"value of {', '.join(not_text)} is not a string")
            continue
        yield {column: numbers.get(column, record[column]) for column in columns}


def _parse_csv(lines: _Lines, *, path: Path, suffix: str, columns: tuple[str, ...], report_bad: ReportBad, **_):
    if suffix == ".tsv":
        dialect = {"delimiter": "\t", "quoting": csv.QUOTE_NONE}
    else:
        dialect = {"strict": True}
    # The csv module wants line ends back so that a quoted field may span lines.
    rows = csv.reader((text + "\n" for text in lines), **dialect)
    header = None
    while True:
        lines.first = None
        try:
            row = next(rows)
        except StopIteration:
            break
        except csv.Error as error:  # a stray or unterminated quote, an oversized field
            # An unterminated quote swallows the lines after it into one record: each of them is lost.
            first = lines.first or lines.number
            report_bad(first, f"malformed {suffix[1:].upper()} row ({error})", lines.number - first + 1)
            continue
        if not any(value.strip() for value in row):
            yield None  # blank line
            continue
        if header is None:
            header = [name.strip() for name in row]
            missing = [column for column in columns if column not in header]
            if missing:
                raise CsekitError(
                    f"{path}: missing column(s) {', '.join(missing)} in the header row "
                    f"(found: {', '.join(header)}); the first row must name the columns"
                )
            positions = [header.index(column) for column in columns]
            continue
        if len(row) != len(header):
            report_bad(lines.first, f"expected {len(header)} fields ({', '.join(header)}), found {len(row)}",
                       lines.number - lines.first + 1)  # fmt: skip
            continue
        yield {column: row[position] for column, position in zip(columns, positions)}
    if header is None:
        raise CsekitError(f"{path}: the file is empty; expected a header row naming {', '.join(columns)}")


# ------------------------------------------------------------------ SentEval's layouts of labelled pairs
def _parse_stsb(lines: _Lines, *, columns: tuple[str, ...], report_bad: ReportBad, **_):
    """genre, file, year, id, score (0-5), sentence 1, sentence 2 [, source fields]: SentEval's STS-B."""
    for text in lines:
        if not text.strip():
            yield None
            continue
        fields = text.split("\t")
        if len(fields) < 7:
            report_bad(lines.number, f"expected 7 tab-separated fields (genre, file, year, id, score, sentence 1, "
                                     f"sentence 2), found {len(fields)}")  # fmt: skip
            continue
        score = _rescaled(fields[4], low=0.0, high=5.0)
        if score is None:
            report_bad(lines.number, f"score {fields[4].strip()!r} is not a number in [0, 5]")
            continue
        yield _pick({"sent0": fields[5], "sent1": fields[6], SCORE: score}, columns)


SICK_HEADER = ("pair_ID", "sentence_A", "sentence_B", "relatedness_score", "entailment_judgment")


def _parse_sick(lines: _Lines, *, path: Path, columns: tuple[str, ...], report_bad: ReportBad, **_):
    """A header, then pair id, sentence A, sentence B, relatedness (1-5), entailment judgment: SICK."""
    header = None
    for text in lines:
        if not text.strip():
            yield None
            continue
        fields = text.split("\t")
        if header is None:
            header = tuple(field.strip() for field in fields)
            if header[: len(SICK_HEADER)] != SICK_HEADER:
                raise CsekitError(f"sick:{path}: the first row must be SICK's header ({', '.join(SICK_HEADER)}), "
                                  f"found {', '.join(header[:5])}")  # fmt: skip
            continue
        if len(fields) < len(SICK_HEADER):
            report_bad(lines.number, f"expected {len(SICK_HEADER)} tab-separated fields "
                                     f"({', '.join(SICK_HEADER)}), found {len(fields)}")  # fmt: skip
            continue
        score = _rescaled(fields[3], low=1.0, high=5.0)
        if score is None:
            report_bad(lines.number, f"relatedness {fields[3].strip()!r} is not a number in [1, 5]")
            continue
        yield _pick({"sent0": fields[1], "sent1": fields[2], SCORE: score, LABEL: fields[4]}, columns)
    if header is None:
        raise CsekitError(f"sick:{path}: the file is empty; expected SICK's header row")


def _parse_snli(lines: _Lines, *, path: Path, columns: tuple[str, ...], targets: tuple[str, ...], report_for, **_):
    """s1.SPLIT, s2.SPLIT and labels.SPLIT line by line: SentEval's SNLI (premise, hypothesis, label)."""
    second_path, labels_path = _snli_siblings(path)
    with second_path.open("rb") as second_file, labels_path.open("rb") as labels_file:
        second = _Lines(second_file, report_for(second_path), keep_bad=True)
        report_label = report_for(labels_path)
        labels = _Lines(labels_file, report_label, keep_bad=True)
        end = object()
        for premise, hypothesis, label in itertools.zip_longest(lines, second, labels, fillvalue=end):
            if end in (premise, hypothesis, label):
                counts = f"{path.name} {lines.number}, {second_path.name} {second.number}, {labels_path.name} {labels.number}"
                raise CsekitError(f"snli:{path}: the three files must have one line per pair, but have {counts} lines")
            if None in (premise, hypothesis, label):
                continue  # an undecodable line, reported by its reader
            if not (premise.strip() or hypothesis.strip() or label.strip()):
                yield None
                continue
            if LABEL in targets and (problem := target_problem(LABEL, label)):
                report_label(labels.number, problem)  # named in its own file
                continue
            yield _pick({"sent0": premise, "sent1": hypothesis, LABEL: label}, columns)


def _rescaled(text: str, *, low: float, high: float) -> str | None:
    """A gold score on [low, high] mapped onto [0, 1], as text (None if it is no number in the range)."""
    try:
        score = float(text)
    except ValueError:
        return None
    if not low <= score <= high:  # NaN fails too
        return None
    return repr((score - low) / (high - low))


def _pick(fields: dict[str, str], columns: tuple[str, ...]) -> Example:
    return {column: fields[column] for column in columns}
