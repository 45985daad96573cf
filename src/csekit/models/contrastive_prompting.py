"""Contrastive Prompting: steer the main prompt's last token away from an auxiliary prompt's.

Cheng et al. 2025, "Contrastive Prompting Enhances Sentence Embeddings in LLMs through Inference-Time
Steering" (ACL 2025), Sec. 3; reference code zifengcheng/CP (``evaluate_intervention.py``,
``activation_intervention/__init__.py``). Two prompts around the same sentence:

- the normal prompt, PromptEOL's ``This sentence : "*sent 0*" means in one word:"``;
- the auxiliary prompt, ``The irrelevant information of this sentence : "*sent 0*" means in one word:"``,
  which leads the model to encode the sentence's non-essential information.

The auxiliary prompt runs first; at block ``steer_layer`` the input of the attention output projection
(``self_attn.o_proj``, the heads' concatenated outputs) at its last token is ``B``. The normal prompt then
runs with that input at its own last token replaced by ``coefficient * (A - B)`` (the reference's ``scaled``
plan, ``--intervention_plan scaled --intervention_location att_head``: ``A_new = C * (A - B)``), and the
embedding is its last token's state at ``hidden_states[output_layer]``. Defaults are the paper's setting
for LLaMA-2-7B (``run_intervention_eval.sh``: ``--output_layer 27 --act_layer 4 --coeff 0.5``); its
LLaMA-3-8B setting is ``output_layer=-2, steer_layer=6, coefficient=0.25``. The reference stops the
auxiliary pass after the steering block (``exit_layer``), as this pooler does; its other plans (``norm``,
``scaled_norm``, per-head norms) and intervention places (MLP, whole block) are not offered.

Text and tokens are PromptEOL's (:mod:`csekit.models.eol`: the reference batcher's clean-up at inference,
each filled prompt tokenized whole). A row holds both filled prompts, marked 0 and 1 in ``token_type_ids``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor, nn

from csekit.errors import CsekitError
from csekit.models.decoder import decoder_layers
from csekit.models.eol import PROMPTEOL_TEMPLATE, EOLPooler, check_template, filled_rows, segmented, split_segments
from csekit.models.pooling import check_layer, last_token_states, layer_states, register_pooler

#: The paper's auxiliary prompt (reference ``negative_prompt``).
AUXILIARY_TEMPLATE = 'The irrelevant information of this sentence : "*sent 0*" means in one word:"'


class _Captured(Exception):
    """Stops the auxiliary pass once the steering block's activation is read."""


@register_pooler
class ContrastivePromptingPooler(EOLPooler):
    name = "contrastive_prompting"
    input_fields = ("token_type_ids",)
    runs_backbone = True
    needs_hidden_states = True

    def __init__(self, *, template: str = PROMPTEOL_TEMPLATE, auxiliary_template: str = AUXILIARY_TEMPLATE,
                 steer_layer: int = 4, output_layer: int = 27, coefficient: float = 0.5,
                 clean_sentences: bool = True):  # fmt: skip
        super().__init__(layer=output_layer, clean_sentences=clean_sentences)
        self.template, self.auxiliary_template = check_template(template), check_template(auxiliary_template)
        self.steer_layer, self.coefficient = int(steer_layer), float(coefficient)
        self.needs_hidden_states = True

    def check(self, config) -> None:
        check_layer(self.layer, config.num_hidden_layers, "output_layer")
        if not 0 <= self.steer_layer < config.num_hidden_layers:
            raise CsekitError(f"steer_layer {self.steer_layer} is out of range: the model has blocks "
                              f"0..{config.num_hidden_layers - 1}")  # fmt: skip

    def config(self) -> dict[str, Any]:
        return {"template": self.template, "auxiliary_template": self.auxiliary_template, "steer_layer": self.steer_layer,
                "output_layer": self.layer, "coefficient": self.coefficient, "clean_sentences": self.clean_sentences}  # fmt: skip

    def tokenize(self, tokenizer, texts, *, max_length, fields):
        return segmented([filled_rows(tokenizer, template, texts, max_length=max_length)
                          for template in (self.template, self.auxiliary_template)])  # fmt: skip

    def embed(self, backbone: nn.Module, run: Callable, inputs: Mapping[str, Tensor]) -> Tensor:
        main, auxiliary = split_segments(inputs, 2)  # (B, T), (B, T'), left-padded: the last column is the last token
        projection = self._projection(backbone)
        captured: list[Tensor] = []

        def capture(module, args):
            captured.append(args[0][:, -1])  # (B, D): the heads' outputs at the auxiliary prompt's last token
            raise _Captured

        handle = projection.register_forward_pre_hook(capture)
        try:
            run(auxiliary, output_hidden_states=False)
        except _Captured:
            pass
        finally:
            handle.remove()

        def steer(module, args):
            heads = args[0].clone()  # (B, T, D)
            heads[:, -1] = self.coefficient * (heads[:, -1] - captured[0])
            return (heads, *args[1:])

        handle = projection.register_forward_pre_hook(steer)
        try:
            outputs, moved = run(main, output_hidden_states=True)
        finally:
            handle.remove()
        return last_token_states(layer_states(outputs, self.layer), moved["attention_mask"])  # (B, H)

    def _projection(self, backbone: nn.Module) -> nn.Module:
        block = decoder_layers(backbone)[self.steer_layer]
        projection = getattr(getattr(block, "self_attn", None), "o_proj", None)
        if not isinstance(projection, nn.Module):
            raise CsekitError(f"contrastive prompting steers the input of self_attn.o_proj, which {type(block).__name__} "
                              "lacks (Llama, Mistral, Qwen and similar decoders have it)")  # fmt: skip
        return projection
