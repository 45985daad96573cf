"""The auxiliary masked-LM loss as a wrapper over any objective (SimCSE's ``do_mlm``, Gao et al. 2021, Appendix).

``MaskedLMAuxiliary(objective)`` adds ``weight`` times a masked-LM loss to the objective's terms, as the
reference does it (``simcse/models.py::cl_forward``, ``train.py``'s collator and model loading):

- every sentence of the forward pass gets its own masked copy: the collator masks the flattened batch of
  ``num_sent`` views, so unsupervised SimCSE's two dropout copies are two independently masked copies of
  the anchor, and supervised SimCSE masks anchor, positive and hard negative (csekit reads the views from
  the objective's ``views``); BERT's masking, ``probability`` of the real non-special tokens, 80% [MASK],
  10% a random token, 10% kept;
- the masked copies go through the encoder's own backbone (with dropout), and the predictions come from
  the objective's *own* copy of the checkpoint's pretrained MLM head (``lm_head.load_state_dict(
  pretrained.cls.predictions.state_dict())``), not tied to the word embeddings: it trains on its own;
- one cross-entropy mean over all masked tokens of the batch; ``weight`` 0.1 in the paper's runs.

The head comes from the starting model through the checked loader: a checkpoint without pretrained MLM
weights (a sentence-transformers model such as all-MiniLM-L6-v2) is refused rather than given a random head.
The cross-entropy runs in float32 at least (float64 in a float64 run), as the reference's does under AMP.

Options that keep csekit's earlier form: ``sentences="anchors"`` masks the anchors (``sent0``) only,
``tie_decoder=True`` ties the head's decoder to the encoder's word embeddings.

The loss is returned per example (sum of token losses, number of masked tokens, over the example's views),
so it is a row-wise "embedding" like any other: the gradient cache can slice and concatenate it.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from transformers import AutoModelForMaskedLM, PreTrainedModel

from csekit.data.batches import Batch
from csekit.data.collate import concat_fields
from csekit.errors import CsekitError
from csekit.models.encoder import SentenceEncoder, check_model_reference, first_line, quiet_transformers
from csekit.objectives.base import Embeddings, Objective, ObjectiveWrapper, RunContext

SENTENCES = ("views", "anchors")


class MaskedLMAuxiliary(ObjectiveWrapper):
    def __init__(self, inner: Objective, encoder: SentenceEncoder, context: RunContext, *, weight: float = 0.1,
                 probability: float = 0.15, sentences: str = "views", tie_decoder: bool = False):  # fmt: skip
        super().__init__(inner)
        if weight < 0 or not 0 < probability <= 1:
            raise CsekitError(f"mlm: weight must be >= 0 and probability in (0, 1], got {weight} and {probability}")
        if sentences not in SENTENCES:
            raise CsekitError(f"mlm: sentences must be one of {', '.join(SENTENCES)}, not {sentences!r}")
        self.weight, self.probability = weight, probability
        self.masked_views = inner.views if sentences == "views" else ("sent0",)
        self.head = pretrained_mlm_head(context.model, encoder, tie_decoder=tie_decoder)

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        embeddings = self.inner.embed(encoder, batch)
        size = batch[self.masked_views[0]]["input_ids"].shape[0]
        tokens = concat_fields([batch[column] for column in self.masked_views], encoder.pad_token_id)  # (V * B, T)
        token_loss, masked = self.token_losses(encoder, tokens)  # (V * B, T) each
        views = len(self.masked_views)
        sums = token_loss.sum(dim=1).view(views, size).sum(dim=0)  # (B,): all views of example i
        counts = masked.sum(dim=1).view(views, size).sum(dim=0).to(sums.dtype)  # (B,)
        return {**embeddings, "mlm_sum": sums, "mlm_count": counts}

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        terms = self.inner.loss(embeddings, batch)
        mlm = embeddings["mlm_sum"].sum() / embeddings["mlm_count"].sum().clamp(min=1)  # mean over masked tokens
        return {**terms, "mlm": self.weight * mlm}

    def token_losses(self, encoder: SentenceEncoder, tokens: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(N, T) tokens -> (N, T) cross-entropy at each masked position (0 elsewhere), (N, T) masked."""
        input_ids, labels = mask_tokens(tokens["input_ids"], tokens["attention_mask"], encoder.tokenizer,
                                        probability=self.probability)  # fmt: skip
        hidden = encoder.backbone(**{**tokens, "input_ids": input_ids}).last_hidden_state  # (N, T, H)
        logits = self.head(hidden)  # (N, T, V)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        token_loss = nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # (N, T)
        return token_loss, labels != -100


def pretrained_mlm_head(name_or_path: str, encoder: SentenceEncoder, *, tie_decoder: bool = False) -> nn.Module:
    """A copy of the checkpoint's pretrained MLM head (its own weights), or tied to ``encoder``'s word embeddings."""
    masked_lm = load_masked_lm(name_or_path)
    heads = [module for name, module in masked_lm.named_children() if name != masked_lm.base_model_prefix]
    if len(heads) != 1:
        raise CsekitError(f"mlm: cannot tell the MLM head of {name_or_path!r} from its backbone")
    if not tie_decoder:
        return copy.deepcopy(heads[0])  # own parameters: the decoder no longer shares the word embeddings
    masked_lm.get_output_embeddings().weight = encoder.backbone.get_input_embeddings().weight
    return heads[0]


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
    if not name_or_path:
        raise CsekitError("a masked-LM head needs the starting model's checkpoint; no model is given")
    check_model_reference(name_or_path)
    try:
        with quiet_transformers():  # a refused checkpoint gets one clear error, not a load report
            masked_lm, info = AutoModelForMaskedLM.from_pretrained(name_or_path, output_loading_info=True)
    except (OSError, ValueError) as error:
        raise CsekitError(f"cannot load masked LM {name_or_path!r}: {first_line(error)}") from None
    prefix = masked_lm.base_model_prefix + "."
    untrained = sorted(key for key in info.get("missing_keys", []) if not key.startswith(prefix))
    if untrained:
        raise CsekitError(f"{name_or_path!r} has no pretrained masked-LM head (missing {untrained[0]}); "
                          "give a checkpoint saved with its MLM head")  # fmt: skip
    return masked_lm
