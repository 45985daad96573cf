"""The texts ``csekit encode`` reads, as one stream of ``(id, text)``, never the whole file in memory.

- ``.txt``: one text a line.
- ``.jsonl``, ``.csv``, ``.tsv``: the text in a named field or column (``text`` by default), as the
  training readers read them (:mod:`csekit.data.readers`: strict CSV quoting, no quoting in TSV).
- ``.parquet``: a named string column, read a row group at a time (needs ``pyarrow``).

A text's id is the value of ``id_column`` where one is named (ids must then be unique), else the line
its record starts on (the row number for Parquet), counted from 1, so an id always leads back to its
source line. Empty texts are skipped and counted; a malformed line is an error naming ``file:line``
(or, with ``skip_bad_lines``, counted and skipped).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from csekit.data.readers import ReadStats, read_numbered
from csekit.errors import CsekitError

SUFFIXES = (".txt", ".jsonl", ".csv", ".tsv", ".parquet")


@dataclass
class Corpus:
    path: Path
    column: str = "text"
    id_column: str | None = None
    skip_bad_lines: bool = False  # count and skip malformed lines (their ids are simply absent)
    stats: ReadStats = field(default_factory=ReadStats)

    def __post_init__(self):
        self.path = Path(self.path)
        if not self.path.is_file():
            raise CsekitError(f"input {self.path} does not exist" if not self.path.exists()
                              else f"input {self.path} is a folder; give a file ({', '.join(SUFFIXES)})")  # fmt: skip
        if self.suffix not in SUFFIXES:
            raise CsekitError(f"{self.path}: unknown input type {self.suffix!r}; expected one of {', '.join(SUFFIXES)}")
        if self.suffix == ".txt" and self.id_column:
            raise CsekitError(f"{self.path}: a .txt file has no id column; its ids are line numbers")
        if self.suffix == ".parquet":
            names = _parquet_file(self.path).schema_arrow.names
            missing = [name for name in (self.column, self.id_column) if name and name not in names]
            if missing:
                raise CsekitError(f"{self.path}: no column {', '.join(missing)} (columns: {', '.join(names)})")

    @property
    def suffix(self) -> str:
        return self.path.suffix.lower()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        rows = self._parquet_rows() if self.suffix == ".parquet" else self._text_rows()
        seen: set[str] | None = set() if self.id_column else None
        for where, id_, text in rows:
            if seen is not None:
                if id_ in seen:
                    raise CsekitError(f"{self.path}:{where}: id {id_!r} occurs twice; ids must be unique")
                seen.add(id_)
            yield id_, text

    def _text_rows(self) -> Iterator[tuple[int, str, str]]:
        columns = (self.column,) if self.suffix == ".txt" else tuple(filter(None, (self.column, self.id_column)))
        for line, example in read_numbered(self.path, columns=columns, skip_bad_lines=self.skip_bad_lines,
                                           stats=self.stats):  # fmt: skip
            if not example[self.column].strip():  # a row with an id but no text
                self.stats.empty += 1
                continue
            yield line, example[self.id_column] if self.id_column else str(line), example[self.column]

    def _parquet_rows(self) -> Iterator[tuple[int, str, str]]:
        row = 0
        columns = list(filter(None, (self.column, self.id_column)))
        for batch in _parquet_file(self.path).iter_batches(columns=columns, batch_size=4096):
            texts = batch.column(self.column).to_pylist()
            ids = batch.column(self.id_column).to_pylist() if self.id_column else None
            for offset, text in enumerate(texts):
                row += 1
                if not isinstance(text, str):
                    raise CsekitError(f"{self.path}: row {row}: {self.column} is {text!r}, not a string")
                if not text.strip():
                    self.stats.empty += 1
                    continue
                self.stats.read += 1
                yield row, str(ids[offset]) if ids is not None else str(row), text


def _parquet_file(path: Path):
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise CsekitError("Parquet files need pyarrow: pip install 'csekit[parquet]'") from None
    try:
        return parquet.ParquetFile(path)
    except Exception as error:  # pyarrow raises its own types for a file that is not Parquet
        raise CsekitError(f"{path}: not a readable Parquet file ({error})") from None
