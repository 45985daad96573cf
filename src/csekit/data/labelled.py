"""Labelled sentence pairs: the ``score`` and ``label`` columns, and the test sets no training may read.

Supervised objectives read pairs (``sent0``, ``sent1``) with a *target*: a similarity ``score`` on
[0, 1] (Sentence-BERT's regression, CoSENT, AnglE) or an NLI ``label`` (Sentence-BERT's classifier).
A target is checked where it is read (:func:`target_problem`), so a bad one names its file and line,
and reaches a batch as a tensor (``batch["targets"][column]``: (B,) float32 scores, (B,) int64 label
indices into :data:`NLI_LABELS`).

Held-out test sets (:func:`refuse_held_out`): the STS12–16, STS-B and SICK test files csekit evaluates
on, and SNLI's test split, are refused as training files by their sha256. The STS and SICK checksums
are those of the SentEval manifest (``senteval_manifest.json``, which the evaluators verify); SNLI is
read by no evaluator, so its test files' checksums are listed here. A file of another size is never
hashed, so the check costs nothing on large corpora.
"""

from __future__ import annotations

import math
import os
from functools import cache
from pathlib import Path

from csekit.data.senteval import manifest, sha256_of
from csekit.errors import CsekitError

#: The target columns a training example may carry besides its texts.
SCORE, LABEL = "score", "label"
#: NLI classes in SentEval's order (``senteval/snli.py``): a label's index is its class.
NLI_LABELS = ("entailment", "neutral", "contradiction")

#: SNLI's test split in SentEval's layout (``SNLI/s1.test``, ...): relative path -> (bytes, sha256).
SNLI_TEST_FILES = {
    "SNLI/s1.test": (738834, "62cb8107dc3c56a4376e5e521842be24e0d61c92c346b94917da2bbf2a47d8be"),
    "SNLI/s2.test": (398274, "1174f3ad30a3c30fc0f9eeffc1b3b6a79e0514026c5a658968a8e2a324b311a1"),
    "SNLI/labels.test": (108118, "e25c363e5cc70d5494d6e6555d8053eced22dca836e0f03067530eaad3d4f5f5"),
}


def target_problem(column: str, value: str) -> str | None:
    """Why ``value`` is no valid ``column`` target (None when it is one)."""
    if column == SCORE:
        try:
            score = float(value)
        except ValueError:
            return f"score {value.strip()!r} is not a number"
        if not (math.isfinite(score) and 0.0 <= score <= 1.0):
            return f"score {value.strip()} is outside [0, 1] (scale the gold scores to [0, 1])"
    elif column == LABEL and value.strip().lower() not in NLI_LABELS:
        return f"label {value.strip()!r} is not one of {', '.join(NLI_LABELS)}"
    return None


def canonical_target(column: str, value: str) -> str:
    """A checked target as the readers hand it on: the score as read, the label in lower case."""
    return value.strip().lower() if column == LABEL else value.strip()


def target_value(column: str, text: str) -> float | int:
    """A checked target as a batch holds it: the score as a float, the label as its class index."""
    return float(text) if column == SCORE else NLI_LABELS.index(text)


@cache
def held_out_files() -> dict[tuple[int, str], str]:
    """(bytes, sha256) -> the relative path of every test file training must never read."""
    tests = {relative: (entry["bytes"], entry["sha256"]) for relative, entry in manifest().items()
             if relative.startswith(("STS/STS12", "STS/STS13", "STS/STS14", "STS/STS15", "STS/STS16"))
             or relative in ("STS/STSBenchmark/sts-test.csv", "SICK/SICK_test_annotated.txt")}  # fmt: skip
    tests.update(SNLI_TEST_FILES)
    return {key: relative for relative, key in tests.items()}


def refuse_held_out(path: str | os.PathLike) -> None:
    """A one-line error when ``path`` is one of the test files (by size, then sha256)."""
    path = Path(path)
    if not path.is_file():
        return  # the reader says what is wrong with it
    size = path.stat().st_size
    candidates = {digest: relative for (length, digest), relative in held_out_files().items() if length == size}
    if candidates and (found := candidates.get(sha256_of(path))):
        raise CsekitError(f"training file {path} is the test set {found} (by its sha256): test sets are for "
                          "evaluation only; train on train splits and select on dev splits")  # fmt: skip
