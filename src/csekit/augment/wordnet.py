"""Synonyms from WordNet's own database files, read directly (no NLTK): CLEAR's substitution needs them.

The format is WordNet's ``wndb(5)``; the Debian/Ubuntu package ``wordnet-base`` installs WordNet 3.0
under ``/usr/share/wordnet``. Two files per part of speech (``noun``, ``verb``, ``adj``, ``adv``):

- ``index.POS``, one line per lemma, sorted:
  ``lemma pos synset_cnt p_cnt [ptr_symbol ...] sense_cnt tagsense_cnt synset_offset [synset_offset ...]``
  (``p_cnt`` pointer symbols, then ``synset_cnt`` offsets, most frequent sense first);
- ``data.POS``, one line per synset, found at the byte offset the index names:
  ``synset_offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt ... | gloss``
  (``w_cnt`` two hex digits, ``lex_id`` one hex digit).

Lines starting with two spaces are the licence. Lemmas write spaces as underscores; index lemmas are
lower case, data words keep their case, and adjectives in ``data.adj`` may end in a syntactic marker
``(a)``, ``(p)`` or ``(ip)``. Each index is parsed on its first lookup and each synset read (one seek)
on first use; both are cached.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from csekit.errors import CsekitError

#: Where ``apt-get install wordnet-base`` puts the database.
DEFAULT_DIR = "/usr/share/wordnet"
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
_ADJECTIVE_MARKER = re.compile(r"\((?:a|p|ip)\)$")


class WordNet:
    """A WordNet database folder: ``synonyms(word)`` lists the other lemmas of every synset of ``word``.

    path: the folder holding ``index.noun``, ``data.noun``, ...; default ``$WORDNET_DIR``, else
    ``/usr/share/wordnet``. Parts of speech whose files are absent are left out; a folder with none
    of them is an error.
    """

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path or os.environ.get("WORDNET_DIR") or DEFAULT_DIR)
        self.parts = tuple(pos for pos in PARTS_OF_SPEECH if (self.path / f"index.{pos}").is_file())
        if not self.parts:
            raise CsekitError(
                f"no WordNet database in {self.path} (no index.noun, index.verb, ...): install it with "
                "`apt-get install wordnet-base`, or set WORDNET_DIR (or options.wordnet_dir) to a WordNet dict folder"
            )
        for pos in self.parts:
            if not (self.path / f"data.{pos}").is_file():
                raise CsekitError(f"WordNet database {self.path} has index.{pos} but no data.{pos}; reinstall it")
        self._index: dict[str, dict[str, tuple[int, ...]]] = {}
        self._synsets: dict[tuple[str, int], tuple[str, ...]] = {}
        self._synonyms: dict[str, tuple[str, ...]] = {}

    def offsets(self, lemma: str, pos: str) -> tuple[int, ...]:
        """Byte offsets in ``data.POS`` of the synsets of ``lemma`` (any case, spaces or underscores)."""
        if pos not in self._index:
            self._index[pos] = self._read_index(pos) if pos in self.parts else {}
        return self._index[pos].get(lemma.strip().lower().replace(" ", "_"), ())

    def synset(self, pos: str, offset: int) -> tuple[str, ...]:
        """The lemmas of one synset, in file order, with spaces for underscores and no adjective marker."""
        key = (pos, offset)
        if key not in self._synsets:
            self._synsets[key] = self._read_synset(pos, offset)
        return self._synsets[key]

    def synonyms(self, word: str) -> tuple[str, ...]:
        """Every other lemma of every synset of ``word`` over all parts of speech, each once, in the
        order met (parts of speech in ``noun, verb, adj, adv`` order, senses in index order)."""
        key = word.strip().lower()
        if key not in self._synonyms:
            found: dict[str, str] = {}  # lower-cased lemma -> first spelling met
            for pos in self.parts:
                for offset in self.offsets(key, pos):
                    for lemma in self.synset(pos, offset):
                        if lemma.lower() != key.replace("_", " "):
                            found.setdefault(lemma.lower(), lemma)
            self._synonyms[key] = tuple(found.values())
        return self._synonyms[key]

    __call__ = synonyms

    # ------------------------------------------------------------------ files
    def _read_index(self, pos: str) -> dict[str, tuple[int, ...]]:
        path = self.path / f"index.{pos}"
        index: dict[str, tuple[int, ...]] = {}
        with open(path, encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                if line.startswith("  ") or not line.strip():  # the licence header
                    continue
                fields = line.split()
                try:
                    synset_count, pointer_count = int(fields[2]), int(fields[3])
                    offsets = tuple(int(field) for field in fields[6 + pointer_count :])
                except (IndexError, ValueError):
                    offsets, synset_count = (), -1
                if len(offsets) != synset_count:
                    raise CsekitError(f"{path}, line {number}: not a WordNet index line: {line.strip()[:80]!r}")
                index[fields[0].lower()] = offsets
        return index

    def _read_synset(self, pos: str, offset: int) -> tuple[str, ...]:
        path = self.path / f"data.{pos}"
        with open(path, "rb") as data:
            data.seek(offset)
            line = data.readline().decode("utf-8", errors="replace")
        fields = line.split()
        try:
            if int(fields[0]) != offset:
                raise ValueError
            word_count = int(fields[3], 16)
            words = fields[4 : 4 + 2 * word_count : 2]  # word, lex_id, word, lex_id, ...
        except (IndexError, ValueError):
            words, word_count = [], -1
        if not words or len(words) != word_count:
            raise CsekitError(
                f"{path}: no synset at byte offset {offset} (index and data files do not match); reinstall WordNet"
            )
        return tuple(_ADJECTIVE_MARKER.sub("", word).replace("_", " ") for word in words)
