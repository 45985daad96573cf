"""Prompt-based sentence representation: the [MASK] state of a template around the sentence.

PromptBERT (Jiang et al., EMNLP 2022, "PromptBERT: Improving BERT Sentence Embeddings with
Prompts"), Sec. 4: the sentence ``[X]`` is put into a template such as
``This sentence : "[X]" means [MASK] .`` and its embedding is the last hidden state of the
[MASK] token, ``h = h_[MASK]`` (the paper's first way of representing a sentence with a prompt).

Template denoising (Sec. 5): the template alone also yields a [MASK] state, ``h^``, a bias that
every sentence shares; the denoised embedding is ``h - h^``. ``h^`` is the [MASK] state of the
template with no sentence in it, but with the position ids the template's tokens have when the
sentence *is* there: the tokens after ``[X]`` are shifted right by the sentence's length, so the
[MASK] sits at the same position as in the filled template (reference code
``prompt_bert/models.py::cl_forward.get_delta`` and ``sentemb_forward``). The bias thus depends on
the sentence's length only; it is computed once per distinct length in the batch, with gradient in
training (the reference leaves ``mask_embedding_sentence_delta_freeze`` off).

Token ids follow the reference's training data (``train.py::prepare_features``): the template's
text before and after ``[X]`` is tokenized on its own, the sentence on its own, and the ids are
concatenated ``[CLS] before sentence after [SEP]``. Truncation cuts the sentence, never the
template: ``max_length`` counts the whole row, so the sentence keeps ``max_length - len(template)``
tokens. Text in a sentence is never read as a special token, so each row has exactly one [MASK].

One deliberate difference: for models whose positions start after a padding index (RoBERTa), the
template pass starts its positions there too, as the filled row does; the reference counts from 0
for every model (the same for BERT).

Inference follows the reference's test protocol (``evaluation.py``'s batcher): a sentence that does not
end in one of ``.?"'`` gets a period before it fills the template (``end_with_period``, on by default;
the reference's training data and its dev evaluation during training leave sentences as they are, and
so does csekit's training data, while every ``encode`` call, the trainer's dev evaluation included,
follows the test protocol, so a saved model is evaluated the way it was selected).

No stock sentence-transformers module wraps a sentence in a template or pools at its [MASK] token,
so a saved prompt model names csekit's input module (:mod:`csekit.models.st_module`) in its
``modules.json``: ``SentenceTransformer(path, trust_remote_code=True)`` computes the same embeddings
wherever csekit is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from csekit.data.collate import pad_batch
from csekit.errors import CsekitError
from csekit.models.pooling import Pooler, masked_mean, register_pooler

SENTENCE, MASK = "[X]", "[MASK]"
#: The paper's best manual template for BERT (Sec. 4.2, manual search; reference ``run.sh bert-prompt``).
DEFAULT_TEMPLATE = 'This sentence : "[X]" means [MASK] .'


@dataclass(frozen=True)
class Prompt:
    """A template bound to a tokenizer: each row is ``head + sentence + tail`` token ids."""

    template: str
    head: tuple[int, ...]  # start special tokens + the template's tokens before [X]
    tail: tuple[int, ...]  # the template's tokens after [X] + end special tokens
    mask_token_id: int

    @classmethod
    def from_template(cls, template: str, tokenizer: PreTrainedTokenizerBase) -> Prompt:
        """``template`` holds ``[X]`` (the sentence) and ``[MASK]`` (read off as the embedding) once each."""
        if template.count(SENTENCE) != 1 or template.count(MASK) != 1:
            raise CsekitError(f"template {template!r} must contain {SENTENCE} (the sentence) and {MASK} once each")
        if tokenizer.mask_token_id is None:
            raise CsekitError("the tokenizer has no mask token; a prompt needs a masked-language-model tokenizer")
        before, after = template.split(SENTENCE)
        start, end = _special_tokens(tokenizer)
        head = start + _tokens(tokenizer, before)
        tail = _tokens(tokenizer, after) + end
        return cls(template, tuple(head), tuple(tail), tokenizer.mask_token_id)

    @classmethod
    def from_dict(cls, values: dict[str, Any], tokenizer: PreTrainedTokenizerBase) -> Prompt:
        return cls.from_template(values["template"], tokenizer)

    def to_dict(self) -> dict[str, Any]:
        return {"template": self.template}

    @property
    def length(self) -> int:
        """Tokens the template adds to each sentence (special tokens included)."""
        return len(self.head) + len(self.tail)

    # ------------------------------------------------------------------ tokens
    def tokenize(
        self, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *, max_length: int, fields: Sequence[str]
    ) -> dict[str, list[list[int]]]:
        """Unpadded rows ``head + sentence + tail`` of at most ``max_length`` tokens; only the sentence is cut."""
        budget = max_length - self.length
        if budget < 1:
            raise CsekitError(f"max_length {max_length} leaves no room for a sentence: the template "
                              f"{self.template!r} alone takes {self.length} tokens")  # fmt: skip
        # split_special_tokens: a literal "[MASK]" in a sentence is text, never a second [MASK].
        sentences = tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=budget,
                              split_special_tokens=True)["input_ids"]  # fmt: skip
        rows = [[*self.head, *sentence, *self.tail] for sentence in sentences]
        encoded = {"input_ids": rows, "attention_mask": [[1] * len(row) for row in rows],
                   "token_type_ids": [[0] * len(row) for row in rows]}  # fmt: skip
        return {field: encoded[field] for field in fields}

    def sentence_lengths(self, attention_mask: Tensor) -> Tensor:
        """(B, T) attention mask of wrapped rows -> (B,) sentence tokens per row (the reference's ``blen``)."""
        return attention_mask.sum(dim=1) - self.length

    def mask_positions(self, input_ids: Tensor) -> Tensor:
        """(B, T) wrapped ids -> (B, T) bool, True at each row's [MASK]."""
        is_mask = input_ids == self.mask_token_id  # (B, T)
        if not bool((is_mask.sum(dim=1) == 1).all()):
            raise CsekitError("the mask poolers need every row wrapped in the prompt (one [MASK] each): "
                              "tokenize with SentenceEncoder.tokenize")  # fmt: skip
        return is_mask

    def rewrap(self, batch: dict[str, Tensor], other: Prompt, pad_token_id: int) -> dict[str, Tensor]:
        """Rows wrapped in this prompt -> the same sentences wrapped in ``other`` (padded, same fields)."""
        lengths = self.sentence_lengths(batch["attention_mask"]).tolist()
        rows = []
        for ids, length in zip(batch["input_ids"].tolist(), lengths):
            sentence = ids[len(self.head) : len(self.head) + length]
            row = [*other.head, *sentence, *other.tail]
            rows.append({"input_ids": row, "attention_mask": [1] * len(row), "token_type_ids": [0] * len(row)})
        padded = pad_batch([{field: row[field] for field in batch} for row in rows], pad_token_id)  # (B, T')
        return {field: value.to(batch["input_ids"].device) for field, value in padded.items()}

    # ------------------------------------------------------------------ states
    def pool(
        self, backbone: nn.Module, last_hidden: Tensor, input_ids: Tensor, attention_mask: Tensor, *, denoise: bool
    ) -> Tensor:
        """(B, T, H) last layer of wrapped rows -> (B, H) [MASK] states, minus the template's if ``denoise``."""
        # One [MASK] per row, so the masked mean is that token's state exactly (x * 1 + 0 + ... = x).
        embeddings = masked_mean(last_hidden, self.mask_positions(input_ids))  # (B, H)
        if denoise:
            embeddings = embeddings - self.template_states(backbone, self.sentence_lengths(attention_mask))
        return embeddings

    def template_states(self, backbone: nn.Module, sentence_lengths: Tensor) -> Tensor:
        """(B,) sentence lengths -> (B, H): the template's own [MASK] state, positioned for each length."""
        lengths, row_of = torch.unique(sentence_lengths, return_inverse=True)  # (K,), (B,)
        device = sentence_lengths.device
        template = torch.tensor([*self.head, *self.tail], device=device)  # (L,)
        ids = template.expand(len(lengths), -1)  # (K, L)
        columns = torch.arange(len(template), device=device)  # (L,)
        # The filled row puts the sentence between head and tail: the tail's positions move right by its length.
        after_sentence = (columns >= len(self.head)).long()  # (L,)
        positions = _first_position(backbone) + columns + after_sentence * lengths[:, None]  # (K, L)
        outputs = backbone(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=positions, return_dict=True)
        last_hidden = outputs.last_hidden_state  # (K, L, H)
        mask_column = [*self.head, *self.tail].index(self.mask_token_id)
        return last_hidden[:, mask_column][row_of]  # (K, H) -> (B, H)


#: The end of a sentence that PromptBERT's test protocol leaves as it is (else it appends a period).
SENTENCE_ENDS = ".?\"'"


@register_pooler
class MaskPooler(Pooler):
    """The [MASK] state of a template around the sentence (``template``); ``end_with_period``: the test
    protocol's period at inference."""

    name = "mask"
    #: Subtract the template's own [MASK] state (``mask_denoised``).
    denoise: ClassVar[bool] = False

    def __init__(self, prompt: Prompt, *, end_with_period: bool = True):
        super().__init__()
        self.prompt = prompt
        self.end_with_period = bool(end_with_period)

    @classmethod
    def create(cls, settings, *, config, tokenizer) -> MaskPooler:
        settings = dict(settings)
        template = settings.pop("template", DEFAULT_TEMPLATE)
        unknown = sorted(set(settings) - {"end_with_period"})
        if unknown:
            raise CsekitError(f"pooler {cls.name!r} has no setting(s) {', '.join(unknown)}; it takes template, "
                              "end_with_period")  # fmt: skip
        return cls(Prompt.from_template(template, tokenizer), **settings)

    def config(self) -> dict[str, Any]:
        return {**self.prompt.to_dict(), "end_with_period": self.end_with_period}

    def tokenize(self, tokenizer, texts, *, max_length, fields):
        return self.prompt.tokenize(tokenizer, texts, max_length=max_length, fields=fields)

    def inference_texts(self, texts: Sequence[str]) -> list[str]:
        if not self.end_with_period:
            return list(texts)
        return [text if not text or text[-1] in SENTENCE_ENDS else text + "." for text in texts]

    def forward(self, outputs, inputs, backbone: nn.Module) -> Tensor:
        return self.prompt.pool(backbone, outputs.last_hidden_state, inputs["input_ids"], inputs["attention_mask"],
                                denoise=self.denoise)  # fmt: skip


@register_pooler
class DenoisedMaskPooler(MaskPooler):
    """The [MASK] state minus the template's own (PromptBERT's template denoising)."""

    name = "mask_denoised"
    denoise = True


def _tokens(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Ids of a piece of template text, with ``[MASK]`` as the tokenizer's mask token."""
    ids: list[int] = []
    for index, part in enumerate(text.split(MASK)):
        if index:
            ids.append(tokenizer.mask_token_id)
        if part.strip():
            ids += tokenizer(part, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return ids


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The ids the tokenizer puts before and after a text ([CLS] and [SEP] for BERT)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    raise CsekitError(f"cannot tell where {type(tokenizer).__name__} puts its special tokens")


def _first_position(backbone: nn.Module) -> int:
    """The position id of a row's first token: 0, or padding index + 1 for RoBERTa-style embeddings."""
    padding_idx = getattr(getattr(backbone, "embeddings", None), "padding_idx", None)
    return 0 if padding_idx is None else padding_idx + 1
