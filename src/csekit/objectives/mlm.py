"""Masked-LM auxiliary loss over the encoder's own backbone (SimCSE's ``do_mlm``; BERT's 15%, 80/10/10).

The loss is returned per example (sum of token losses, number of masked tokens), so it is a row-wise
"embedding" like any other: the gradient cache can slice and concatenate it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import AutoModelForMaskedLM, PreTrainedModel

from csekit.errors import CsekitError
from csekit.models.encoder import SentenceEncoder, _quiet_transformers, check_model_reference


class MaskedLMHead(nn.Module):
    def __init__(self, head: nn.Module, *, probability: float = 0.15):
        super().__init__()
        self.head = head
        self.probability = probability

    @classmethod
    def from_pretrained(cls, name_or_path: str, encoder: SentenceEncoder, *, probability: float = 0.15) -> MaskedLMHead:
        """The checkpoint's MLM head, with its decoder tied to the encoder's word embeddings."""
        masked_lm = AutoModelForMaskedLM.from_pretrained(name_or_path)
        heads = [module for name, module in masked_lm.named_children() if name != masked_lm.base_model_prefix]
        if len(heads) != 1:
            raise ValueError(f"cannot find the MLM head of {name_or_path}")
        masked_lm.get_output_embeddings().weight = encoder.backbone.get_input_embeddings().weight
        return cls(heads[0], probability=probability)

    def per_example_loss(self, encoder: SentenceEncoder, tokens: dict[str, Tensor]) -> dict[str, Tensor]:
        input_ids, labels = self.mask(tokens["input_ids"], tokens["attention_mask"], encoder.tokenizer)
        hidden = encoder.backbone(**{**tokens, "input_ids": input_ids}).last_hidden_state  # (B, T, H)
        logits = self.head(hidden)  # (B, T, V)
        token_loss = nn.functional.cross_entropy(logits.transpose(1, 2).float(), labels, reduction="none")  # (B, T)
        return {"mlm_sum": token_loss.sum(dim=1), "mlm_count": (labels != -100).sum(dim=1).to(token_loss.dtype)}

    @staticmethod
    def reduce(embeddings: dict[str, Tensor]) -> Tensor:
        return embeddings["mlm_sum"].sum() / embeddings["mlm_count"].sum().clamp(min=1)

    def mask(self, input_ids: Tensor, attention_mask: Tensor, tokenizer) -> tuple[Tensor, Tensor]:
        return mask_tokens(input_ids, attention_mask, tokenizer, probability=self.probability)


def mask_tokens(input_ids: Tensor, attention_mask: Tensor, tokenizer, *, probability: float) -> tuple[Tensor, Tensor]:
    """BERT's masking: choose ``probability`` of the real, non-special tokens; 80% [MASK], 10% random, 10% kept.

    (B, T) ids -> (B, T) masked ids and (B, T) labels (the original id where chosen, -100 elsewhere).
    """
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for token_id in tokenizer.all_special_ids:
        special |= input_ids == token_id
    candidates = attention_mask.bool() & ~special
    chosen = (torch.rand(input_ids.shape, device=input_ids.device) < probability) & candidates
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, -100))
    draw = torch.rand(input_ids.shape, device=input_ids.device)
    masked = input_ids.clone()
    masked[chosen & (draw < 0.8)] = tokenizer.mask_token_id
    random_tokens = torch.randint(len(tokenizer), input_ids.shape, device=input_ids.device)
    replace = chosen & (draw >= 0.8) & (draw < 0.9)
    masked[replace] = random_tokens[replace]
    return masked, labels


def load_masked_lm(name_or_path: str) -> PreTrainedModel:
    """A pretrained masked LM (a local folder or a hub id); a checkpoint without MLM-head weights is refused."""
    check_model_reference(name_or_path)
    try:
        with _quiet_transformers():  # a refused checkpoint gets one clear error, not a load report
            masked_lm, info = AutoModelForMaskedLM.from_pretrained(name_or_path, output_loading_info=True)
    except (OSError, ValueError) as error:
        raise CsekitError(f"cannot load masked LM {name_or_path!r}: {str(error).strip().splitlines()[0]}") from None
    prefix = masked_lm.base_model_prefix + "."
    untrained = sorted(key for key in info.get("missing_keys", []) if not key.startswith(prefix))
    if untrained:
        raise CsekitError(f"{name_or_path!r} has no pretrained masked-LM head (missing {untrained[0]}); "
                          "give a checkpoint saved with its MLM head")  # fmt: skip
    return masked_lm
