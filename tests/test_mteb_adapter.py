"""The MTEB adapter: MTEB's own STS pipeline, fed STS-B test from the local SentEval files, scores a
csekit encoder exactly as ``csekit eval`` does. Skipped when mteb is not installed."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_tiny_encoder

from csekit.evaluation.mteb_adapter import MTEBEncoder

mteb = pytest.importorskip("mteb", reason="mteb is not installed (pip install csekit[mteb])")


def _local_stsb_task(data_dir):
    """MTEB's STS task type over STS-B test read with csekit's reader (MTEB would fetch it from the hub)."""
    from datasets import Dataset, DatasetDict
    from mteb.abstasks.sts import AbsTaskSTS
    from mteb.abstasks.task_metadata import TaskMetadata

    from csekit.evaluation.sts import load_task

    class LocalSTSBenchmark(AbsTaskSTS):
        metadata = TaskMetadata(
            name="LocalSTSBenchmark", type="STS", main_score="cosine_spearman", category="t2t",
            description="STS-B test, read from SentEval's sts-test.csv.", reference="https://github.com/facebookresearch/SentEval",
            dataset={"path": "local/stsbenchmark", "revision": "senteval"}, eval_splits=["test"], eval_langs=["eng-Latn"],
            date=("2017-01-01", "2017-12-31"), dialect=[], domains=["News", "Written"], task_subtypes=[],
            license="not specified", annotations_creators="human-annotated", modalities=["text"],
            sample_creation="found", bibtex_citation="",
        )  # fmt: skip
        min_score, max_score = 0, 5

        def load_data(self, num_proc: int | None = None, **kwargs) -> None:
            (pairs,) = load_task(data_dir, "stsb", "test")
            self.dataset = DatasetDict({"test": Dataset.from_dict(
                {"sentence1": pairs.first, "sentence2": pairs.second, "score": pairs.gold.tolist()})})  # fmt: skip
            self.data_loaded = True

    return LocalSTSBenchmark()


def test_adapter_satisfies_the_encoder_protocol():
    from mteb.models import EncoderProtocol

    encoder = MTEBEncoder(make_tiny_encoder("mean"), name="csekit/tiny")
    assert isinstance(encoder, EncoderProtocol)
    assert encoder.mteb_model_meta.name == "csekit/tiny" and encoder.mteb_model_meta.embed_dim == 32


def test_encode_takes_mteb_batches_or_a_list_in_order():
    model = make_tiny_encoder("mean")
    encoder = MTEBEncoder(model)
    texts = ["a short one", "a much longer sentence than the others here", "mid length text"]
    batches = [{"text": texts[:2]}, {"text": texts[2:]}]  # what MTEB's DataLoader yields
    expected = model.encode(texts)
    np.testing.assert_array_equal(encoder.encode(batches, task_metadata=None, hf_split="test", hf_subset="default"),
                                  expected)  # fmt: skip
    np.testing.assert_array_equal(encoder.encode(texts), expected)
    similarity = encoder.similarity(expected, expected)  # (3, 3)
    np.testing.assert_allclose(np.diag(similarity), 1.0, rtol=1e-12)
    np.testing.assert_allclose(encoder.similarity_pairwise(expected, expected[::-1]), similarity[[0, 1, 2], [2, 1, 0]])
    with pytest.raises(TypeError):
        encoder.encode("one string")


def test_mteb_stsb_score_equals_csekit(data_dir):
    from csekit.evaluation.sts import STSEvaluator

    model = make_tiny_encoder("mean")
    ours = STSEvaluator("stsb", data_dir=data_dir).evaluate(model)["stsb"]
    result = mteb.evaluate(MTEBEncoder(model, name="csekit/tiny"), _local_stsb_task(data_dir), cache=None,
                           show_progress_bar=False, encode_kwargs={"batch_size": 128})  # fmt: skip
    (task_result,) = result.task_results
    (scores,) = task_result.scores["test"]
    # "spearman" uses the adapter's similarity (csekit's cosine); "cosine_spearman" MTEB's own cosine.
    assert 100 * scores["spearman"] == pytest.approx(ours, abs=1e-4)
    assert 100 * scores["cosine_spearman"] == pytest.approx(ours, abs=1e-4)
