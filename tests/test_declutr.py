"""DeCLUTR: the span sampler's constraints (seeded), the loss against a loop, the span rows, the masked
anchors, documents read from consecutive lines, and two gloo ranks against one process."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import make_tiny_encoder, run_gloo_workers
from test_objectives_contract import TINY_MLM

from csekit import CsekitError
from csekit.augment.spans import sample_spans
from csekit.data.collate import pad_batch
from csekit.data.readers import read_examples
from csekit.objectives import RunContext, build_objective

SPANS = {"num_anchors": 2, "num_positives": 2, "max_span": 32, "min_span": 8}


def _overlaps_borders_or_inside(positive, anchor) -> bool:
    return positive[0] <= anchor[1] and positive[1] >= anchor[0]


@pytest.mark.parametrize("sampling", ["any", "subsuming", "adjacent"])
def test_spans_keep_the_papers_constraints_and_repeat_under_a_seed(sampling):
    for seed in range(200):
        length = 128 + seed  # at least num_anchors * max_span * 2 tokens
        anchors, positives = sample_spans(length, np.random.default_rng(seed), sampling=sampling, **SPANS)
        again = sample_spans(length, np.random.default_rng(seed), sampling=sampling, **SPANS)
        assert (anchors, positives) == again
        assert len(anchors) == 2 and len(positives) == 4
        for start, end in anchors + positives:
            assert 0 <= start < end <= length and 8 <= end - start <= 32
        (_, first_end), (second_start, _) = sorted(anchors)
        assert first_end <= second_start  # anchors never overlap
        for i, anchor in enumerate(anchors):
            for positive in positives[2 * i : 2 * i + 2]:  # positives follow their anchor
                assert _overlaps_borders_or_inside(positive, anchor)
                if sampling == "subsuming":
                    assert anchor[0] <= positive[0] and positive[1] <= anchor[1]
                if sampling == "adjacent":
                    assert positive[1] == anchor[0] or positive[0] == anchor[1]


def test_span_lengths_follow_the_beta_draws_skewed_long_for_anchors_and_short_for_positives():
    rng = np.random.default_rng(0)
    drawn = [sample_spans(4096, rng, num_anchors=2, num_positives=2, max_span=512, min_span=32) for _ in range(300)]
    anchor_lengths = [end - start for anchors, _ in drawn for start, end in anchors]
    positive_lengths = [end - start for _, positives in drawn for start, end in positives]
    # E[Beta(4, 2)] = 2/3 and E[Beta(2, 4)] = 1/3 of the 480 tokens between min_span and max_span
    assert abs(np.mean(anchor_lengths) - (32 + 480 * 2 / 3)) < 15
    assert abs(np.mean(positive_lengths) - (32 + 480 / 3)) < 15


def test_a_short_document_samples_spans_that_fit_and_a_tiny_one_is_refused():
    anchors, positives = sample_spans(40, np.random.default_rng(1), **SPANS)  # 40 < 128: spans cut to 10
    assert all(end - start <= 10 and end <= 40 for start, end in anchors + positives)
    with pytest.raises(CsekitError, match="too short for 2 anchors"):
        sample_spans(3, np.random.default_rng(1), **SPANS)
    with pytest.raises(CsekitError, match="span sampling must be one of"):
        sample_spans(200, np.random.default_rng(1), sampling="nearby", **SPANS)


def naive_nt_xent(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> torch.Tensor:
    """PyTorch-metric-learning's NTXentLoss as DeCLUTR calls it: labels i for anchor i and positive i, every
    positive pair in both directions, negatives every embedding of another label; mean over the pairs."""
    embeddings = torch.cat([anchors, positives])
    labels = list(range(len(anchors))) * 2
    terms = []
    for i in range(len(embeddings)):
        for j in range(len(embeddings)):
            if i == j or labels[i] != labels[j]:
                continue
            cos = lambda a, b: torch.dot(a, b) / (a.norm() * b.norm())  # noqa: E731
            positive = torch.exp(cos(embeddings[i], embeddings[j]) / temperature)
            negatives = sum(torch.exp(cos(embeddings[i], embeddings[k]) / temperature)
                            for k in range(len(embeddings)) if labels[k] != labels[i])  # fmt: skip
            terms.append(-torch.log(positive / (positive + negatives)))
    return torch.stack(terms).mean()


def test_the_contrastive_term_is_nt_xent_over_all_anchors_and_positives_in_value_and_gradient():
    encoder = make_tiny_encoder("mean")
    objective = build_objective("declutr", encoder, options={"mlm_weight": 0.0})
    torch.manual_seed(0)
    embeddings = {key: torch.randn(3, 5, dtype=torch.float64, requires_grad=True) for key in objective.sentence_keys}
    loss = objective.loss(embeddings, {})["contrastive"]
    anchors = torch.cat([embeddings["anchor1"], embeddings["anchor2"]])
    positives = torch.cat([embeddings["positive1"], embeddings["positive2"]])
    expected = naive_nt_xent(anchors, positives, 0.05)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    grads = torch.autograd.grad(loss, list(embeddings.values()))
    expected_grads = torch.autograd.grad(expected, list(embeddings.values()))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def _documents(encoder, texts):
    ids = encoder.tokenize(texts)
    return pad_batch([{key: ids[key][i] for key in ids} for i in range(len(texts))], encoder.pad_token_id)


DOCUMENTS = [" ".join(f"word{i} of document {d} ." for i in range(12)) for d in range(3)]


def test_span_rows_are_the_documents_tokens_between_special_tokens():
    encoder = make_tiny_encoder("mean")
    objective = build_objective("declutr", encoder, options={"mlm_weight": 0.0, "max_span": 6, "min_span": 2})
    documents = _documents(encoder, DOCUMENTS)
    torch.manual_seed(3)
    anchors, positives = objective.span_rows(encoder, documents)
    assert anchors["input_ids"].shape[0] == 3 * 2 and positives["input_ids"].shape[0] == 3 * 2 * 2
    tokenizer = encoder.tokenizer
    for row, mask in zip(anchors["input_ids"].tolist(), anchors["attention_mask"].tolist()):
        ids = [token for token, kept in zip(row, mask) if kept]
        assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id and 2 <= len(ids) - 2 <= 6
    # Every span is a stretch of its own document's tokens.
    for number, rows in ((0, anchors["input_ids"][:2]), (2, positives["input_ids"][8:])):
        document = [t for t in documents["input_ids"][number].tolist() if t not in tokenizer.all_special_ids]
        for row in rows.tolist():
            span = [t for t in row if t not in tokenizer.all_special_ids]
            assert any(document[i : i + len(span)] == span for i in range(len(document)))
    torch.manual_seed(3)
    again, _ = objective.span_rows(encoder, documents)
    assert torch.equal(again["input_ids"], anchors["input_ids"])  # the draws follow torch's seed


def test_the_anchors_are_masked_once_for_both_their_embedding_and_the_mlm_term():
    """As the reference: the anchor embedding is of the masked anchor, from the same pass as the MLM loss."""
    encoder = make_tiny_encoder("mean").eval()
    context = RunContext(model=TINY_MLM, max_length=encoder.max_length)
    objective = build_objective("declutr", encoder, context=context, options={"max_span": 6, "min_span": 2})
    batch = {"sent0": _documents(encoder, DOCUMENTS)}
    torch.manual_seed(5)
    embeddings = objective.embed(encoder, batch)
    terms = objective.loss(embeddings, batch)
    assert set(terms) == {"contrastive", "anchor_mlm"} and embeddings["anchor_mlm_count"].sum() > 0
    # Replay the draws: the spans, then the masking, then recompute by hand.
    torch.manual_seed(5)
    anchors, positives = objective.span_rows(encoder, batch["sent0"])
    from csekit.objectives.mlm import mask_tokens

    masked, labels = mask_tokens(anchors["input_ids"], anchors["attention_mask"], encoder.tokenizer, probability=0.15)
    assert (labels != -100).sum() == embeddings["anchor_mlm_count"].sum()
    expected = encoder(**{**anchors, "input_ids": masked}).view(3, 2, -1)
    torch.testing.assert_close(embeddings["anchor1"], expected[:, 0])
    torch.testing.assert_close(embeddings["anchor2"], expected[:, 1])
    positive = encoder(**positives).view(3, 2, 2, -1).mean(dim=2)
    torch.testing.assert_close(embeddings["positive2"], positive[:, 1])
    logits = objective.lm_head(encoder.backbone(**{**anchors, "input_ids": masked}).last_hidden_state)
    chosen = labels != -100
    mlm = torch.nn.functional.cross_entropy(logits[chosen], labels[chosen])
    assert terms["anchor_mlm"].item() == pytest.approx(mlm.item(), rel=1e-5)


def test_documents_join_consecutive_lines(tmp_path):
    text = tmp_path / "speech.txt"
    text.write_text("one .\ntwo .\n\nthree .\nfour .\nfive .\n", encoding="utf-8")
    documents = [row["sent0"] for row in read_examples(f"documents=2:{text}", columns=("sent0",))]
    assert documents == ["one . two .", "three . four .", "five ."]
    with pytest.raises(CsekitError, match="documents=N with N >= 1"):
        list(read_examples(f"documents=0:{text}", columns=("sent0",)))
    with pytest.raises(CsekitError, match="documents=2:.* supplies sent0, not sent1"):
        list(read_examples(f"documents=2:{text}", columns=("sent0", "sent1")))


# ------------------------------------------------------------------ two gloo ranks
def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        objective = build_objective("declutr", make_tiny_encoder("mean"), options={"mlm_weight": 0.0})
        embeddings = {key: value[rank * 2 : rank * 2 + 2].clone().requires_grad_()
                      for key, value in _whole_batch().items()}  # fmt: skip
        loss = objective.loss(embeddings, {})["contrastive"]
        loss.backward()
        torch.save({"loss": loss.detach(), "grads": {key: value.grad for key, value in embeddings.items()}},
                   f"{out_dir}/rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


def _whole_batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {key: torch.randn(4, 5, dtype=torch.float64, generator=generator)
            for key in ("anchor1", "positive1", "anchor2", "positive2")}  # fmt: skip


def test_two_ranks_gather_anchors_and_positives_as_one_process_with_the_whole_batch(tmp_path):
    ranks = run_gloo_workers(_worker, tmp_path)
    objective = build_objective("declutr", make_tiny_encoder("mean"), options={"mlm_weight": 0.0})
    whole = {key: value.requires_grad_() for key, value in _whole_batch().items()}
    loss = objective.loss(whole, {})["contrastive"]
    loss.backward()
    # DDP averages the ranks' gradients: the mean of the rank losses and of their gradients is the whole batch's.
    assert math.isclose(sum(r["loss"].item() for r in ranks) / 2, loss.item(), rel_tol=1e-12)
    for key, value in whole.items():
        gathered = torch.cat([r["grads"][key] for r in ranks]) / 2
        torch.testing.assert_close(gathered, value.grad, rtol=1e-10, atol=1e-13)
