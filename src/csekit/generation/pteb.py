"""PTEB-style STS: the score over LLM paraphrases of the test sentences, over several draws, beside the plain score.

Frank & Afli (2025), "PTEB: Towards Robust Text Embedding Evaluation via Stochastic Paraphrasing at
Evaluation Time with LLMs" (arXiv 2510.06730): at evaluation time an LLM rewrites the test texts into
meaning-preserving paraphrases, sampled (a different draw each run); the task is scored on the paraphrases
against the original gold labels, and the runs are aggregated as mean ± std, so that a model is measured on
the meaning rather than on the exact tokens of a fixed test set.

Here: every distinct sentence of the task's pairs is paraphrased once per draw (draw ``d`` samples with seed
``sampling.seed + d``; a sentence repeated across pairs keeps one paraphrase within a draw), both sides of
each pair are replaced, and the score is the task's usual number (cosine Spearman ×100; for STS12–16 over
all subsets' pairs pooled, the "all" aggregate). An unusable output (empty, a refusal, no answer) keeps the
original sentence and is counted; ``changed`` is the share of sentences whose paraphrase has other words than
they have (case, spacing and punctuation aside: "a man is cutting a fish ." → "A man is cutting a fish." is no
paraphrase).

Departures, and why: the paper first selects its paraphraser with an LLM judge against STS gold ratings and
reports the paraphrases' judged similarity; here the paraphraser is whatever ``--generator`` names and no
judge runs (a judge is one more generator call per sentence: the ``changed`` share and the drop are what
is reported). The prompt (``templates/pteb/paraphrase.v1.txt``) is csekit's own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from csekit.errors import CsekitError
from csekit.evaluation.sts import ScoredPairs, correlations, cosine_rows
from csekit.generation.base import Generator, Sampling
from csekit.generation.pipeline import check_text, load_template

#: Sampled: each draw is another set of paraphrases.
SAMPLING = Sampling(max_new_tokens=64, temperature=0.7, top_p=0.95)


def sts_spearman(encode: Callable[[list[str]], np.ndarray], subsets: Sequence[ScoredPairs],
                 rewrite: dict[str, str] | None = None) -> float:  # fmt: skip
    """Cosine Spearman ×100 over all pairs of ``subsets`` pooled, each sentence replaced by ``rewrite[sentence]``."""
    texts = sorted({text for subset in subsets for text in (*subset.first, *subset.second)})
    table = encode([rewrite.get(text, text) if rewrite else text for text in texts])  # (T, H)
    row = {text: i for i, text in enumerate(texts)}
    similarity = np.concatenate([cosine_rows(table[[row[t] for t in s.first]], table[[row[t] for t in s.second]])
                                 for s in subsets])  # (N,) pooled pairs  # fmt: skip
    return correlations(similarity, np.concatenate([s.gold for s in subsets]))[0]


@dataclass
class PTEBResult:
    """The plain score and one score per draw, with the share of sentences changed and outputs unusable."""

    plain: float
    draws: list[float] = field(default_factory=list)
    changed: list[float] = field(default_factory=list)
    unusable: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(np.mean(self.draws))

    @property
    def std(self) -> float:
        return float(np.std(self.draws, ddof=1)) if len(self.draws) > 1 else 0.0


def paraphrase_sts(encode: Callable[[list[str]], np.ndarray], subsets: Sequence[ScoredPairs], generator: Generator, *,
                   draws: int = 3, sampling: Sampling = SAMPLING, template_version: int = 1) -> PTEBResult:  # fmt: skip
    """Score ``subsets`` plain and over ``draws`` paraphrase draws of ``generator``."""
    if draws < 1:
        raise CsekitError(f"draws must be at least 1, got {draws}")
    template = load_template("pteb", "paraphrase", template_version)
    sentences = sorted({text for subset in subsets for text in (*subset.first, *subset.second)})
    result = PTEBResult(plain=sts_spearman(encode, subsets))
    for draw in range(draws):
        outputs = generator.generate([template.fill(sentence=s) for s in sentences], replace(sampling, seed=sampling.seed + draw))
        rewrite, unusable = {}, 0
        for sentence, output in zip(sentences, outputs):
            text, problem = check_text(output)
            unusable += problem is not None
            rewrite[sentence] = sentence if text is None else text
        result.draws.append(sts_spearman(encode, subsets, rewrite))
        result.changed.append(sum(_words(rewrite[s]) != _words(s) for s in sentences) / len(sentences))
        result.unusable.append(unusable)
    return result


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())
