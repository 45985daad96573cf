"""Stream training examples from .txt, .csv, .tsv and .jsonl files, one line at a time.

Every reader yields ``{column: text}`` dicts for the columns an objective needs (``sent0``, ``sent1``,
``hard_neg``) and never holds more than one line in memory, so files larger than memory work.

- ``.txt``: one sentence per line; it supplies the first column only (``sent0`` for unsupervised
  methods).
- ``.csv``: a header row naming the columns (``sent0,sent1,hard_neg``); quoted fields as Python's
  ``csv`` module reads them (strict, so a stray quote is an error rather than a merged row).
- ``.tsv``: a header row, fields split on tabs with no quoting: TSV has no quote convention, and
  treating ``"`` as a quote would silently glue lines of text that merely contain quotes.
- ``.jsonl``: one JSON object per line with (at least) the needed keys, string values.

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

from csekit.errors import CsekitError

SUFFIXES = (".txt", ".csv", ".tsv", ".jsonl")
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
    skip_bad_lines: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[Example]:
    """Yield ``{column: text}`` for each usable line of ``path`` (format chosen by its extension).

    Problems with the file as a whole (missing, unknown extension, a .txt asked for several
    columns) raise at once; problems inside it (header, lines) raise when the iteration reaches them.
    Pass a ``stats`` object to learn how many lines were read, empty, or skipped as bad.
    """
    path = Path(path)
    return _read(path, _check_file(path, tuple(columns)), tuple(columns), skip_bad_lines,
                 stats if stats is not None else ReadStats())  # fmt: skip


def read_numbered(
    path: str | os.PathLike,
    *,
    columns: tuple[str, ...],
    skip_bad_lines: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[tuple[int, Example]]:
    """``(line, example)`` for each usable line of ``path``, ``line`` being where its record starts:
    :func:`read_examples` for a reader that must tell which line a result came from."""
    path = Path(path)
    return _numbered(path, _check_file(path, tuple(columns)), tuple(columns), skip_bad_lines,
                     stats if stats is not None else ReadStats())  # fmt: skip


def _check_file(path: Path, columns: tuple[str, ...]) -> str:
    """The problems of a file as a whole, raised at once; its suffix."""
    if not columns:
        raise ValueError("columns must name at least one column")
    if not path.exists():
        raise CsekitError(f"training file {str(path)!r} does not exist")
    if path.is_dir():
        raise CsekitError(f"training path {str(path)!r} is a directory; give a file ({', '.join(SUFFIXES)})")
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


def read_many(
    paths: Iterable[str | os.PathLike],
    *,
    columns: tuple[str, ...],
    skip_bad_lines: bool = False,
    stats: ReadStats | None = None,
) -> Iterator[Example]:
    """``read_examples`` over several files in turn, counting into one ``stats``."""
    stats = stats if stats is not None else ReadStats()
    # Check every path up front so a typo in the last file fails before hours of reading the first.
    readers = [
        read_examples(path, columns=columns, skip_bad_lines=skip_bad_lines, stats=stats) for path in paths
    ]
    return itertools.chain.from_iterable(readers)


# ---------------------------------------------------------------------------------------- internals
ReportBad = Callable[..., None]  # (line, reason, lines=1): ``lines`` a bad record spans


def _read(path: Path, suffix: str, columns: tuple[str, ...], skip_bad_lines: bool, stats: ReadStats):
    for _, example in _numbered(path, suffix, columns, skip_bad_lines, stats):
        yield example


def _numbered(path: Path, suffix: str, columns: tuple[str, ...], skip_bad_lines: bool, stats: ReadStats):
    def report_bad(line: int, reason: str, lines: int = 1) -> None:
        message = f"{path}:{line}: {reason}"
        if not skip_bad_lines:
            raise CsekitError(f"{message} (skip_bad_lines skips such lines)")
        stats._add_bad(line, message, lines)

    parse = {".txt": _parse_txt, ".csv": _parse_csv, ".tsv": _parse_csv, ".jsonl": _parse_jsonl}[suffix]
    with path.open("rb") as file:  # bytes, so a decoding error names its line, not a buffer offset
        lines = _Lines(file, report_bad)
        for example in parse(lines, path=path, suffix=suffix, columns=columns, report_bad=report_bad):
            if example is None or all(not example[column].strip() for column in columns):
                stats.empty += 1
                continue
            stats.read += 1
            # A csv record may span lines: it starts where the parser last reset ``first``.
            yield (lines.first if suffix in (".csv", ".tsv") else lines.number), example


class _Lines:
    """Decoded lines of a binary file, without their line ends, remembering line numbers.

    Undecodable lines go to ``report_bad`` and are left out (the csv module cannot resume after an
    exception from its input, so they must not raise when bad lines are being skipped).
    """

    def __init__(self, file: BinaryIO, report_bad: ReportBad):
        self.file = file
        self.report_bad = report_bad
        self.number = 0  # of the line last handed out
        # The first line handed out since a caller reset this to None: where a csv record starts.
        self.first: int | None = None

    def __iter__(self) -> Iterator[str]:
        for raw in self.file:  # buffered, one line at a time
            self.number += 1
            try:
                # utf-8-sig on the first line drops a byte-order mark (files saved by Excel and Notepad).
                text = raw.decode("utf-8-sig" if self.number == 1 else "utf-8", errors="strict")
            except UnicodeDecodeError as error:
                self.report_bad(self.number, f"not valid UTF-8 (byte {error.start + 1} of the line)")
                continue
            if self.first is None:
                self.first = self.number
            yield text.rstrip("\r\n")


def _parse_txt(lines: _Lines, *, columns: tuple[str, ...], **_) -> Iterator[Example | None]:
    for text in lines:
        yield {columns[0]: text}


def _parse_jsonl(lines: _Lines, *, columns: tuple[str, ...], report_bad: ReportBad, **_):
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
        not_text = [column for column in columns if not isinstance(record[column], str)]
        if not_text:
            report_bad(lines.number, f"value of {', '.join(not_text)} is not a string")
            continue
        yield {column: record[column] for column in columns}


def _parse_csv(lines: _Lines, *, path: Path, suffix: str, columns: tuple[str, ...], report_bad: ReportBad):
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
