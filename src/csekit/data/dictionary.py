"""A dictionary of (definition, headword) pairs read from WordNet's own database (DefSent's training data).

WordNet 3.0's ``data.noun``, ``data.verb``, ``data.adj`` and ``data.adv`` (``wndb(5)``; Debian's
``wordnet-base`` installs them under ``/usr/share/wordnet``) hold one synset a line:
``offset lex_filenum ss_type w_cnt word lex_id [word lex_id ...] p_cnt ... | gloss``. A gloss is the
definition followed by quoted examples (``; "..."``); the definition is the text before the first example,
exactly the lines of the shared ``wordnet30_glosses.txt`` in the same order (noun, verb, adj, adv).

Every one-word lemma of a synset is a headword of its definition (``{"sent0": definition, "sent1": lemma}``);
lemmas of several words (``ice_cream``) are left out, as they are never one token of a vocabulary. Whether a
headword is *one token* depends on the model's vocabulary: the objective decides (DefSent keeps those only).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from csekit.errors import CsekitError

PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
_ADJECTIVE_MARKER = re.compile(r"\((?:a|p|ip)\)$")


def wordnet_data_files(folder: str | Path, *, check: bool = True) -> list[Path]:
    """The four ``data.POS`` files of a WordNet database folder (with ``check``, a missing one is an error)."""
    files = [Path(folder) / f"data.{pos}" for pos in PARTS_OF_SPEECH]
    missing = [file.name for file in files if not file.is_file()]
    if missing and check:
        raise CsekitError(f"wordnet:{folder} is no WordNet database (no {', '.join(missing)}): install it with "
                          "`apt-get install wordnet-base` and name its folder, e.g. wordnet:/usr/share/wordnet")  # fmt: skip
    return files


def definition_of(gloss: str) -> str:
    """A synset's gloss without its quoted examples: ``'a human being; "there was too much..."'`` -> ``'a human being'``."""
    return gloss.strip().split('; "', 1)[0].strip().rstrip(";").rstrip()


def wordnet_definitions(folder: str | Path) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, {"sent0": definition, "sent1": headword})`` for every one-word lemma of every synset, in file
    order (``line`` counts synsets over the four files, from 1)."""
    number = 0
    for path in wordnet_data_files(folder):
        with path.open(encoding="utf-8") as file:
            for line in file:
                if line.startswith("  "):  # the licence
                    continue
                number += 1
                head, _, gloss = line.partition(" | ")
                fields = head.split()
                count = int(fields[3], 16)  # w_cnt: two hex digits
                definition = definition_of(gloss)
                for word in fields[4 : 4 + 2 * count : 2]:  # word lex_id pairs
                    lemma = _ADJECTIVE_MARKER.sub("", word)
                    if "_" not in lemma and definition:
                        yield number, {"sent0": definition, "sent1": lemma}
