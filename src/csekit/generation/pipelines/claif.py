"""CLAIF data: LLM rewrites of masked sentences, scored 0–1 by the LLM, for cosine regression.

Cheng et al. (2023), "Improving Contrastive Learning of Sentence Embeddings from AI Feedback" (ACL 2023
Findings), §3.1 and the reference code (xiami2019/CLAIF, ``modeling.py``):

1. *Rewrite*: each sentence is masked at the rates 0.0, 0.1, …, 0.8 — ``ceil(len(words) · rate)`` of its
   space-separated words, chosen at random, become ``<mask>``, and with probability 0.5 runs of adjacent
   masks merge into one — and the LLM fills the masks ("Replace all <mask> tokens in …"); rate 0 asks for a
   sentence with the same meaning instead ("Write two sentences that mean the same thing.").
2. *Score*: the LLM rates each (sentence, rewrite) pair with the paper's prompt ("The similarity score for two
   sentences is in the range from 0.0 to 1.0 …"); the first number in its answer is the score.

The pairs with their scores (``sent0,sent1,score``) train a cosine-similarity regression: ``sbert_regression``
(Sentence-BERT's MSE on cosine similarity, CLAIF's Eq. 1 loss) or ``cosent`` read them.

Departures, and why: the reference uses a completion model whose prompt ends in an open quote with ``"``
as the stop; a chat model gets the same text as a user message and its answer's first line, quotes
stripped, is the rewrite. A rewrite that still holds ``<mask>`` (``unfilled``), and an answer with no number
(``no_score``) or one outside [0, 1] (``bad_score``) are dropped and counted, where the reference kept
unparsable scores out silently. The masking draws from a generator seeded by (seed, row, rate), so a rerun
builds the same prompts and the cache answers them.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Any

from csekit.errors import CsekitError
from csekit.generation.base import Generator, Sampling
from csekit.generation.pipeline import PipelineResult, check_text, load_template, provenance

#: The reference's sampling (``data_generation.py``: temperature 0.7, top-p 0.9), answers cut shorter.
SAMPLING = Sampling(max_new_tokens=64, temperature=0.7, top_p=0.9)
NAME = "claif"
MASK = "<mask>"
_NUMBER = re.compile(r"[0-9.]*[0-9]")  # the reference's pattern: the first match is the score


def mask_words(sentence: str, rate: float, rng: random.Random, *, merge_rate: float = 0.5) -> str:
    """``sentence`` with ``ceil(words · rate)`` random words replaced by ``<mask>``; with probability
    ``merge_rate`` adjacent masks merge into one."""
    words = sentence.split(" ")
    for index in rng.sample(range(len(words)), math.ceil(len(words) * rate)):
        words[index] = MASK
    if rng.random() <= merge_rate:
        words = [word for i, word in enumerate(words) if not (word == MASK and i > 0 and words[i - 1] == MASK)]
    return " ".join(words)


def parse_score(output: str | None) -> tuple[float | None, str | None]:
    """The first number in ``output`` as a score in [0, 1], or ``(None, kind)``."""
    text, problem = check_text(output)
    if text is None:
        return None, problem
    match = _NUMBER.search(output or "")
    if match is None:
        return None, "no_score"
    try:
        score = float(match.group(0))
    except ValueError:  # "1.2.3"
        return None, "no_score"
    return (score, None) if 0.0 <= score <= 1.0 else (None, "bad_score")


def run(rows: list[dict[str, Any]], generator: Generator, *, work_dir: Path,
        sampling: Sampling = SAMPLING,
        mask_rates: list[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
        merge_rate: float = 0.5, template_version: int = 1) -> PipelineResult:  # fmt: skip
    """``sent0,sent1,score`` rows: each sentence, a rewrite of it at each mask rate, and the LLM's score."""
    if not mask_rates or any(not 0.0 <= rate < 1.0 for rate in mask_rates):
        raise CsekitError(f"claif: mask_rates must be rates in [0, 1), got {list(mask_rates)}")
    fill, same, score = (load_template(NAME, name, template_version) for name in ("fill", "same", "score"))
    result = PipelineResult(columns=("sent0", "sent1", "score"), stages={"input": len(rows)})

    jobs = []  # (row index, rate, masked sentence, template)
    for i, row in enumerate(rows):
        for rate in mask_rates:
            rng = random.Random(f"{sampling.seed}:{i}:{rate}")
            template = same if rate == 0 else fill
            jobs.append((i, rate, row["sent0"] if rate == 0 else mask_words(row["sent0"], rate, rng, merge_rate=merge_rate), template))
    outputs = generator.generate([template.fill(sentence=masked) for _, _, masked, template in jobs], sampling)
    pairs = []
    for job, output in zip(jobs, outputs):
        text, problem = check_text(output)
        if text is not None and MASK in text:
            text, problem = None, "unfilled"
        if text is None:
            result.malformed[problem] += 1
        else:
            pairs.append((*job, text))
    result.stages["rewrite"] = len(pairs)

    scores = generator.generate([score.fill(sentence=rows[i]["sent0"], other=text) for i, _, _, _, text in pairs], sampling)
    for (i, rate, masked, template, text), output in zip(pairs, scores):
        value, problem = parse_score(output)
        if value is None:
            result.malformed[problem] += 1
            continue
        result.add({"sent0": rows[i]["sent0"], "sent1": text, "score": f"{value:g}"},
                   provenance(pipeline=NAME, generator=generator, sampling=sampling, source=rows[i],
                              made={"sent1": ("rewrite", template), "score": ("score", score)},
                              mask_rate=rate, masked=masked))  # fmt: skip
    result.stages["score"] = len(result.rows)
    return result
