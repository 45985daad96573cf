"""PTEB-style STS: scores over paraphrase draws, against the plain score on the same pairs."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tiny_encoder

from csekit.errors import CsekitError
from csekit.evaluation.sts import ScoredPairs, correlations, cosine_rows, load_task
from csekit.generation.pteb import paraphrase_sts, sts_spearman


class Rewriter:
    """A real, deterministic paraphraser: ``rewrite(sentence, seed)``; it records each draw's seed."""

    def __init__(self, rewrite):
        self.rewrite, self.seeds = rewrite, []
        self.identity = "rewriter"

    def generate(self, prompts, sampling):
        self.seeds.append(sampling.seed)
        return [self.rewrite(prompt.rsplit("Sentence: ", 1)[1], sampling.seed) for prompt in prompts]


@pytest.fixture(scope="module")
def pairs(data_dir) -> list[ScoredPairs]:
    subset = load_task(data_dir, "stsb", "test")[0]
    return [ScoredPairs("head", subset.first[:60], subset.second[:60], subset.gold[:60])]


@pytest.fixture(scope="module")
def encode():
    encoder = make_tiny_encoder("mean").eval()
    return lambda texts: encoder.encode(texts)


def test_sts_spearman_is_the_cosine_spearman_of_the_pairs(pairs, encode):
    subset = pairs[0]
    naive = correlations(cosine_rows(encode(subset.first), encode(subset.second)), subset.gold)[0]
    assert sts_spearman(encode, pairs) == pytest.approx(naive, abs=1e-9)


def test_unchanged_paraphrases_give_the_plain_score_and_rewrites_move_it(pairs, encode):
    same = Rewriter(lambda sentence, seed: sentence)
    result = paraphrase_sts(encode, pairs, same, draws=3)
    assert same.seeds == [0, 1, 2] and result.draws == [result.plain] * 3 and result.std == 0
    assert result.changed == [0.0] * 3
    reversed_words = Rewriter(lambda sentence, seed: " ".join(sentence.split()[::-1][: 4 + seed]))
    moved = paraphrase_sts(encode, pairs, reversed_words, draws=2)
    assert moved.plain == result.plain and moved.draws[0] != moved.draws[1] and moved.changed[0] > 0.9
    assert moved.mean == pytest.approx(np.mean(moved.draws)) and moved.std == pytest.approx(np.std(moved.draws, ddof=1))


def test_unusable_outputs_keep_the_sentence_and_are_counted(pairs, encode):
    refusing = Rewriter(lambda sentence, seed: "I'm sorry, I can't do that." if len(sentence) % 2 else f"Indeed, {sentence}")
    result = paraphrase_sts(encode, pairs, refusing, draws=1)
    sentences = {text for text in (*pairs[0].first, *pairs[0].second)}
    kept = sum(len(s) % 2 for s in sentences)
    assert result.unusable == [kept] and result.changed == [pytest.approx(1 - kept / len(sentences))]
    with pytest.raises(CsekitError, match="draws"):
        paraphrase_sts(encode, pairs, refusing, draws=0)


def test_a_rewrite_in_other_case_spacing_or_punctuation_is_not_a_change(pairs, encode):
    recased = Rewriter(lambda sentence, seed: sentence.strip().rstrip(" .").capitalize().replace(" ,", ",") + ".")
    assert paraphrase_sts(encode, pairs, recased, draws=1).changed == [0.0]
