"""GCSE's data pipeline: knowledge-guided positives and negatives for each sentence, denoised by a frozen encoder.

Lai, Zhang, Zhang, Fu and Cui, "Enhancing Unsupervised Sentence Embeddings via Knowledge-Driven Data
Augmentation and Gaussian-Decayed Contrastive Learning", ACL 2025 (long papers), pp. 4919-4940 (its
pipeline; reference code ``aleversn/GCSE``, ``pipelines/1_*`` to ``9_*``, prompts in ``prompts/``). Its stages,
as the reference runs them:

1. ``extract`` (``1_extract_entities.py``, ``2_extract_main_parts.py``): the LLM lists each sentence's entities
   at several granularities with their types, and its main parts (theme category, subject with quantity,
   action, state), both as JSON (read leniently, as the reference's ``json_repair``; what is no JSON at all is
   counted as malformed and the row goes on with no entities/parts, as there).
2. ``graphs`` (``3_construct_entity_kg.py``, ``4_*``): relatedness is the inner product of the entity strings'
   embeddings under a frozen sentence encoder. Per entity type, each distinct entity gets its 10 nearest
   same-type entities (itself first); the main parts (subjects, actions, states together) get their 5 nearest.
3. ``samples`` (``7_generate_samples.py``, ``8_process_generation.py``), one seeded draw per sentence:
   positive = a style rewrite (70%) or the sentence with one phrase replaced by its related one (30%; half a
   main part, half an entity); negative = a style refutation (70%), a phrase replaced by a random one of the
   same type (15%) or the subject's quantity revised (15%). Sampled at the reference's temperature 0.6 and
   top-p 0.95 unless told otherwise; the extraction prompts decode greedily, as there.
4. ``denoise`` (``9_denoise_generation.py``): the cosine of each generated text to its sentence under a frozen
   encoder; the first sample (positive, then negative) at >= 0.80 becomes the positive, the first below 0.75
   the hard negative (the reference's logits 16 and 15 at temperature 0.05); a row without one keeps its own
   sentence as the positive (a dropout view) and borrows the sentence 6 rows on (6 back near the end) as its
   negative; every sample neither picked becomes a row of its own (text, text, that negative).

The result is (``sent0``, ``sent1``, ``hard_neg``) triplets, which the ``gcse`` objective trains on.

Departures, all small: the reference's "related" entity is the last of the top-k list (its k-th nearest; the
nearest is the entity itself), kept so. Its "random" draws use one global RNG in file order; here each sentence
draws from its own RNG seeded by (seed, row), so a row's draws do not depend on the others or on batching.
An output that is empty or a refusal is no sample here (the reference keeps ``str(output)``, even ``""``,
which then passes the negative threshold); parts that are no ``{"text": ...}`` item are dropped before the
"first part" is taken (the reference falls back to "A man" when the first item is broken). The main-parts
prompt keeps the reference's misspelt ``suject`` key, and the reading accepts it as ``subject`` (the
reference reads ``subject`` only, so outputs that copy the prompt lose their subject there). Fewer than 12
rows: a row with no row 6 on or 6 back borrows the next one (the reference fails). The frozen encoder: the
reference leaves it open (``<PATH>`` for the graphs, a SimCSE BERT for denoising); the default here is all-MiniLM-L6-v2, cosine
with normalised vectors (the reference's ``IndexFlatIP`` equals it for that model, which normalises).
The reference's stages 5-6 (extra sentences from masked templates) are not part of this pipeline.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from csekit.atomic import write_text
from csekit.data.assets import ASSETS, resolve
from csekit.errors import CsekitError
from csekit.generation.base import Generator, Sampling
from csekit.generation.pipeline import PipelineResult, Template, check_text, load_template, provenance

PIPELINE = "gcse"
MAIN_PARTS = ("subject", "action", "state")
FALLBACK_ENTITY = {"entity": "A man", "type": "person"}  # the reference's stand-in for a row without one
#: The reference's decoding of the positives and negatives (``7_generate_samples.py``); extraction is greedy.
SAMPLING = Sampling(max_new_tokens=512, temperature=0.6, top_p=0.95)
#: Where an output's JSON is complete: the end of a fenced block, and of a ``{"text": ...}`` object (cut before
#: its quote and brace, which the lenient reading restores). A small model goes on repeating its answer up to
#: the token limit (SmolLM2-135M does); the reference's 9B models stop by themselves and it sets no stop.
JSON_ENDS = {"extract": ("\n```\n",), "samples": ("\n```\n", '"}')}
FENCE = re.compile(r"```(?:json)?\s*(.*?)(?:```|$)", re.S)


# ---- stage 1: reading the extraction outputs --------------------------------------------------------------
def parse_json(output: str | None) -> tuple[Any, str | None]:
    """The JSON value in an LLM output, read leniently (code fences, text around it, unquoted keys, single
    quotes, a truncated tail), or ``(None, kind)``: ``failed``, ``empty``, ``refusal`` or ``bad_json``."""
    if output is None or not output.strip():
        return None, "failed" if output is None else "empty"
    if check_text(output)[1] == "refusal":  # a first line like "I'm sorry, ..."; a bare "Output:" label is fine
        return None, "refusal"
    try:
        import json_repair
    except ImportError:
        raise CsekitError("the gcse pipeline reads LLM JSON with json-repair: pip install 'csekit[gcse]'") from None
    fenced = FENCE.search(output)
    value = json_repair.loads(fenced.group(1) if fenced else output)
    if not isinstance(value, dict | list) or not value:
        return None, "bad_json"
    return value, None


def _texts(items: Any, key: str) -> list[dict[str, Any]]:
    """The dict items of a JSON list with a non-blank string under ``key`` (stripped)."""
    if not isinstance(items, list):
        return []
    return [{**item, key: item[key].strip()} for item in items
            if isinstance(item, dict) and isinstance(item.get(key), str) and item[key].strip()]  # fmt: skip


def parse_entities(output: str | None) -> tuple[list[dict[str, str]], str | None]:
    """``[{"entity", "type"}]`` of an entity-extraction output, and the malformed kind (or None)."""
    value, problem = parse_json(output)
    if problem is not None:
        return [], problem
    value = [value] if isinstance(value, dict) else value  # one entity without its list, as small models write it
    entities = [item for item in _texts(value, "entity") if isinstance(item.get("type"), str) and item["type"].strip()]
    return [{"entity": item["entity"], "type": item["type"].strip()} for item in entities], None


def parse_main_parts(output: str | None) -> tuple[dict[str, Any], str | None]:
    """``{"cls": [...], "subject"|"action"|"state": [{"text", ...}]}`` of a main-parts output, and the malformed
    kind (or None); a missing category is ``news``, as in the reference."""
    value, problem = parse_json(output)
    if problem is None and not isinstance(value, dict):
        problem = "bad_json"
    if problem is not None:
        return {"cls": ["news"], **{part: [] for part in MAIN_PARTS}}, problem
    category = value.get("cls")
    categories = [category] if isinstance(category, str) else category if isinstance(category, list) else []
    categories = [name.strip() for name in categories if isinstance(name, str) and name.strip()] or ["news"]
    parts = {part: _texts(value.get(part, value.get("suject") if part == "subject" else None), "text")
             for part in MAIN_PARTS}  # fmt: skip
    return {"cls": categories, **parts}, None


# ---- stage 2: the graphs -----------------------------------------------------------------------------------
def nearest(texts: list[str], vectors: np.ndarray, k: int) -> dict[str, list[tuple[str, float]]]:
    """Each text's ``k`` nearest texts by inner product (itself first), as the reference's exact faiss search.

    vectors: (N, D) unit rows of ``texts``.
    """
    scores = vectors @ vectors.T  # (N, N) cosine
    order = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, len(texts))]  # (N, k)
    return {texts[i]: [(texts[j], float(scores[i, j])) for j in row] for i, row in enumerate(order)}


@dataclass
class Graphs:
    """Entities by type, main parts by kind, and each one's nearest neighbours (``related``)."""

    entities: dict[str, list[str]]  # type -> distinct entity texts, first seen first
    parts: dict[str, list[str]]  # subject/action/state -> distinct texts (a text belongs to its first kind)
    entity_related: dict[str, list[tuple[str, float]]]  # text -> top-k same-type (its first type)
    part_related: dict[str, list[tuple[str, float]]]

    @classmethod
    def build(cls, extracted: list[dict[str, Any]], embed: Any, *, neighbours: int = 10, part_neighbours: int = 5) -> Graphs:
        entities: dict[str, dict[str, None]] = {}
        part_kind: dict[str, str] = {}
        for row in extracted:
            for item in row["entities"]:
                entities.setdefault(item["type"], {})[item["entity"]] = None
            for kind in MAIN_PARTS:
                for item in row["main_parts"][kind]:
                    part_kind.setdefault(item["text"], kind)
        entity_related: dict[str, list[tuple[str, float]]] = {}
        for texts in entities.values():
            for text, related in nearest(list(texts), embed(list(texts)), neighbours).items():
                entity_related.setdefault(text, related)  # an entity of two types: its first, as the reference
        texts = list(part_kind)
        part_related = nearest(texts, embed(texts), part_neighbours) if texts else {}
        parts = {kind: [text for text in texts if part_kind[text] == kind] for kind in MAIN_PARTS}
        return cls({kind: list(names) for kind, names in entities.items()}, parts, entity_related, part_related)

    def related(self, text: str, *, part: bool) -> str:
        """The reference's ``get_related``: the last of the top-k list, or the text itself when it has none."""
        related = (self.part_related if part else self.entity_related).get(text)
        return related[-1][0] if related else text

    def random(self, rng: random.Random, text: str, kind: str, *, part: bool) -> str:
        """The reference's ``get_random``: any entity of that type (any main part of that kind), else the text."""
        pool = (self.parts if part else self.entities).get(kind)
        return rng.choice(pool) if pool else text


# ---- stage 3: drawing each sentence's positive and negative ------------------------------------------------
def _rint(rng: random.Random) -> int:
    return rng.randint(1, 10)  # the reference's rint(): 1..10, so "<= 7" is 70%


def _swap(rng: random.Random, row: dict[str, Any], graphs: Graphs, *, related: bool) -> dict[str, str]:
    """A phrase of the row and its replacement: half the time a main part, else an entity (the reference's draws)."""
    if _rint(rng) <= 5:
        kind = rng.choice(MAIN_PARTS)
        parts = row["main_parts"][kind]
        phrase = parts[0]["text"] if parts else FALLBACK_ENTITY["entity"]
        replacement = graphs.related(phrase, part=True) if related else graphs.random(rng, phrase, kind, part=True)
    else:
        item = rng.choice(row["entities"]) if row["entities"] else FALLBACK_ENTITY
        phrase = item["entity"]
        replacement = graphs.related(phrase, part=False) if related else graphs.random(rng, phrase, item["type"], part=False)
    return {"ori_entities": f'"{phrase}"', "replace_entities": f'"{replacement}"'}


def draw_samples(rng: random.Random, row: dict[str, Any], graphs: Graphs, *, styles: int, refutations: int
                 ) -> tuple[tuple[str, dict[str, Any]], tuple[str, dict[str, Any]]]:  # fmt: skip
    """``((kind, fields), (kind, fields))`` of the positive and the negative: kinds ``rewrite``/``related``
    and ``refute``/``random``/``quantity``; ``styles``/``refutations`` are how many style prompts there are."""
    if _rint(rng) <= 7:
        positive = ("rewrite", {"style": rng.randrange(styles)})
    else:
        positive = ("related", _swap(rng, row, graphs, related=True))
    if _rint(rng) <= 7:
        negative = ("refute", {"style": rng.randrange(refutations)})
    elif _rint(rng) <= 5:
        negative = ("random", _swap(rng, row, graphs, related=False))
    else:
        subjects = row["main_parts"]["subject"]
        number = rng.randint(0, 51)
        if _rint(rng) >= 5:
            number = rng.randint(51, 10000)
        subject = subjects[0]["text"] if subjects else FALLBACK_ENTITY["entity"]
        negative = ("quantity", {"subject_text": subject, "new_number": str(number)})
    return positive, negative


def parse_sample(output: str | None) -> tuple[str | None, str | None]:
    """The sentence of a ``{"text": ...}`` output (or its first line when it is plain text), or ``(None, kind)``."""
    value, problem = parse_json(output)
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        text = value["text"].strip()
        return (text, None) if text else (None, "empty")
    if problem in ("failed", "empty", "refusal"):
        return None, problem
    text, problem = check_text(output)
    if text is not None and text[:1] in "{[":
        return None, "bad_json"
    return text, problem


# ---- stage 4: denoising ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Triplet:
    sent0: str
    sent1: str
    hard_neg: str
    row: int  # the source sentence
    sample: int | None  # the sample this row is built around (None: the sentence's own row)
    positive: int | None  # which sample is sent1 (None: the sentence itself)
    negative: int | None  # which sample is hard_neg (None: borrowed from row ``borrowed``)
    borrowed: int | None


def borrowed_row(row: int, rows: int) -> int:
    """The reference's stand-in negative: the sentence 6 rows on, or 6 back near the end; with fewer than 12 rows
    some rows have neither (the reference fails there), and they take the next row, wrapping around."""
    if row + 6 < rows:
        return row + 6
    return row - 6 if row >= 6 else (row + 1) % rows


def denoise(sentences: list[str], samples: list[list[tuple[str, float]]], *, keep_positive: float = 0.80,
            keep_negative: float = 0.75) -> list[Triplet]:  # fmt: skip
    """Triplets from each sentence's samples (``(text, cosine to the sentence)``, positive first), as the reference."""
    triplets = []
    for row, (sentence, candidates) in enumerate(zip(sentences, samples, strict=True)):
        positive = next((k for k, (_, score) in enumerate(candidates) if score >= keep_positive), None)
        negative = next((k for k, (_, score) in enumerate(candidates) if score < keep_negative), None)
        borrowed = None if negative is not None else borrowed_row(row, len(sentences))
        sent1 = sentence if positive is None else candidates[positive][0]
        hard_neg = sentences[borrowed] if negative is None else candidates[negative][0]
        triplets.append(Triplet(sentence, sent1, hard_neg, row, None, positive, negative, borrowed))
        for k, (text, _) in enumerate(candidates):
            if k not in (positive, negative):  # a sample neither picked: its own dropout-view row
                triplets.append(Triplet(text, text, hard_neg, row, k, None, negative, borrowed))
    return triplets


# ---- the pipeline ------------------------------------------------------------------------------------------
def _encoder(name: str) -> Any:
    from csekit.inference.encode import EncodeSettings, embed_texts
    from csekit.models import load_encoder

    path = resolve([name])[name] if name in ASSETS else name
    encoder = load_encoder(path)
    settings = EncodeSettings(normalize=True)
    return lambda texts: embed_texts(encoder, texts, settings) if texts else np.zeros((0, 1), dtype=np.float32)


def _sentence(row: Any) -> str:
    text = row.get("sent0", row.get("text")) if isinstance(row, dict) else row
    if not isinstance(text, str) or not text.strip():
        raise CsekitError(f"gcse: each input row needs a sentence (a 'sent0' or 'text' string), got {row!r}")
    return text.strip()


def run(rows: list[Any], generator: Generator, *, work_dir: Path | str, sampling: Sampling = SAMPLING,
        encoder: str = "all-MiniLM-L6-v2", extract_max_new_tokens: int = 512, neighbours: int = 10,
        part_neighbours: int = 5, keep_positive: float = 0.80, keep_negative: float = 0.75,
        stop_after_json: bool = True, template_version: int = 1) -> PipelineResult:  # fmt: skip
    """GCSE triplets for ``rows`` (sentences); ``sampling`` decodes the positives and negatives, greedy decoding
    with ``extract_max_new_tokens`` the extraction; ``encoder`` (an asset name or a model path) builds the graphs
    and denoises; ``stop_after_json`` ends each output where its JSON ends (:data:`JSON_ENDS`); ``template_version``
    picks the template files."""
    sentences = [_sentence(row) for row in rows]
    work_dir = Path(work_dir)
    template = {name: load_template(PIPELINE, name, template_version) for name in
                ("entities", "main_parts", "style", "rewrite_styles", "refute_styles", "replace_entity", "quantity_revise")}  # fmt: skip
    styles = {"rewrite": template["rewrite_styles"].text.splitlines(), "refute": template["refute_styles"].text.splitlines()}
    result = PipelineResult(columns=("sent0", "sent1", "hard_neg"))
    result.stages["sentences"] = len(sentences)

    ends = JSON_ENDS if stop_after_json else {"extract": (), "samples": ()}
    greedy = replace(sampling, temperature=0.0, top_p=1.0, max_new_tokens=extract_max_new_tokens,
                     stop=(*sampling.stop, *ends["extract"]))  # fmt: skip
    sampling = replace(sampling, stop=(*sampling.stop, *ends["samples"]))
    prompts = [template[name].fill(input_text=s) for name in ("entities", "main_parts") for s in sentences]
    outputs = _generate(generator, prompts, greedy)
    extracted = []
    for index, (entity_output, parts_output) in enumerate(zip(outputs[: len(sentences)], outputs[len(sentences) :])):
        entities, entity_problem = parse_entities(entity_output)
        parts, parts_problem = parse_main_parts(parts_output)
        result.malformed.update(f"{stage}:{problem}" for stage, problem in
                                (("entities", entity_problem), ("main_parts", parts_problem)) if problem)  # fmt: skip
        extracted.append({"row": index, "entities": entities, "main_parts": parts,
                          "parsed": {"entities": entity_problem is None, "main_parts": parts_problem is None}})  # fmt: skip
    result.stages["entities parsed"] = sum(row["parsed"]["entities"] for row in extracted)
    result.stages["main parts parsed"] = sum(row["parsed"]["main_parts"] for row in extracted)
    # Parsed JSON may still hold nothing usable (a small model echoes the prompt's example keys): what the draws get.
    result.stages["rows with an entity"] = sum(bool(row["entities"]) for row in extracted)
    result.stages["rows with a main part"] = sum(any(row["main_parts"][kind] for kind in MAIN_PARTS) for row in extracted)

    embed = _encoder(encoder)
    graphs = Graphs.build(extracted, embed, neighbours=neighbours, part_neighbours=part_neighbours)
    result.stages["entity graph nodes"] = len(graphs.entity_related)
    result.stages["main-part graph nodes"] = len(graphs.part_related)
    write_text(work_dir / "extracted.jsonl", "".join(_json_line(row) for row in extracted))
    write_text(work_dir / "graphs.json", _json_line(asdict(graphs)))

    def prompt(sentence: str, kind: str, fields: dict[str, Any]) -> tuple[Template, str]:
        if kind in styles:
            return template["style"], template["style"].fill(instruction=styles[kind][fields["style"]], input_text=sentence)
        name = "quantity_revise" if kind == "quantity" else "replace_entity"
        return template[name], template[name].fill(input_text=sentence, **fields)

    draws = [draw_samples(random.Random(f"gcse:{sampling.seed}:{index}"), row, graphs,
                          styles=len(styles["rewrite"]), refutations=len(styles["refute"]))
             for index, row in enumerate(extracted)]  # fmt: skip
    asked = [prompt(sentence, kind, fields) for sentence, pair in zip(sentences, draws) for kind, fields in pair]
    outputs = _generate(generator, [text for _, text in asked], sampling)
    samples: list[list[tuple[str, float]]] = []
    origins: list[list[dict[str, Any]]] = []
    for index in range(len(sentences)):
        kept, origin = [], []
        for role, (kind, fields), (used, _), output in zip(("positive", "negative"), draws[index], asked[2 * index :],
                                                           outputs[2 * index : 2 * index + 2]):  # fmt: skip
            text, problem = parse_sample(output)
            if problem is not None:
                result.malformed[f"{role}:{problem}"] += 1
                continue
            kept.append(text)
            origin.append({"role": role, "kind": kind, "template": used, "fields": fields})
        samples.append(kept)
        origins.append(origin)
    result.stages["positives generated"] = sum(any(o["role"] == "positive" for o in origin) for origin in origins)
    result.stages["negatives generated"] = sum(any(o["role"] == "negative" for o in origin) for origin in origins)

    texts = [text for kept in samples for text in kept]
    anchors, vectors = embed(sentences), embed(texts)  # (N, D), (S, D)
    scored, start = [], 0
    for index, kept in enumerate(samples):
        cosines = vectors[start : start + len(kept)] @ anchors[index]  # (len(kept),)
        scored.append([(text, float(score)) for text, score in zip(kept, cosines)])
        start += len(kept)
    triplets = denoise(sentences, scored, keep_positive=keep_positive, keep_negative=keep_negative)
    result.stages[f"positives kept (cosine >= {keep_positive})"] = sum(t.sample is None and t.positive is not None for t in triplets)
    result.stages[f"negatives kept (cosine < {keep_negative})"] = sum(t.sample is None and t.negative is not None for t in triplets)
    extraction = {"templates": [template["entities"].tag, template["main_parts"].tag], "sampling": asdict(greedy)}
    for triplet in triplets:
        origin, cosines = origins[triplet.row], [score for _, score in scored[triplet.row]]
        picks = {"sent0": triplet.sample, "sent1": triplet.positive if triplet.sample is None else triplet.sample,
                 "hard_neg": triplet.negative}  # fmt: skip
        columns = {column: _column(origin, cosines, pick) for column, pick in picks.items()}
        if triplet.negative is None:
            columns["hard_neg"] = {"from": "borrowed", "row": triplet.borrowed}
        made = {column: ("samples", origin[pick]["template"]) for column, pick in picks.items() if pick is not None}
        record = provenance(pipeline=PIPELINE, generator=generator, sampling=sampling, made=made,
                            source={"row": triplet.row, "text": sentences[triplet.row]}, columns=columns,
                            encoder=encoder, extraction=extraction)  # fmt: skip
        result.add({"sent0": triplet.sent0, "sent1": triplet.sent1, "hard_neg": triplet.hard_neg}, record)
    result.stages["training rows"] = len(result.rows)
    return result


def _generate(generator: Generator, prompts: list[str], sampling: Sampling) -> list[str | None]:
    """The outputs of ``prompts`` in their order, asked in sorted order: prompts of one template then follow each
    other, so a backend that keeps the previous prompt's prefix (llama.cpp) evaluates only what differs."""
    order = sorted(range(len(prompts)), key=prompts.__getitem__)
    outputs: list[str | None] = [None] * len(prompts)
    for index, output in zip(order, generator.generate([prompts[i] for i in order], sampling), strict=True):
        outputs[index] = output
    return outputs


def _column(origin: list[dict[str, Any]], cosines: list[float], pick: int | None) -> dict[str, Any]:
    """Where a column's text came from: the sentence itself, or which sample (its template, draw and cosine)."""
    if pick is None:
        return {"from": "sentence"}
    sample = origin[pick]
    return {"from": sample["role"], "kind": sample["kind"], "template": sample["template"].tag,
            "fields": sample["fields"], "cosine": cosines[pick]}  # fmt: skip


def _json_line(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) + "\n"
