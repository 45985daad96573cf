"""Echo embeddings: the sentence twice, pooled over the second copy only.

Springer et al. 2024, "Repetition Improves Language Model Embeddings", Sec. 3; reference code
jakespringer/echo-embeddings (``echo_embeddings.py``: ``EchoParser``, ``EchoPooling``). A causal LM's token
sees only what comes before it; in the second copy of the sentence every token has already read the whole
sentence once. The embedding is the mean (``strategy="mean"``) or the last (``"last"``) of the last layer's
states over the second copy's tokens (the reference's ``embed_mask``; ``layer`` picks another layer).

The default template is the paper's zero-shot prompt, ``Rewrite the sentence: x, rewritten sentence: x``
(Sec. 3.1), written with the sentence placeholder ``*sent 0*``. The reference code's templates for its
fine-tuned models (``<s>Document:{!%%text%%}\\nDocument again:{%%text%%}{</s>}``) are given the same way,
e.g. ``template="Document:*sent 0*\\nDocument again:*sent 0*"``; there the reference also pools the closing
``</s>``, which this pooler does not add.

One departure: the reference tokenizes each piece of its template on its own and concatenates the ids;
here the filled text is tokenized whole (as PromptEOL's reference does) and the pooled tokens are those whose
characters overlap the second copy (``offset_mapping``, so a fast tokenizer is needed). Rows mark the pooled
tokens with 1 in ``token_type_ids``, a field decoders do not read. A row longer than ``max_length`` loses the
end of its sentence, in both copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from csekit.errors import CsekitError
from csekit.models.eol import SENTENCE, check_template, filled_rows
from csekit.models.pooling import LayerChoice, last_token_states, layer_states, masked_mean, register_pooler

#: The paper's zero-shot echo prompt (Sec. 3.1).
ECHO_TEMPLATE = "Rewrite the sentence: *sent 0*, rewritten sentence: *sent 0*"
STRATEGIES = ("mean", "last")


@register_pooler
class EchoPooler(LayerChoice):
    name = "echo"
    for_decoders = True
    input_fields = ("token_type_ids",)

    def __init__(self, *, template: str = ECHO_TEMPLATE, strategy: str = "mean", layer: int = -1):
        super().__init__(layer=layer)
        self.template = check_template(template, copies=2)
        if strategy not in STRATEGIES:
            raise CsekitError(f"echo strategy {strategy!r} is not one of {', '.join(STRATEGIES)}")
        self.strategy = strategy

    def config(self) -> dict[str, Any]:
        return {"template": self.template, "strategy": self.strategy, "layer": self.layer}

    def tokenize(self, tokenizer, texts: Sequence[str], *, max_length: int, fields) -> dict[str, list]:
        if not getattr(tokenizer, "is_fast", False):
            raise CsekitError("the echo pooler finds the second copy's tokens by their character offsets, which only "
                              "a fast (Rust) tokenizer gives")  # fmt: skip
        rows = {"input_ids": [], "attention_mask": [], "token_type_ids": []}
        for ids, offsets, filled in filled_rows(tokenizer, self.template, texts, max_length=max_length, offsets=True):
            start, end = self._second_copy(filled)
            # A token belongs to the copy when its characters overlap it (a leading space may join its first word).
            pooled = [int(stop > start and begin < end and stop > begin) for begin, stop in offsets]
            if not any(pooled):  # an empty sentence: its last template token stands in
                pooled[-1] = 1
            rows["input_ids"].append(ids)
            rows["attention_mask"].append([1] * len(ids))
            rows["token_type_ids"].append(pooled)
        return rows

    def _second_copy(self, filled: str) -> tuple[int, int]:
        """Character span of the second copy in the filled template (found from the template's own text)."""
        before, middle, after = self.template.split(SENTENCE)
        prefix = before.lstrip()  # fill() strips the filled text
        length = (len(filled) - len(prefix) - len(middle) - len(after.rstrip())) // 2
        start = len(prefix) + length + len(middle)
        return start, start + length

    def forward(self, outputs, inputs, backbone: nn.Module) -> Tensor:
        states = layer_states(outputs, self.layer)  # (B, T, H)
        pooled = inputs["attention_mask"] * inputs["token_type_ids"]  # (B, T): 1 on the second copy's tokens
        if self.strategy == "mean":
            return masked_mean(states, pooled)  # (B, H)
        return last_token_states(states, pooled)  # (B, H)
