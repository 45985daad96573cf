"""The GCSE data pipeline: reading LLM JSON, the graphs, the seeded draws, the denoising, and a real run."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import numpy as np
import pytest

from csekit.generation.pipelines.gcse import (
    Graphs,
    borrowed_row,
    denoise,
    draw_samples,
    nearest,
    parse_entities,
    parse_json,
    parse_main_parts,
    parse_sample,
)

pytest.importorskip("json_repair", reason="the gcse pipeline reads LLM JSON with json-repair (csekit[gcse])")

ENTITIES = '[{"entity": "a man on skis", "type": "person"}, {"entity": "a man", "type": "person"}]'


@pytest.mark.parametrize(
    "output",
    [
        ENTITIES,
        f"```json\n{ENTITIES}\n```",  # a code fence
        f"Here are the entities:\n{ENTITIES}\nI hope this helps!",  # text around it
        f"```\n{ENTITIES}\n```\nNote: the types are guesses.",  # a fence, then trailing text
        ENTITIES[:-30],  # cut by max_new_tokens: the complete items survive
        "[{'entity': 'a man on skis', 'type': 'person'}, {'entity': 'a man', 'type': 'person'},]",  # Python quotes
    ],
)
def test_entities_read_through_the_usual_failures(output):
    entities, problem = parse_entities(output)
    assert problem is None
    assert entities[0] == {"entity": "a man on skis", "type": "person"}
    assert len(entities) == (1 if output == ENTITIES[:-30] else 2)


@pytest.mark.parametrize(
    ("output", "kind"),
    [
        (None, "failed"),
        ("   \n", "empty"),
        ("I'm sorry, but I can't help with that.", "refusal"),
        ("As an AI language model, I cannot extract entities.", "refusal"),
        ("The sentence has a man and some skis.", "bad_json"),
    ],
)
def test_what_is_no_entity_list_is_counted_by_kind(output, kind):
    assert parse_entities(output) == ([], kind)


def test_one_entity_without_its_list_is_read_and_a_nested_one_is_none():
    assert parse_entities('```json\n{"entity": "a man", "type": "person"}\n```') == ([{"entity": "a man", "type": "person"}], None)
    assert parse_entities('{"entity": {"type": "person", "name": "John"}, "type": "person"}') == ([], None)


def test_entity_items_without_both_strings_are_dropped():
    output = '[{"entity": " a dog ", "type": "animal "}, {"entity": "x"}, "loose", {"entity": "", "type": "t"}, {"entity": 3, "type": "n"}]'
    assert parse_entities(output) == ([{"entity": "a dog", "type": "animal"}], None)


def test_main_parts_read_the_prompts_own_unquoted_layout_and_its_misspelt_key():
    output = """Output:
{
    cls: 'leisure activity',
    suject: [{text: "A man", type: "person", quantity: 1}],
    action: [{text: "playing with a black dog"}]
    state: [{text: "on a white blanket"}]
}"""
    parts, problem = parse_main_parts(output)
    assert problem is None
    assert parts == {"cls": ["leisure activity"], "subject": [{"text": "A man", "type": "person", "quantity": 1}],
                     "action": [{"text": "playing with a black dog"}], "state": [{"text": "on a white blanket"}]}  # fmt: skip


def test_main_parts_default_as_the_reference():
    assert parse_main_parts('{"subject": [{"text": "two cats", "quantity": 2}]}')[0] == {
        "cls": ["news"], "subject": [{"text": "two cats", "quantity": 2}], "action": [], "state": []}  # fmt: skip
    assert parse_main_parts("no JSON here") == ({"cls": ["news"], "subject": [], "action": [], "state": []}, "bad_json")
    assert parse_main_parts('[{"text": "a list"}]')[1] == "bad_json"


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ('{"text": "A cat sat on the mat."}', ("A cat sat on the mat.", None)),
        ('```json\n{"text": "A cat sat."}\n```\nThis keeps the length.', ("A cat sat.", None)),
        ('Output: {"text": "A cat sat."} (12 characters)', ("A cat sat.", None)),
        ("A cat sat on the mat.\nThis rewrite is shorter.", ("A cat sat on the mat.", None)),  # plain text: line 1
        ('{"text": ""}', (None, "empty")),  # the format echoed back
        ("I'm sorry, I cannot refute this.", (None, "refusal")),
        (None, (None, "failed")),
        ('[{"sentence": 1}]', (None, "bad_json")),
    ],
)
def test_sample_outputs(output, expected):
    assert parse_sample(output) == expected


def test_json_reading_never_passes_a_scalar():
    assert parse_json('"just a string"') == (None, "bad_json")
    assert parse_json("42") == (None, "bad_json")


def test_nearest_is_the_exact_top_k_by_inner_product():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12, 5)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    texts = [f"t{i}" for i in range(12)]
    related = nearest(texts, vectors, 4)
    for i, text in enumerate(texts):
        naive = sorted(range(12), key=lambda j: -float(vectors[i] @ vectors[j]))[:4]
        assert [name for name, _ in related[text]] == [texts[j] for j in naive]
        assert related[text][0] == (text, pytest.approx(1.0))  # itself first
    assert len(nearest(texts[:2], vectors[:2], 10)["t0"]) == 2  # fewer texts than k: all of them


def _row(entities, subjects=(), actions=(), states=()):
    return {"entities": [{"entity": e, "type": t} for e, t in entities],
            "main_parts": {"cls": ["news"], "subject": [{"text": s} for s in subjects],
                           "action": [{"text": a} for a in actions], "state": [{"text": s} for s in states]}}  # fmt: skip


def _embed(texts):
    """Texts on a line by their number (``w3`` sits beside ``w2`` and ``w4``): the nearest are the closest numbers."""
    angles = np.array([int(text.rsplit("w", 1)[1]) * 0.1 for text in texts])
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)  # (N, 2) unit rows


def test_graphs_link_entities_of_the_same_type_only_and_pick_the_last_of_the_top_k():
    rows = [_row([("p w1", "person"), ("p w2", "person"), ("c w3", "city")], subjects=["s w1"], actions=["a w5"]),
            _row([("p w4", "person"), ("p w2", "person"), ("c w9", "city"), ("p w1", "dog")], states=["s w1"])]  # fmt: skip
    graphs = Graphs.build(rows, _embed, neighbours=2, part_neighbours=2)
    assert graphs.entities == {"person": ["p w1", "p w2", "p w4"], "city": ["c w3", "c w9"], "dog": ["p w1"]}
    assert [name for name, _ in graphs.entity_related["p w2"]] == ["p w2", "p w1"]  # w1 is nearer w2 than w4 is
    assert graphs.related("p w4", part=False) == "p w2"  # the last of the top-2, never another type
    assert graphs.related("c w3", part=False) == "c w9"
    assert graphs.entity_related["p w1"][1][0] == "p w2"  # an entity of two types: its first type's graph
    assert graphs.related("unknown", part=False) == "unknown"
    # Main parts: one graph over subjects, actions and states; a text keeps its first kind.
    assert graphs.parts == {"subject": ["s w1"], "action": ["a w5"], "state": []}
    assert graphs.related("s w1", part=True) == "a w5"
    rng = random.Random(0)
    assert {graphs.random(rng, "x", "person", part=False) for _ in range(200)} == {"p w1", "p w2", "p w4"}
    assert graphs.random(rng, "x", "state", part=True) == "x"  # no state in the corpus: the phrase itself


def _draws(count, row, graphs):
    return [draw_samples(random.Random(f"test:{i}"), row, graphs, styles=8, refutations=7) for i in range(count)]


def test_draws_follow_the_reference_proportions():
    row = _row([("p w1", "person"), ("p w2", "person")], subjects=["s w1"], actions=["a w2"], states=["s w3"])
    graphs = Graphs.build([row], _embed)
    draws = _draws(20_000, row, graphs)
    positives = Counter(kind for (kind, _), _ in draws)
    negatives = Counter(kind for _, (kind, _) in draws)
    assert positives["rewrite"] / 20_000 == pytest.approx(0.70, abs=0.012)
    assert positives["related"] / 20_000 == pytest.approx(0.30, abs=0.012)
    assert negatives["refute"] / 20_000 == pytest.approx(0.70, abs=0.012)
    assert negatives["random"] / 20_000 == pytest.approx(0.15, abs=0.008)
    assert negatives["quantity"] / 20_000 == pytest.approx(0.15, abs=0.008)
    # Half the swaps take a main part, half an entity; the styles are drawn evenly.
    swapped = [fields["ori_entities"] for (kind, fields), _ in draws if kind == "related"]
    assert sum(phrase.startswith('"p ') for phrase in swapped) / len(swapped) == pytest.approx(0.5, abs=0.03)
    styles = Counter(fields["style"] for (kind, fields), _ in draws if kind == "rewrite")
    assert sorted(styles) == list(range(8)) and min(styles.values()) > 0.8 * positives["rewrite"] / 8
    numbers = [int(fields["new_number"]) for _, (kind, fields) in draws if kind == "quantity"]
    assert all(0 <= n <= 10000 for n in numbers)
    assert sum(n > 51 for n in numbers) / len(numbers) == pytest.approx(0.6, abs=0.04)  # rint() >= 5: 6 in 10


def test_draws_are_seeded_per_row():
    row = _row([("p w1", "person")], subjects=["s w1"])
    graphs = Graphs.build([row], _embed)
    assert _draws(50, row, graphs) == _draws(50, row, graphs)
    assert len({repr(draw) for draw in _draws(50, row, graphs)}) > 10


def test_a_row_without_entities_or_parts_swaps_the_reference_stand_in():
    empty = _row([])
    graphs = Graphs.build([empty], _embed)
    swaps = [fields for draw in _draws(300, empty, graphs) for kind, fields in draw if kind in ("related", "random")]
    assert swaps and all(fields == {"ori_entities": '"A man"', "replace_entities": '"A man"'} for fields in swaps)
    quantities = [fields for _, (kind, fields) in _draws(300, empty, graphs) if kind == "quantity"]
    assert quantities and all(fields["subject_text"] == "A man" for fields in quantities)


def reference_denoise(sentences, samples, alpha=0.80, beta=0.75):
    """``9_denoise_generation.py``'s loop, transliterated (groups of scored samples, 'used' flags)."""
    groups = {str(i): {"ori": s, "samples": [{"score": score, "text": text} for text, score in samples[i]]}
              for i, s in enumerate(sentences)}  # fmt: skip
    result = []
    for idx, group in enumerate(groups.values()):
        text1 = text2 = group["ori"]
        neg = groups[str(idx + 6)]["ori"] if idx + 6 < len(groups) else groups[str(idx - 6)]["ori"]
        for sample in group["samples"]:
            if sample["score"] >= alpha:
                sample["used"] = True
                text2 = sample["text"]
                break
        for sample in group["samples"]:
            if sample["score"] < beta:
                sample["used"] = True
                neg = sample["text"]
                break
        result.append((text1, text2, neg))
        for sample in group["samples"]:
            if not sample.get("used"):
                result.append((sample["text"], sample["text"], neg))
    return result


def test_denoising_equals_the_reference_loop():
    rng = random.Random(0)
    edges = [0.80, 0.75, 0.7999, 0.7501, 0.95, 0.1]  # on and beside both thresholds
    for rows in (12, 13, 40):  # fewer than 12: the reference fails (no row 6 on or back)
        sentences = [f"sentence {i}" for i in range(rows)]
        samples = [[(f"{role} {i}", rng.choice([*edges, rng.random()])) for role in ("pos", "neg")[: rng.choice([0, 1, 2, 2])]]
                   for i in range(rows)]  # fmt: skip
        triplets = denoise(sentences, samples)
        assert [(t.sent0, t.sent1, t.hard_neg) for t in triplets] == reference_denoise(sentences, samples)


def test_denoising_thresholds():
    sentences = [f"s{i}" for i in range(8)]
    samples = [[("p", 0.80), ("n", 0.75)]] + [[] for _ in range(7)]
    first = denoise(sentences, samples)[:3]
    # 0.80 is kept as the positive; 0.75 is no negative: it gets a row of its own, with the borrowed s6.
    assert [(t.sent0, t.sent1, t.hard_neg) for t in first] == [("s0", "p", "s6"), ("n", "n", "s6"), ("s1", "s1", "s7")]
    swapped = denoise(sentences, [[("p", 0.2), ("n", 0.9)]] + [[] for _ in range(7)])[0]
    assert (swapped.sent1, swapped.hard_neg, swapped.positive, swapped.negative) == ("n", "p", 1, 0)


def test_few_rows_borrow_around():
    assert [borrowed_row(i, 20) for i in (0, 13, 14, 19)] == [6, 19, 8, 13]
    assert [borrowed_row(i, 9) for i in range(9)] == [6, 7, 8, 4, 5, 6, 0, 1, 2]
    assert [borrowed_row(i, 3) for i in range(3)] == [1, 2, 0]
    assert [borrowed_row(i, 5) for i in range(5)] == [1, 2, 3, 4, 0]


SENTENCES = ["Two dogs run across a snowy field.", "The museum in Paris opened in 1793.",
             "A woman is slicing three tomatoes.", "The river floods every spring.", "Five students passed the exam."]  # fmt: skip


def test_csekit_generate_gcse_end_to_end_with_the_real_local_model(llama_server, minilm, tmp_path, capsys):
    from csekit.cli.main import main
    from csekit.data.readers import read_examples

    (tmp_path / "sentences.txt").write_text("\n".join(SENTENCES) + "\n")
    out = tmp_path / "gcse.jsonl"
    generator = f"openai:smollm2@{llama_server}/v1"
    args = ["generate", "gcse", "--input", str(tmp_path / "sentences.txt"), "--output", str(out), "--generator", generator,
            "--max-new-tokens", "24", "--option", "extract_max_new_tokens=48", "--option", f"encoder={minilm}"]  # fmt: skip
    assert main(args) == 0
    summary = capsys.readouterr().out
    asked = re.search(r"asked the generator (\d+), from cache 0", summary)
    assert summary.startswith("gcse: sentences 5 -> entities parsed") and asked, summary
    assert int(asked.group(1)) <= 4 * len(SENTENCES)  # entities, main parts, a positive and a negative (if distinct)
    rows = [dict(row) for row in read_examples(out, columns=("sent0", "sent1", "hard_neg"))]  # as training reads them
    records = [json.loads(line) for line in (tmp_path / "gcse.provenance.jsonl").read_text().splitlines()]
    assert len(rows) == len(records) >= len(SENTENCES)
    own = [row["sent0"] for row, record in zip(rows, records) if record["columns"]["sent0"]["from"] == "sentence"]
    assert own == SENTENCES  # each sentence's row, in order; the others are samples neither picked
    for row, record in zip(rows, records):
        columns = record["columns"]
        assert record["pipeline"] == "gcse" and record["generator"] == generator
        assert record["source"]["text"] in SENTENCES and record["sampling"]["temperature"] == 0.6  # the reference's
        assert record["extraction"]["templates"] == ["entities.v1", "main_parts.v1"]
        assert set(record["made"]) == {name for name, column in columns.items() if column["from"] in ("positive", "negative")}
        assert all(made["stage"] == "samples" and made["template"].endswith(".v1") for made in record["made"].values())
        if columns["sent1"]["from"] != "sentence" and columns["sent0"]["from"] == "sentence":
            assert columns["sent1"]["cosine"] >= 0.80
        if columns["hard_neg"]["from"] == "borrowed":
            assert row["hard_neg"] == SENTENCES[columns["hard_neg"]["row"]]
        else:
            assert columns["hard_neg"]["cosine"] < 0.75
    assert main(args) == 0  # a rerun: every output from the cache, the same file
    assert "asked the generator 0, from cache 20" in capsys.readouterr().out  # every prompt a hit
    assert [dict(row) for row in read_examples(out, columns=("sent0", "sent1", "hard_neg"))] == rows
