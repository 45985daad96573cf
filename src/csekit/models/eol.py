"""Explicit One-word Limitation prompts for decoders: PromptEOL and MetaEOL.

**PromptEOL** (Jiang et al. 2023, "Scaling Sentence Embeddings with Large Language Models", Sec. 3.1;
reference code kongds/scaling_sentemb ``evaluation.py``): the sentence goes into the template

    This sentence : "*sent 0*" means in one word:"

and its embedding is the last layer's state of the last token, ``hidden_states[-1][:, -1, :]`` with the
tokenizer padding on the left (``layer=-1`` here: the model's final output, after its final norm, which is
what transformers returns as ``hidden_states[-1]``).

**MetaEOL** (Lei et al. 2024, "Meta-Task Prompting Elicits Embeddings from Large Language Models", Sec. 3
and Appendix; reference code Yibin-Lei/MetaEOL ``evaluation.py``): eight meta-task prompts (text
classification, opinion/fact, sentiment, emotion, paraphrase, contextual synonym, key fact, entity and
relation), each read off as PromptEOL's last-token state of the last layer, and the eight averaged
(``outputs.view(-1, len(task_prompts), H).mean(dim=1)``). The reference averages prompts only, at the last
layer (``hidden_states[-1]``); the paper's analysis of other layers is not its default and is not applied
here (``layer`` chooses one layer for all eight prompts).

Text and tokens follow the reference batcher exactly:

- at inference (``clean_sentences``, on by default) a sentence that does not end in one of ``.?"'`` gets a
  period, its double quotes become single quotes, and a final ``?`` becomes ``.``; training data are
  filled in as they are (the reference's ``ft_llm.py``), as PromptBERT's test-time period does
  (:mod:`csekit.models.prompt`);
- the template is filled as text, ``template.replace('*sent 0*', s).strip()``, and the whole string is
  tokenized with the tokenizer's defaults (special tokens included), so tokens merge across the quote marks
  as the reference's do (byte-level BPE writes ``man."`` as ``man`` + ``."``);
- a row longer than ``max_length`` loses the end of its sentence, never the template: the sentence is cut
  to its first tokens and decoded (the reference's ``ft_llm.py`` cuts training sentences so), then filled in.

A MetaEOL row is the eight filled prompts one after the other, each prompt's tokens marked by its index in
``token_type_ids`` (a field decoders do not read); the pooler splits the row back into eight left-padded
rows and runs the backbone once on all of them (``runs_backbone``). No stock sentence-transformers module
fills a template, so a saved model names csekit's input module (:mod:`csekit.models.st_module`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from csekit.errors import CsekitError
from csekit.models.decoder import left_pad_rows
from csekit.models.pooling import LayerChoice, last_token_states, layer_states, register_pooler

#: Where the sentence goes in a template (the reference code's placeholder).
SENTENCE = "*sent 0*"
#: PromptEOL's template (Jiang et al. 2023, Sec. 3.1; ``evaluation.py --mask_embedding_sentence_template
#: '*cls*_This_sentence_:_"*sent_0*"_means_in_one_word:"'`` with ``_`` read as a space).
PROMPTEOL_TEMPLATE = 'This sentence : "*sent 0*" means in one word:"'
#: MetaEOL's eight meta-task prompts, as Yibin-Lei/MetaEOL ``evaluation.py`` writes them (``task_prompts``).
METAEOL_TEMPLATES = (
    "In this task, you're presented with a text excerpt. Your task is to categorize the excerpt into a broad "
    "category such as 'Education', 'Technology', 'Health', 'Business', 'Environment', 'Politics', or 'Culture'. "
    "These categories help in organizing content for better accessibility and targeting. For this task, this "
    'sentence : "*sent 0*" should be classified under one general category in one word:"',
    "In this task, you're given a statement and you need to determine whether it's presenting an 'Opinion' or a "
    "'Fact'. This distinction is vital for information verification, educational purposes, and content analysis. "
    'For this task, this sentence : "*sent 0*" discriminates between opinion and fact in one word:"',
    "In this task, you're given a review from an online platform. Your task is to generate a rating for the "
    "product based on the review on a scale of 1-5, where 1 means 'extremely negative' and 5 means 'extremely "
    'positive\'. For this task, this sentence : "*sent 0*" reflects the sentiment in one word:"',
    "In this task, you're reading a personal diary entry. Your task is to identify the predominant emotion "
    'expressed, such as joy, sadness, anger, fear, or love. For this task, this sentence : "*sent 0*" conveys '
    'the emotion in one word:"',
    "In this task, you're presented with two sentences. Your task is to assess whether the sentences convey the "
    "same meaning. Use 'identical', 'similar', 'different', or 'unrelated' to describe the relationship. To "
    'enhance the performance of this task, this sentence : "*sent 0*" means in one word:"',
    "In this task, you're given a sentence and a phrase. Your task is to determine if the phrase can be a "
    "contextual synonym within the given sentence. Options include 'yes', 'no', or 'partially'. To enhance the "
    'performance of this task, this sentence : "*sent 0*" means in one word:"',
    "In this task, you're examining a news article. Your task is to extract the most critical fact from the "
    'article. For this task, this sentence : "*sent 0*" encapsulates the key fact in one word:"',
    "In this task, you're reviewing a scientific abstract. Your task is to identify the main entities (e.g., "
    "proteins, diseases) and their relations (e.g., causes, treats). For this task, this sentence : "
    '"*sent 0*" highlights the primary entity or relation in one word:"',
)


def clean_sentence(text: str) -> str:
    """The reference batcher's test-time clean-up: a final period, single quotes, no final question mark."""
    if text and text[-1] not in ".?\"'":
        text += "."
    text = text.replace('"', "'")
    if text and text[-1] == "?":
        text = text[:-1] + "."
    return text


def check_template(template: str, *, copies: int = 1) -> str:
    if not isinstance(template, str) or template.count(SENTENCE) != copies:
        raise CsekitError(f"template {template!r} must contain {SENTENCE} (the sentence) "
                          f"{'once' if copies == 1 else f'{copies} times'}")  # fmt: skip
    return template


def fill(template: str, sentence: str) -> str:
    return template.replace(SENTENCE, sentence).strip()


def filled_rows(tokenizer, template: str, texts: Sequence[str], *, max_length: int, offsets: bool = False) -> list:
    """Each text filled into ``template`` and tokenized whole; a row over ``max_length`` keeps the first
    sentence tokens that fit. With ``offsets``: ``(ids, character offsets, filled text)`` per text."""
    overhead = len(tokenizer(fill(template, ""))["input_ids"])
    if max_length - overhead < 1:
        raise CsekitError(f"max_length {max_length} leaves no room for a sentence: the template {template!r} alone "
                          f"takes {overhead} tokens")  # fmt: skip
    rows = []
    for text in texts:
        filled = fill(template, text)
        encoded = tokenizer(filled, return_offsets_mapping=offsets)
        sentence = None
        while len(encoded["input_ids"]) > max_length:  # cut the sentence by the overshoot, then fill it in again
            if sentence is None:
                sentence = tokenizer(text, add_special_tokens=False)["input_ids"]
            sentence = sentence[: max(0, len(sentence) - (len(encoded["input_ids"]) - max_length))]
            filled = fill(template, tokenizer.decode(sentence))
            encoded = tokenizer(filled, return_offsets_mapping=offsets)
        rows.append((encoded["input_ids"], encoded["offset_mapping"], filled) if offsets else encoded["input_ids"])
    return rows


def segmented(prompts: Sequence[Sequence[list[int]]]) -> dict[str, list[list[int]]]:
    """``prompts[k][i]``: text i's row in prompt k -> one row per text, the prompts one after the other, each
    token's prompt index in ``token_type_ids``."""
    ids = [[token for rows in prompts for token in rows[i]] for i in range(len(prompts[0]))]
    segments = [[k for k, rows in enumerate(prompts) for _ in rows[i]] for i in range(len(prompts[0]))]
    return {"input_ids": ids, "attention_mask": [[1] * len(row) for row in ids], "token_type_ids": segments}


def split_segments(inputs: Mapping[str, Tensor], count: int) -> list[dict[str, Tensor]]:
    """Rows of ``count`` prompts (:func:`segmented`, padded on either side) -> ``count`` left-padded batches,
    batch k holding prompt k of every row, (B, T_k) each."""
    real = inputs["attention_mask"].bool()  # (B, T)
    ids, segments = inputs["input_ids"], inputs["token_type_ids"]
    batches = []
    for k in range(count):
        rows = [ids[i][real[i] & (segments[i] == k)].tolist() for i in range(ids.shape[0])]
        if not all(rows):
            raise CsekitError(f"a row has no tokens of prompt {k}: tokenize with SentenceEncoder.tokenize")
        batches.append(left_pad_rows(rows, 0, ids.device))  # the padding id is masked, never read
    return batches


class EOLPooler(LayerChoice):
    """The last token of a template around the sentence, at ``hidden_states[layer]``."""

    for_decoders = True

    def __init__(self, *, layer: int = -1, clean_sentences: bool = True):
        super().__init__(layer=layer)
        self.clean_sentences = bool(clean_sentences)

    @classmethod
    def create(cls, settings, *, config, tokenizer) -> EOLPooler:
        allowed = [name for name in inspect.signature(cls.__init__).parameters if name != "self"]
        unknown = sorted(set(settings) - set(allowed))
        if unknown:
            raise CsekitError(f"pooler {cls.name!r} has no setting(s) {', '.join(unknown)}; it takes {', '.join(allowed)}")
        pooler = cls(**settings)
        pooler.check(config)
        return pooler

    def inference_texts(self, texts: Sequence[str]) -> list[str]:
        return [clean_sentence(text) for text in texts] if self.clean_sentences else list(texts)


@register_pooler
class PromptEOLPooler(EOLPooler):
    name = "prompteol"

    def __init__(self, *, template: str = PROMPTEOL_TEMPLATE, layer: int = -1, clean_sentences: bool = True):
        super().__init__(layer=layer, clean_sentences=clean_sentences)
        self.template = check_template(template)

    def config(self) -> dict[str, Any]:
        return {"template": self.template, "layer": self.layer, "clean_sentences": self.clean_sentences}

    def tokenize(self, tokenizer, texts, *, max_length, fields):
        rows = filled_rows(tokenizer, self.template, texts, max_length=max_length)
        encoded = {"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows]}
        return {field: encoded[field] for field in fields if field in encoded}

    def forward(self, outputs, inputs, backbone: nn.Module) -> Tensor:
        return last_token_states(layer_states(outputs, self.layer), inputs["attention_mask"])  # (B, H)


@register_pooler
class MetaEOLPooler(EOLPooler):
    name = "metaeol"
    input_fields = ("token_type_ids",)
    runs_backbone = True

    def __init__(self, *, templates: Sequence[str] = METAEOL_TEMPLATES, layer: int = -1, clean_sentences: bool = True):
        super().__init__(layer=layer, clean_sentences=clean_sentences)
        if isinstance(templates, str) or not templates:
            raise CsekitError("pooler 'metaeol' takes a list of templates (at least one)")
        self.templates = tuple(check_template(template) for template in templates)

    def config(self) -> dict[str, Any]:
        return {"templates": list(self.templates), "layer": self.layer, "clean_sentences": self.clean_sentences}

    def tokenize(self, tokenizer, texts, *, max_length, fields):
        return segmented([filled_rows(tokenizer, template, texts, max_length=max_length) for template in self.templates])

    def embed(self, backbone: nn.Module, run: Callable, inputs: Mapping[str, Tensor]) -> Tensor:
        prompts = split_segments(inputs, len(self.templates))  # K x (B, T_k)
        longest = max(batch["input_ids"].shape[1] for batch in prompts)
        # One pass over all K * B rows, prompt-major: row k * B + i is prompt k of sentence i.
        stacked = {key: torch.cat([nn.functional.pad(batch[key], (longest - batch[key].shape[1], 0)) for batch in prompts])
                   for key in ("input_ids", "attention_mask")}  # (K * B, T)  # fmt: skip
        outputs, moved = run(stacked, output_hidden_states=self.needs_hidden_states)
        states = last_token_states(layer_states(outputs, self.layer), moved["attention_mask"])  # (K * B, H)
        return states.view(len(self.templates), -1, states.shape[-1]).mean(dim=0)  # (K, B, H) -> (B, H)
