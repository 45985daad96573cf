"""Training-file readers: every format, blank and bad lines, streaming, the shared training data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import asset, shared_file

from csekit.data.readers import MAX_BAD_LINES, ReadStats, read_examples, read_many
from csekit.errors import CsekitError

TRIPLET = ("sent0", "sent1", "hard_neg")


def write(path: Path, data: str | bytes) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def read(path: Path, columns=("sent0",), **options) -> list[dict[str, str]]:
    return list(read_examples(path, columns=columns, **options))


# ------------------------------------------------------------------ formats
def test_txt_one_sentence_per_line_keeps_inner_whitespace(tmp_path):
    path = write(tmp_path / "a.txt", "first  sentence\r\n\n  second\t one \n   \nlast without newline")
    stats = ReadStats()
    assert read(path, stats=stats) == [
        {"sent0": "first  sentence"},
        {"sent0": "  second\t one "},
        {"sent0": "last without newline"},
    ]
    assert (stats.read, stats.empty, stats.bad) == (3, 2, 0)


def test_txt_supplies_the_first_column_only(tmp_path):
    path = write(tmp_path / "a.txt", "hello\n")
    assert read(path, columns=("anchor",)) == [{"anchor": "hello"}]
    with pytest.raises(CsekitError, match=r"a\.txt.*one sentence per line.*sent1"):
        read_examples(path, columns=TRIPLET)


def test_csv_with_header_quotes_and_extra_columns(tmp_path):
    text = 'id,sent0,sent1,hard_neg\n1,a b,"c, d","say ""hi"""\n\n2,"two\nlines",x,y\n,,,\n'
    path = write(tmp_path / "a.csv", text)
    stats = ReadStats()
    assert read(path, columns=TRIPLET, stats=stats) == [
        {"sent0": "a b", "sent1": "c, d", "hard_neg": 'say "hi"'},
        {"sent0": "two\nlines", "sent1": "x", "hard_neg": "y"},
    ]
    assert (stats.read, stats.empty, stats.bad) == (2, 2, 0)


def test_csv_bom_and_crlf(tmp_path):
    path = write(tmp_path / "a.csv", "\ufeffsent0,sent1\r\nx,y\r\n")
    assert read(path, columns=("sent0", "sent1")) == [{"sent0": "x", "sent1": "y"}]


def test_tsv_splits_on_tabs_and_treats_quotes_as_text(tmp_path):
    path = write(tmp_path / "a.tsv", 'sent1\tsent0\n"quoted\tstart\nhe said "no" ,\tok\n')
    assert read(path, columns=("sent0", "sent1")) == [
        {"sent0": "start", "sent1": '"quoted'},
        {"sent0": "ok", "sent1": 'he said "no" ,'},
    ]


def test_jsonl(tmp_path):
    lines = [
        json.dumps({"sent0": "a", "sent1": "b", "label": 1}),
        "",
        json.dumps({"sent0": " ", "sent1": ""}),
    ]
    path = write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")
    stats = ReadStats()
    assert read(path, columns=("sent0", "sent1"), stats=stats) == [{"sent0": "a", "sent1": "b"}]
    assert (stats.read, stats.empty) == (1, 2)


# ------------------------------------------------------------------ errors
def test_missing_file_directory_and_unknown_type(tmp_path):
    with pytest.raises(CsekitError, match="nope.txt' does not exist"):
        read_examples(tmp_path / "nope.txt", columns=("sent0",))
    with pytest.raises(CsekitError, match="is a directory"):
        read_examples(tmp_path, columns=("sent0",))
    with pytest.raises(CsekitError, match=r"unknown training file type '\.parquet'"):
        read_examples(write(tmp_path / "a.parquet", "x"), columns=("sent0",))


def test_missing_column_names_file_columns_and_header(tmp_path):
    path = write(tmp_path / "pairs.csv", "sent0,sent1\na,b\n")
    with pytest.raises(CsekitError) as error:
        read(path, columns=TRIPLET)
    message = str(error.value)
    assert "pairs.csv" in message and "hard_neg" in message and "found: sent0, sent1" in message
    assert "\n" not in message


def test_empty_csv_is_an_error(tmp_path):
    with pytest.raises(CsekitError, match="empty"):
        read(write(tmp_path / "a.csv", "\n\n"))


@pytest.mark.parametrize(
    ("name", "data", "line", "reason"),
    [
        ("a.txt", b"good\nbad \xff byte\ngood\n", 2, "not valid UTF-8"),
        ("a.csv", b"sent0,sent1\na,b\n\xc3\x28,x\n", 3, "not valid UTF-8"),
        ("a.jsonl", b'{"sent0": "a"}\n{"sent0": "\xe2\x82"}\n', 2, "not valid UTF-8"),
        ("a.jsonl", b'{"sent0": "a"}\n\n{"sent0": "a",}\n', 3, "invalid JSON"),
        ("a.jsonl", b'["a"]\n', 1, "expected a JSON object"),
        ("a.jsonl", b'{"sent1": "a"}\n', 1, "missing key.*sent0"),
        ("a.jsonl", b'{"sent0": null}\n', 1, "not a string"),
        ("a.csv", b"sent0,sent1\na,b\nc,d,e\n", 3, "expected 2 fields"),
        ("a.csv", b"sent0,sent1\na,b\nc\n", 3, "expected 2 fields"),
        ("a.tsv", b"sent0\tsent1\na\tb\tc\n", 2, "expected 2 fields"),
        ("a.csv", b'sent0,sent1\na,b\n"a"b,c\n', 3, "malformed CSV"),
        ("a.csv", b'sent0,sent1\na,b\n\n"unterminated,x\n', 4, "malformed CSV"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path, name, data, line, reason):
    path = write(tmp_path / name, data)
    with pytest.raises(CsekitError, match=rf"{name}:{line}: .*{reason}"):
        read(path)


def test_skip_bad_lines_counts_and_continues(tmp_path):
    lines = ['{"sent0": "ok"}'] + ['{"sent0": broken'] * (MAX_BAD_LINES + 2) + ['{"sent0": "last"}']
    path = write(tmp_path / "a.jsonl", "\n".join(lines).encode() + b"\n\xff\n")
    stats = ReadStats()
    assert read(path, skip_bad_lines=True, stats=stats) == [{"sent0": "ok"}, {"sent0": "last"}]
    assert stats.bad == MAX_BAD_LINES + 3
    assert stats.bad_lines == list(range(2, 2 + MAX_BAD_LINES))
    assert stats.first_bad.startswith(f"{path}:2: invalid JSON")
    assert f"{MAX_BAD_LINES + 3} bad skipped" in stats.summary() and "a.jsonl:2" in stats.summary()


def test_skip_bad_lines_in_csv_resumes_after_the_bad_row(tmp_path):
    data = b'sent0,sent1\na,b\n\xff,x\nc,d,e\n"x"y,z\ne,f\n'
    stats = ReadStats()
    rows = read(write(tmp_path / "a.csv", data), columns=("sent0", "sent1"), skip_bad_lines=True, stats=stats)
    assert rows == [{"sent0": "a", "sent1": "b"}, {"sent0": "e", "sent1": "f"}]
    assert stats.bad_lines == [3, 4, 5]


# ------------------------------------------------------------------ streaming
def test_reading_is_lazy_and_streams(tmp_path):
    """Lines appended after the first example was read are still seen: the file is read as it goes."""
    path = tmp_path / "big.txt"
    with path.open("w") as file:
        for number in range(100_000):  # ~1.5 MB: far more than one read buffer
            file.write(f"sentence number {number}\n")
    examples = read_examples(path, columns=("sent0",))
    assert next(examples) == {"sent0": "sentence number 0"}
    with path.open("a") as file:
        file.write("appended later\n")
    rest = list(examples)
    assert len(rest) == 100_000 and rest[-1] == {"sent0": "appended later"}


def test_read_many_chains_files_and_checks_every_path_first(tmp_path):
    first = write(tmp_path / "a.txt", "one\n")
    second = write(tmp_path / "b.jsonl", '{"sent0": "two"}\n')
    stats = ReadStats()
    assert list(read_many([first, second], columns=("sent0",), stats=stats)) == [
        {"sent0": "one"},
        {"sent0": "two"},
    ]
    assert stats.read == 2
    with pytest.raises(CsekitError, match="missing.txt"):
        read_many([first, tmp_path / "missing.txt"], columns=("sent0",))


# ------------------------------------------------------------------ the shared training files
def test_snli_triplets_file():
    nli = shared_file("data/train/nli/snli_dev_triplets_senteval_tok.csv")
    stats = ReadStats()
    examples = list(read_examples(nli, columns=TRIPLET, stats=stats))
    assert len(examples) == 3172 and (stats.empty, stats.bad) == (0, 0)
    assert examples[0] == {
        "sent0": "Two women are embracing while holding to go packages .",
        "sent1": "Two woman are holding packages .",
        "hard_neg": "The men are fighting outside a deli .",
    }
    assert all(example[column].strip() for example in examples for column in TRIPLET)


def test_wiki_sentences_file():
    wiki = asset("wiki1m-first11914")
    stats = ReadStats()
    examples = list(read_examples(wiki, columns=("sent0",), stats=stats))
    assert stats.read + stats.empty == 11914 and stats.bad == 0
    assert examples[0] == {"sent0": "YMCA in South Australia"}
