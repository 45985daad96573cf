"""Ditto: diagonal attention pooling, a training-free pooler.

Chen et al., "Ditto: A Simple and Efficient Approach to Improve Sentence Embeddings", EMNLP 2023
(arXiv:2305.10786; reference code: github.com/alibaba-damo-academy/SpokenNLP, ``ditto/evaluation_ditto.py``,
pooler ``att_first_last``, run by ``ditto/run_eval_ditto.sh``). Each token is weighted by how much it
attends to itself in one attention head, the diagonal of that head's attention matrix:

    w_t = A^(layer, head)[t, t]                          A: softmax attention probabilities (T, T)
    s   = sum_t  mask_t * w_t * (h^(0)_t + h^(L)_t) / 2   h^(0): embedding output, h^(L): last layer

As in the reference, the weights are not renormalised to sum to one (cosine similarity, the STS score,
is unchanged by a per-sentence scale), and "first" is ``hidden_states[0]``, the embedding layer's
output (csekit's ``first_last_avg`` pooler uses ``hidden_states[1]``, as SimCSE's evaluation does).
``layers`` chooses which hidden states are averaged; ``(0, L)`` is the reference's choice, ``(L,)`` its
``att_last``.

``layer`` indexes the transformer blocks' attentions from 0 (the reference's ``--layer``, i.e.
``outputs.attentions[layer]``); ``head`` the heads of that block from 0. The reference's settings:
BERT-base layer 0 head 9, RoBERTa-base 0/4, ELECTRA-base 0/10, SBERT (bert-base-nli-stsb-mean-tokens)
2/6. For other models choose them on a development set (``benchmarks/postprocess.py`` searches every
layer and head on STS-B dev).

The attention probabilities exist only in the eager attention implementation, so the backbone is
switched to it; the other implementations compute the same states. No stock sentence-transformers
module passes attention weights on, so a saved Ditto model names csekit's input module
(:mod:`csekit.models.st_module`) and loads in ``SentenceTransformer(path, trust_remote_code=True)``
wherever csekit is installed.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from csekit.errors import CsekitError
from csekit.models.pooling import Pooler, mean_of_layers
from csekit.postprocess.layers import parse_layers

#: The reference's setting for bert-base-uncased (``run_eval_ditto.sh``).
DEFAULT_LAYER, DEFAULT_HEAD = 0, 9


def diagonal_attention(attentions: Sequence[Tensor], *, layer: int, head: int) -> Tensor:
    """Each token's attention to itself in one head: (B, T)."""
    probabilities = attentions[layer][:, head]  # (B, heads, T, T) -> (B, T, T)
    return probabilities.diagonal(dim1=1, dim2=2)  # (B, T)


def ditto_pool(
    hidden_states: Sequence[Tensor],
    attentions: Sequence[Tensor],
    attention_mask: Tensor,
    *,
    layer: int,
    head: int,
    layers: Sequence[int],
) -> Tensor:
    """(B, H) sentence embeddings: token states weighted by their diagonal attention and summed."""
    weights = diagonal_attention(attentions, layer=layer, head=head)  # (B, T)
    states = mean_of_layers(hidden_states, layers)  # (B, T, H)
    weights = weights * attention_mask.to(weights.dtype)  # (B, T): padding contributes nothing
    return (states * weights.unsqueeze(-1)).sum(dim=1)  # (B, H)


class DittoPooler(Pooler):
    """Ditto's pooler: ``layer`` and ``head`` choose the attention whose diagonal weighs the tokens of the
    average of ``layers`` (default: the embedding output and the last layer)."""

    name = "ditto"
    needs_hidden_states = True
    needs_attentions = True

    def __init__(self, *, layer: int = DEFAULT_LAYER, head: int = DEFAULT_HEAD, layers: Sequence[int]):
        super().__init__()
        self.layer, self.head, self.layers = int(layer), int(head), tuple(int(i) for i in layers)

    @classmethod
    def create(cls, settings, *, config, tokenizer) -> DittoPooler:
        settings = {"layers": (0, config.num_hidden_layers), **settings}  # the reference's first + last
        return super().create(settings, config=config, tokenizer=tokenizer)

    def check(self, config) -> None:
        """Refuse a layer, head or hidden-state layer the model does not have."""
        blocks, heads = config.num_hidden_layers, config.num_attention_heads
        if not 0 <= self.layer < blocks:
            raise CsekitError(f"Ditto layer {self.layer} out of range: this model's attention layers are 0..{blocks - 1}")
        if not 0 <= self.head < heads:
            raise CsekitError(f"Ditto head {self.head} out of range: this model's heads are 0..{heads - 1}")
        parse_layers(self.layers, num_layers=blocks)

    def config(self) -> dict:
        return {"layer": self.layer, "head": self.head, "layers": list(self.layers)}

    def forward(self, outputs, inputs, backbone) -> Tensor:
        if not outputs.attentions:
            raise RuntimeError("the backbone returned no attention probabilities; Ditto needs eager attention")
        return ditto_pool(outputs.hidden_states, outputs.attentions, inputs["attention_mask"],
                          layer=self.layer, head=self.head, layers=self.layers)  # fmt: skip
