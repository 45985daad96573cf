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

from torch import Tensor

from csekit.data.collate import concat_fields
from csekit.errors import CsekitError
from csekit.losses import info_nce
from csekit.models.encoder import SentenceEncoder
from csekit.models.modules import MLPHead
from csekit.models.prompt import MaskPooler, Prompt
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext

#: The reference's BERT templates (run.sh unsup-bert: --mask_embedding_sentence_template and
#: --mask_embedding_sentence_different_template).
TEMPLATE = 'This sentence of "[X]" means [MASK] .'
POSITIVE_TEMPLATE = 'This sentence : "[X]" means [MASK] .'


class PromptBERT(Objective):
    """Options: ``template`` (the anchor's, kept for inference), ``positive_template`` (the positive's),
    ``denoise`` (subtract each template's own [MASK] state in training; off only for ablations)."""

    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    views: ClassVar[tuple[str, ...]] = ("sent0", "sent0")
    sentence_keys: ClassVar[tuple[str, ...]] = ("view1", "view2")

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05,
                 template: str = TEMPLATE, positive_template: str = POSITIVE_TEMPLATE, denoise: bool = True):  # fmt: skip
        super().__init__()
        pooler = encoder.pooler
        if not isinstance(pooler, MaskPooler):
            raise CsekitError(f"promptbert trains the prompt's [MASK] state: set pooler to mask_denoised or mask, "
                              f"not {pooler.name!r}")  # fmt: skip
        if template == positive_template:
            raise CsekitError("promptbert: template and positive_template must differ (they make the positive pair)")
        self.temperature = temperature
        self.denoise = denoise
        # The anchor's template is the encoder's pooler's: encode(), the dev evaluation and save() use it too.
        settings = {**pooler.config(), "template": template}
        encoder.set_pooler(type(pooler).create(settings, config=encoder.backbone.config, tokenizer=encoder.tokenizer))
        self.positive_prompt = Prompt.from_template(positive_template, encoder.tokenizer)
        std = getattr(encoder.backbone.config, "initializer_range", 0.02)  # as BERT initialises new layers
        self.head = MLPHead(encoder.backbone.config.hidden_size).reset_parameters(std)

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        anchors = batch["sent0"]  # already wrapped in the pooler's prompt by encoder.tokenize
        size = anchors["input_ids"].shape[0]
        pad_id = encoder.pad_token_id
        anchor_prompt = encoder.pooler.prompt
        positives = anchor_prompt.rewrap(anchors, self.positive_prompt, pad_id)  # same sentences, other template
        stacked = concat_fields([anchors, positives], pad_id)  # (2B, T)
        last_hidden = encoder.backbone(**stacked, return_dict=True).last_hidden_state  # (2B, T, H), dropout on
        views = []
        for half, prompt in enumerate((anchor_prompt, self.positive_prompt)):
            rows = slice(half * size, (half + 1) * size)
            views.append(prompt.pool(encoder.backbone, last_hidden[rows], stacked["input_ids"][rows],
                                     stacked["attention_mask"][rows], denoise=self.denoise))  # (B, H)  # fmt: skip
        return {"view1": self.head(views[0]), "view2": self.head(views[1])}

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        return {"contrastive": info_nce(embeddings["view1"], embeddings["view2"], self.temperature)}
