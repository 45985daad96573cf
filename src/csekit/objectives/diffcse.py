"""DiffCSE (Chuang et al., NAACL 2022, "DiffCSE: Difference-based Contrastive Learning for Sentence Embeddings").

Sec. 3: the loss is ``L = L_contrast + lambda * L_RTD``. ``L_contrast`` is unsupervised SimCSE (two dropout
views, InfoNCE, temperature 0.05). ``L_RTD`` is *conditional* replaced-token detection: a frozen masked
LM (the generator) fills a masked copy of each sentence, and a discriminator, told the sentence
embedding h, predicts for every token whether the edited sentence differs from the original there.
Details follow the reference code (github.com/voidism/DiffCSE, ``diffcse/models.py::cl_forward``,
``train.py``, ``modeling_bert.py``):

- Each of the 2B dropout views conditions its own masked copy (the collator masks the stacked
  batch: BERT's 80/10/10 masking at ``masking_ratio``). The generator runs without gradient and its
  **argmax** at **every** position is the edited sentence; a token it predicts as the original
  counts as not replaced (as in ELECTRA). Position 0 is forced back to [CLS], padding stays padding.
- h is the view's embedding after the training head, **not detached**: L_RTD trains the encoder.
  It replaces the output of the discriminator's embedding layer at position 0 (``cls_input`` in
  the reference's patched ``BertModel``).
- The discriminator is a second copy of the starting encoder (the reference loads the same
  pretrained weights into it), trained jointly, with a fresh ``Linear(H, 2)`` head and a 2-class
  cross-entropy averaged over all 2B x T positions of the padded batch, padding included.
- ``batchnorm``: the reference's ``--batchnorm`` replaces the ``cls`` pooler's dense + tanh head by
  ``ProjectionMLP`` (Linear H->2H, BN, ReLU, Linear 2H->H, BN without affine; no biases), used in
  training only (``--mlp_only_train``; the saved model is [CLS], as the README evaluates it).
  The objective installs it as the encoder's head, so it trains and is checkpointed with the encoder.

Options: ``generator`` (a masked LM sharing the encoder's vocabulary, a frozen helper; default: the
starting model), ``lambda_weight``, ``masking_ratio``, ``batchnorm``. The gradient cache works through
per-example RTD sums, except with ``batchnorm`` (its statistics would be per chunk).

Where csekit differs: the generator stays in eval mode (the reference's runs with dropout, being a
submodule of the trained model); with several ranks the projector's batch statistics cover the
global batch (the reference's ``BatchNorm1d`` under DDP would use each rank's), so W ranks train
like one process with the whole batch; the RTD mean is per rank, as in the reference.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from csekit.distributed import all_gather_with_grad
from csekit.errors import CsekitError
from csekit.losses import info_nce
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.frozen import FrozenHelper
from csekit.objectives.mlm import load_masked_lm, mask_tokens


class DiffCSE(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    views: ClassVar[tuple[str, ...]] = ("sent0", "sent0")
    sentence_keys: ClassVar[tuple[str, ...]] = ("view1", "view2")

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05,
                 lambda_weight: float = 0.005, masking_ratio: float = 0.30, generator: str = "",
                 batchnorm: bool = False):  # fmt: skip
        super().__init__()
        if not 0.0 < masking_ratio <= 1.0:
            raise CsekitError(f"options.masking_ratio must be in (0, 1], got {masking_ratio}")
        if lambda_weight < 0:
            raise CsekitError(f"options.lambda_weight must be >= 0, got {lambda_weight}")
        self.temperature, self.lambda_weight, self.masking_ratio = temperature, lambda_weight, masking_ratio
        reference = generator or context.model
        self.generator = FrozenHelper(_load_generator(reference, encoder), reference=reference, role="generator")
        self.discriminator = copy.deepcopy(encoder.backbone)  # the starting encoder's pretrained weights
        if not isinstance(getattr(self.discriminator, "embeddings", None), nn.Module):
            kind = type(encoder.backbone).__name__
            raise CsekitError(f"diffcse needs a backbone with an `embeddings` module, not {kind}")
        self.rtd_head = nn.Linear(encoder.embedding_dim, 2)  # PyTorch's default init, as the reference's
        if batchnorm:
            _install_projector(encoder)
        # The RTD term reaches the loss through embed() (per-example sums), but the projector's batch
        # statistics would be computed per chunk instead of over the batch.
        self.supports_grad_cache = not batchnorm

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        sentences = batch["sent0"]
        size = sentences["input_ids"].shape[0]
        twice = {key: torch.cat([value, value]) for key, value in sentences.items()}  # (2B, T)
        views = encoder(**twice)  # (2B, H): two dropout views, after the training head
        token_loss = self.rtd_token_loss(views, twice, encoder.tokenizer)  # (2B, T)
        per_row = token_loss.sum(dim=1).view(2, size).sum(dim=0)  # (B,): both copies of sentence i
        count = torch.full_like(per_row, 2 * token_loss.shape[1])  # (B,): every position counts
        return {"view1": views[:size], "view2": views[size:], "rtd_sum": per_row, "rtd_count": count}

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        # RTD is a mean over this rank's tokens, as in the reference; the trainer averages gradients.
        rtd = embeddings["rtd_sum"].sum() / embeddings["rtd_count"].sum()
        return {"contrastive": info_nce(embeddings["view1"], embeddings["view2"], self.temperature),
                "rtd": self.lambda_weight * rtd}  # fmt: skip

    def mask(self, input_ids: Tensor, attention_mask: Tensor, tokenizer) -> Tensor:
        """(N, T) -> (N, T) the generator's input: BERT's masking of ``masking_ratio`` of the real tokens."""
        return mask_tokens(input_ids, attention_mask, tokenizer, probability=self.masking_ratio)[0]

    def rtd_token_loss(self, conditions: Tensor, tokens: dict[str, Tensor], tokenizer) -> Tensor:
        """(N, H) sentence embeddings, (N, T) tokens -> (N, T) per-position RTD cross-entropy."""
        input_ids, attention_mask = tokens["input_ids"], tokens["attention_mask"]
        with torch.no_grad():
            masked = self.mask(input_ids, attention_mask, tokenizer)
            edited = self.generator(input_ids=masked, attention_mask=attention_mask).logits.argmax(-1)  # (N, T)
        labels = replaced_labels(input_ids, edited, attention_mask)  # (N, T)
        real = attention_mask.bool()
        edited = torch.where(real, edited, torch.full_like(edited, tokenizer.pad_token_id or 0))
        edited[:, 0] = input_ids[:, 0]  # [CLS]; its embedding is replaced by the condition anyway
        inputs = {**tokens, "input_ids": edited}  # the backbone's own inputs (token types where it has them)
        with _condition_first_position(self.discriminator.embeddings, conditions):
            hidden = self.discriminator(**inputs).last_hidden_state  # (N, T, H)
        logits = self.rtd_head(hidden)  # (N, T, 2)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # (N, T)


def replaced_labels(original: Tensor, edited: Tensor, attention_mask: Tensor) -> Tensor:
    """(N, T) 1 where the edited sentence differs from the original, 0 elsewhere.

    A position the generator restored (or left) as the original is "not replaced"; position 0
    ([CLS], whose input is the condition) and padding are 0, as in the reference.
    """
    replaced = (edited != original) & attention_mask.bool()  # (N, T)
    replaced[:, 0] = False
    return replaced.long()


@contextmanager
def _condition_first_position(embeddings: nn.Module, conditions: Tensor) -> Iterator[None]:
    """While active, ``embeddings``' output at position 0 is ``conditions`` (N, H)."""

    def replace(module: nn.Module, args, output: Tensor) -> Tensor:
        first = conditions.to(output.dtype).unsqueeze(1)  # (N, 1, H)
        return torch.cat([first, output[:, 1:]], dim=1)  # (N, T, H)

    handle = embeddings.register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def _load_generator(name_or_path: str, encoder: SentenceEncoder) -> nn.Module:
    if not name_or_path:
        raise CsekitError("diffcse needs a masked-LM generator: set options.generator (the paper's: DistilBERT)")
    try:
        generator = load_masked_lm(name_or_path)
    except CsekitError as error:
        raise CsekitError(f"diffcse generator: {error} (set options.generator to a masked LM)") from None
    vocab, expected = generator.config.vocab_size, encoder.backbone.config.vocab_size
    if vocab != expected:
        raise CsekitError(f"diffcse generator {name_or_path!r} has {vocab} tokens, the encoder {expected}: "
                          "the generator must share the encoder's vocabulary")  # fmt: skip
    return generator


# ---------------------------------------------------------------------------------- projector
class BatchNormProjector(nn.Module):
    """The reference's ``ProjectionMLP``: Linear(H, 2H) - BN - ReLU - Linear(2H, H) - BN (no affine), no biases.

    Training-only: batch statistics always (no running statistics), over all ranks' rows.
    """

    def __init__(self, hidden_size: int, *, init_std: float = 0.02):
        super().__init__()
        self.expand = nn.Linear(hidden_size, 2 * hidden_size, bias=False)
        self.scale = nn.Parameter(torch.ones(2 * hidden_size))
        self.shift = nn.Parameter(torch.zeros(2 * hidden_size))
        self.reduce = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        for linear in (self.expand, self.reduce):  # the reference's BERT init of its new layers
            nn.init.normal_(linear.weight, mean=0.0, std=init_std)

    def forward(self, features: Tensor) -> Tensor:
        hidden = batch_norm_across_ranks(self.expand(features), weight=self.scale, bias=self.shift)  # (B, 2H)
        return batch_norm_across_ranks(self.reduce(F.relu(hidden)))  # (B, H)


def batch_norm_across_ranks(features: Tensor, *, weight: Tensor | None = None, bias: Tensor | None = None,
                            eps: float = 1e-5) -> Tensor:  # fmt: skip
    """``BatchNorm1d`` in training mode, with the statistics of every rank's rows (B, D) -> (B, D).

    Gathered with gradient, so W ranks compute exactly what one process holding the whole batch does.
    """
    everything = all_gather_with_grad(features)  # (W * B, D)
    mean = everything.mean(dim=0)  # (D,)
    variance = everything.var(dim=0, unbiased=False)  # (D,): BatchNorm normalises by the biased one
    normalized = (features - mean) * torch.rsqrt(variance + eps)  # (B, D)
    if weight is not None:
        normalized = normalized * weight + bias
    return normalized


def _install_projector(encoder: SentenceEncoder) -> None:
    if encoder.pooler.name != "cls":
        raise CsekitError("options.batchnorm replaces the cls pooler's MLP head (the reference's --pooler_type cls "
                          f"--batchnorm): set pooler: cls, not {encoder.pooler.name!r}")  # fmt: skip
    if encoder.head_at_inference:
        raise CsekitError("options.batchnorm's projector is used in training only: set mlp_only_train: true")
    parameter = next(encoder.parameters())
    std = getattr(encoder.backbone.config, "initializer_range", 0.02)
    projector = BatchNormProjector(encoder.embedding_dim, init_std=std)
    encoder.set_head(projector.to(dtype=parameter.dtype), at_inference=False)
