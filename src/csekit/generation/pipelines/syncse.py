"""SynCSE-partial data: an LLM writes an entailment and a contradiction for each premise.

Zhang, Lan & He (2023), "Contrastive Learning of Sentence Embeddings from Scratch" (EMNLP 2023), §3.1:
given unlabelled sentences, an LLM is prompted for a positive (a paraphrase: an entailed sentence) and a
hard negative (a contradiction) of each, with few-shot examples drawn from an example pool for every
premise; the triples train supervised SimCSE (``sent0,sent1,hard_neg``: :class:`~csekit.objectives.simcse.SupervisedSimCSE`,
``simcse_sup``).

Departures, and why:

- The reference repository (hkust-nlp/SynCSE) releases the synthesised data and the training code, not the
  generation prompts; the templates here (``templates/syncse/entailment.v1.txt``, ``contradiction.v1.txt``)
  follow the paper's description of them (paraphrase with the same meaning; change details so the meaning
  contradicts, keeping context and structure), and the example pool (``examples.v1.jsonl``) is six triples
  written for csekit rather than NLI training rows, so that no dataset's text enters the prompts.
- One hard-negative prompt instead of the paper's pool of several: the template's version names it in the
  provenance, and a second template is a second version.
- Outputs the paper cleaned after the fact (refusals such as "I cannot paraphrase…") are dropped as they
  are generated, counted by kind; so are copies of the premise (no training signal) and empty outputs.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from csekit.errors import CsekitError
from csekit.generation.base import Generator, Sampling
from csekit.generation.pipeline import PipelineResult, check_text, few_shot, load_template, provenance, template_file

#: Sampled, for varied rewrites (the paper does not give its decoding settings).
SAMPLING = Sampling(max_new_tokens=64, temperature=0.7)
NAME = "syncse"


def _example_pool(version: int) -> list[dict[str, str]]:
    lines = template_file(NAME, f"examples.v{version}.jsonl").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _clean(output: str | None, premise: str, result: PipelineResult) -> str | None:
    text, problem = check_text(output)
    if text is not None and text.casefold().strip(" .") == premise.casefold().strip(" ."):
        text, problem = None, "copy"
    if problem is not None:
        result.malformed[problem] += 1
    return text


def run(rows: list[dict[str, Any]], generator: Generator, *, work_dir: Path,
        sampling: Sampling = SAMPLING,
        shots: int = 3, template_version: int = 1) -> PipelineResult:  # fmt: skip
    """``sent0,sent1,hard_neg`` rows: each premise (``sent0``) with its generated entailment and contradiction;
    ``shots`` few-shot examples per prompt, drawn for each premise from the example pool with the sampling's seed."""
    entailment = load_template(NAME, "entailment", template_version)
    contradiction = load_template(NAME, "contradiction", template_version)
    pool = _example_pool(template_version)
    if not 0 <= shots <= len(pool):
        raise CsekitError(f"syncse: shots must be between 0 and {len(pool)} (the example pool), got {shots}")
    premises = [row["sent0"] for row in rows]
    examples = [random.Random(f"{sampling.seed}:{i}:{premise}").sample(pool, shots) for i, premise in enumerate(premises)]
    result = PipelineResult(columns=("sent0", "sent1", "hard_neg"), stages={"input": len(premises)})

    outputs = generator.generate([few_shot(entailment, [(e["premise"], e["entailment"]) for e in chosen], sentence=premise)
                                  for premise, chosen in zip(premises, examples)], sampling)  # fmt: skip
    positives = [_clean(output, premise, result) for output, premise in zip(outputs, premises)]
    kept = [i for i, positive in enumerate(positives) if positive is not None]
    result.stages["entailment"] = len(kept)
    negatives = generator.generate([few_shot(contradiction, [(e["premise"], e["contradiction"]) for e in examples[i]],
                                             sentence=premises[i]) for i in kept], sampling)  # fmt: skip
    for i, output in zip(kept, negatives):
        negative = _clean(output, premises[i], result)
        if negative is None:
            continue
        result.add({"sent0": premises[i], "sent1": positives[i], "hard_neg": negative},
                   provenance(pipeline=NAME, generator=generator, sampling=sampling, source=rows[i],
                              made={"sent1": ("entailment", entailment), "hard_neg": ("contradiction", contradiction)},
                              shots=[e["premise"] for e in examples[i]]))  # fmt: skip
    result.stages["contradiction"] = len(result.rows)
    return result
