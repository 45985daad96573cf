"""CLEAR's sentence augmentations, on the words of a sentence: deletion, span deletion, reordering, substitution.

Wu, Wang, Gu, Khabsa, Sun & Ma 2020, "CLEAR: Contrastive Learning for Sentence Representation"
(arXiv:2012.15466), Sec. 3.2 and Fig. 2:

- word deletion: randomly chosen words are each replaced by a special ``[DEL]`` token;
- span deletion: a randomly chosen span of words is replaced by a single ``[DEL]``;
- reordering: several randomly sampled pairs of spans switch places pairwise;
- substitution: randomly chosen words are replaced by one of their synonyms.

A share ``ratio`` of the ``n`` words is affected, ``round(ratio * n)`` words (half up), at least one when
``ratio > 0``; defaults: 70% for both deletions, 30% for reordering and substitution
(the paper's settings).
What the paper leaves open, chosen here: ``placeholder=None`` removes deleted words instead of
writing a ``[DEL]``; span deletion cuts one contiguous span; reordering swaps spans of equal length
(1 to ``max_span`` words), so every word outside the swapped spans keeps its place; substitution
skips common function words (WordNet lists "a" as vitamin A and "in" as inch), looks words up with
surrounding punctuation stripped, and keeps that punctuation and an initial capital.

Every function takes a list of words and returns a new one; none ever empties a sentence (at least
one original word survives a deletion). ``rng`` is a ``random.Random``, a ``torch.Generator``, or
None: a generator seeded from torch's global CPU generator, which the trainer seeds and checkpoints
(and the gradient cache replays), so augmented runs are deterministic and resumable.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import torch

from csekit.errors import CsekitError

Rng = random.Random | torch.Generator | None
Synonyms = Callable[[str], Sequence[str]]

#: Names for ``SentenceAugmenter`` (the recipes' ``options.augmentations``), with the paper's labels.
AUGMENTATIONS = {"word_deletion": "del-word", "span_deletion": "del-span", "reordering": "reorder",
                 "substitution": "subs"}  # fmt: skip

#: Function words never substituted: their WordNet senses are rare nouns (a = ampere, it = information technology).
STOP_WORDS = frozenset(
    "a about above after again against all am an and any are as at be because been before being below "
    "between both but by can could did do does doing down during each few for from further had has have "
    "having he her here hers herself him himself his how i if in into is it its itself just me more most "
    "my myself no nor not now of off on once only or other our ours ourselves out over own same she "
    "should so some such than that the their theirs them themselves then there these they this those "
    "through to too under until up very was we were what when where which while who whom why will with "
    "would you your yours yourself yourselves".split()
)


def python_rng(rng: Rng = None) -> random.Random:
    """A ``random.Random``: ``rng`` itself, or one seeded by a draw from ``rng`` (a torch generator;
    None draws from torch's global CPU generator)."""
    if isinstance(rng, random.Random):
        return rng
    return random.Random(int(torch.randint(2**62, (1,), generator=rng)))


def word_deletion(words: Sequence[str], *, ratio: float = 0.7, placeholder: str | None = None,
                  rng: Rng = None) -> list[str]:  # fmt: skip
    """Delete ``round(ratio * n)`` random words (at most n - 1), each replaced by ``placeholder`` if given."""
    words, rng = list(words), python_rng(rng)
    chosen = set(rng.sample(range(len(words)), _count(ratio, len(words), len(words) - 1)))
    if placeholder is None:
        return [word for i, word in enumerate(words) if i not in chosen]
    return [placeholder if i in chosen else word for i, word in enumerate(words)]


def span_deletion(words: Sequence[str], *, ratio: float = 0.7, placeholder: str | None = None,
                  rng: Rng = None) -> list[str]:  # fmt: skip
    """Delete one random span of ``round(ratio * n)`` words (at most n - 1), replaced by one ``placeholder``."""
    words, rng = list(words), python_rng(rng)
    length = _count(ratio, len(words), len(words) - 1)
    if length == 0:
        return words
    start = rng.randrange(len(words) - length + 1)
    return words[:start] + ([] if placeholder is None else [placeholder]) + words[start + length :]


def reordering(words: Sequence[str], *, ratio: float = 0.3, max_span: int = 3, rng: Rng = None) -> list[str]:
    """Swap random pairs of equal-length, non-overlapping spans until ``round(ratio * n)`` words moved
    (one more when that count is odd: a swap moves an even number of words; fewer if no room is left)."""
    words, rng = list(words), python_rng(rng)
    target, moved = _count(ratio, len(words), len(words)), 0
    free = [True] * len(words)
    while moved < target:
        longest = max(1, min(max_span, (target - moved) // 2))
        pair = None
        for length in range(rng.randint(1, longest), 0, -1):  # shorter spans when longer ones no longer fit
            if pair := _two_free_spans(free, length, rng):
                break
        if pair is None:
            break
        first, second = pair
        words[first], words[second] = words[second], words[first]
        free[first] = free[second] = [False] * (second.stop - second.start)
        moved += 2 * (first.stop - first.start)
    return words


def synonym_substitution(words: Sequence[str], *, synonyms: Synonyms, ratio: float = 0.3,
                         keep: Collection[str] = (), rng: Rng = None) -> list[str]:  # fmt: skip
    """Replace ``round(ratio * n)`` random words that have synonyms (all of them if fewer) by a random synonym.

    ``synonyms(word)`` gets the lower-cased word without surrounding punctuation; stop words and
    words in ``keep`` (e.g. a deletion placeholder) are never replaced.
    """
    words, rng = list(words), python_rng(rng)
    candidates = []  # (position, prefix, core, suffix, synonyms)
    for position, word in enumerate(words):
        prefix, core, suffix = _split_punctuation(word)
        if word in keep or not core or core.lower() in STOP_WORDS:
            continue
        options = [option for option in synonyms(core.lower()) if option.lower() != core.lower()]
        if options:
            candidates.append((position, prefix, core, suffix, options))
    for position, prefix, core, suffix, options in rng.sample(candidates, _count(ratio, len(words), len(candidates))):
        choice = rng.choice(options)
        if core[0].isupper():
            choice = choice[0].upper() + choice[1:]
        words[position] = prefix + choice + suffix
    return words


@dataclass(frozen=True)
class SentenceAugmenter:
    """Text -> augmented text: the named augmentations applied in order to the whitespace-separated words.

    CLEAR composes two augmentations into one view, e.g. ``("substitution", "span_deletion")`` for its
    ``subs + del-span``. ``placeholder`` stands for a deleted word or span (None: removed outright) and
    is never substituted; ``synonyms`` is required for ``substitution``.
    """

    names: tuple[str, ...]
    deletion_ratio: float = 0.7
    reorder_ratio: float = 0.3
    substitution_ratio: float = 0.3
    placeholder: str | None = None
    synonyms: Synonyms | None = None

    def __post_init__(self):
        unknown = [name for name in self.names if name not in AUGMENTATIONS]
        if unknown or not self.names:
            raise CsekitError(f"unknown augmentation(s) {unknown or self.names}; choose from {', '.join(AUGMENTATIONS)}")
        for name in ("deletion_ratio", "reorder_ratio", "substitution_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise CsekitError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        if "substitution" in self.names and self.synonyms is None:
            raise CsekitError("the substitution augmentation needs a synonym source (e.g. csekit.augment.wordnet.WordNet)")

    def __call__(self, text: str, rng: Rng = None) -> str:
        words, rng = text.split(), python_rng(rng)
        keep = () if self.placeholder is None else (self.placeholder,)
        for name in self.names:
            if name == "word_deletion":
                words = word_deletion(words, ratio=self.deletion_ratio, placeholder=self.placeholder, rng=rng)
            elif name == "span_deletion":
                words = span_deletion(words, ratio=self.deletion_ratio, placeholder=self.placeholder, rng=rng)
            elif name == "reordering":
                words = reordering(words, ratio=self.reorder_ratio, rng=rng)
            else:
                words = synonym_substitution(words, synonyms=self.synonyms, ratio=self.substitution_ratio,
                                             keep=keep, rng=rng)  # fmt: skip
        return " ".join(words)


def _count(ratio: float, size: int, limit: int) -> int:
    """``round(ratio * size)`` half up, at least 1 when ``ratio > 0``, at most ``limit`` (never below 0)."""
    if ratio <= 0 or limit <= 0:
        return 0
    return min(limit, max(1, int(ratio * size + 0.5)))


def _two_free_spans(free: list[bool], length: int, rng: random.Random) -> tuple[slice, slice] | None:
    """A random pair of non-overlapping spans of ``length`` words, all still in place, or None."""
    starts = [s for s in range(len(free) - length + 1) if all(free[s : s + length])]
    pairs = [(first, second) for first in starts for second in starts if second >= first + length]
    if not pairs:
        return None
    first, second = rng.choice(pairs)
    return slice(first, first + length), slice(second, second + length)


def _split_punctuation(word: str) -> tuple[str, str, str]:
    """``'"Cars,'`` -> ``('"', 'Cars', ',')``: leading punctuation, the word, trailing punctuation."""
    start = len(word) - len(word.lstrip(string.punctuation))
    stop = max(start, len(word.rstrip(string.punctuation)))
    return word[:start], word[start:stop], word[stop:]
