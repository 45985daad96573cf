"""PromptBERT (Jiang et al., EMNLP 2022, "PromptBERT: Improving BERT Sentence Embeddings with
Prompts"), unsupervised: prompt-based contrastive learning with template denoising (Sec. 5).

Each sentence is put into two different templates, which makes the positive pair. Each view is the
[MASK] state of its template, ``h``, minus the [MASK] state of the same template with no sentence in
it, ``h^`` (template denoising, :mod:`csekit.models.prompt`). InfoNCE over in-batch negatives pulls
the two views together (Sec. 5):

    l_i = -log e^{cos(h_i - h^_i, h'_i - h^'_i) / t} / sum_j e^{cos(h_i - h^_i, h'_j - h^'_j) / t},  t = 0.05

As the reference code does it (``run.sh unsup-bert``, ``prompt_bert/models.py::cl_forward``):

- BERT's template pair: ``This sentence of "[X]" means [MASK] .`` (the first view, and the template
  used at inference) and ``This sentence : "[X]" means [MASK] .`` (the positive);
- both views go through the backbone in one pass with dropout on; each template pass (one per
  template and batch) also runs in training mode and carries gradient;
- an MLP (dense + tanh, freshly initialised) follows the denoised states in training only (the
  reference's ``--mlp_only_train``): it is this objective's module, so the saved model is the
  backbone with its prompt pooler.

Inference: the constructor gives the encoder the first template, so the training data (tokenized by
``encoder.tokenize``), the trainer's dev evaluation and the saved model all use it. Whether inference
denoises is the recipe's pooler: ``mask_denoised`` as the reference's dev evaluation during training
(``sentemb_forward``), ``mask`` as its test evaluation of unsupervised models (``eval_only.sh``).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from csekit.data.collate import concat_fields
from csekit.errors import CsekitError
from csekit.losses import info_nce
from csekit.models.encoder import MLPHead, SentenceEncoder
from csekit.models.pooling import PROMPT_POOLERS
from csekit.models.prompt import Prompt
from csekit.objectives.base import Batch, Objective

#: The reference's BERT templates (run.sh unsup-bert: --mask_embedding_sentence_template and
#: --mask_embedding_sentence_different_template).
TEMPLATE = 'This sentence of "[X]" means [MASK] .'
POSITIVE_TEMPLATE = 'This sentence : "[X]" means [MASK] .'


class PromptBERT(Objective):
    """Options: ``template`` (the anchor's, kept for inference), ``positive_template`` (the positive's),
    ``denoise`` (subtract each template's own [MASK] state in training; off only for ablations)."""

    columns: ClassVar[tuple[str, ...]] = ("sent0",)

    def __init__(self, encoder: SentenceEncoder, *, temperature: float = 0.05, template: str = TEMPLATE,
                 positive_template: str = POSITIVE_TEMPLATE, denoise: bool = True):  # fmt: skip
        super().__init__()
        if encoder.pooler not in PROMPT_POOLERS:
            raise CsekitError(f"promptbert trains the prompt's [MASK] state: set pooler to mask_denoised or mask, "
                              f"not {encoder.pooler!r}")  # fmt: skip
        if template == positive_template:
            raise CsekitError("promptbert: template and positive_template must differ (they make the positive pair)")
        self.temperature = temperature
        self.denoise = denoise
        # The anchor's template is the encoder's: encode(), the dev evaluation and save() use it too.
        encoder.prompt = Prompt.from_template(template, encoder.tokenizer)
        self.positive_prompt = Prompt.from_template(positive_template, encoder.tokenizer)
        self.head = MLPHead(encoder.backbone.config.hidden_size)
        std = getattr(encoder.backbone.config, "initializer_range", 0.02)  # as BERT initialises new layers
        nn.init.normal_(self.head.dense.weight, mean=0.0, std=std)
        nn.init.zeros_(self.head.dense.bias)

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> dict[str, Tensor]:
        anchors = batch["sent0"]  # already wrapped in encoder.prompt by encoder.tokenize
        size = anchors["input_ids"].shape[0]
        pad_id = encoder.tokenizer.pad_token_id or 0
        positives = encoder.prompt.rewrap(anchors, self.positive_prompt, pad_id)  # same sentences, other template
        stacked = concat_fields([anchors, positives], pad_id)  # (2B, T)
        last_hidden = encoder.backbone(**stacked, return_dict=True).last_hidden_state  # (2B, T, H), dropout on
        views = []
        for half, prompt in enumerate((encoder.prompt, self.positive_prompt)):
            rows = slice(half * size, (half + 1) * size)
            views.append(prompt.pool(encoder.backbone, last_hidden[rows], stacked["input_ids"][rows],
                                     stacked["attention_mask"][rows], denoise=self.denoise))  # (B, H)  # fmt: skip
        return {"view1": self.head(views[0]), "view2": self.head(views[1])}

    def loss(self, embeddings: dict[str, Tensor], batch: Batch) -> dict[str, Tensor]:
        return {"contrastive": info_nce(embeddings["view1"], embeddings["view2"], self.temperature)}
