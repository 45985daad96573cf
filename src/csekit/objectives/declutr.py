"""DeCLUTR (Giorgi, Nitski, Wang & Bader, ACL 2021, "DeCLUTR: Deep Contrastive Learning for Unsupervised
Textual Representations").

Each training example is a document. From it, ``num_anchors`` anchor spans and ``num_positives`` positive
spans per anchor are sampled (Sec. 2.2; :mod:`csekit.augment.spans`: anchor lengths ~ Beta(4, 2), positive
lengths ~ Beta(2, 4), between ``min_span`` and ``max_span`` tokens; positives overlap, border or lie inside
their anchor). Spans are mean-pooled; the positives of an anchor are averaged into one; the contrastive
loss is NT-Xent over the 2N anchors and positives of the batch (Sec. 2.1: the pair loss l(i, j) summed over
both directions of every anchor-positive pair; :func:`csekit.losses.nt_xent`, the mean over the 2N terms), temperature 0.05, the
anchors of other documents and of the same document being negatives. The total loss adds the masked-LM loss
of the anchors (Sec. 2.3, ``L = L_contrastive + L_MLM``): the anchors are BERT-masked before they are
embedded, so one forward pass gives both the anchor embeddings and the MLM predictions.

As in the reference code (``JohnGiorgi/DeCLUTR``: ``contrastive_utils.sample_anchor_positive_pairs``,
``model.DeCLUTR.forward``, ``training_config/declutr*.jsonnet``): spans are sampled in the model's own
subword tokens (the configs' ``pretrained_transformer`` tokenizer); the embeddings of a document's
anchors come from the masked anchors; the MLM head is the checkpoint's, its decoder tied to the word
embeddings (Hugging Face's masked LM, as the reference loads it), weight 1; pytorch-metric-learning's
NTXentLoss is the same formula as ``nt_xent(reduction="mean")`` (cosine similarity, every other
embedding a negative); several processes gather anchors and positives before the loss, as the reference's
``all_gather_anchor_positive_pairs``.

Departures: spans are drawn when a batch is embedded, from the document's token ids as the data truncated
them (``max_length`` of the recipe is the document's length; a span row gets the special tokens around it
and is cut to the encoder's own limit); a document too short for its spans samples shorter ones (see
:mod:`csekit.augment.spans`); the reference's unscaled gradient under several processes (``scale_fix:
false``) is not reproduced.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from csekit.augment.spans import Span, sample_spans
from csekit.data.collate import pad_batch
from csekit.losses import nt_xent
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.mlm import mask_tokens, pretrained_mlm_head


class DeCLUTR(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0",)  # documents
    views: ClassVar[tuple[str, ...]] = ("sent0",)
    supports_grad_cache: ClassVar[bool] = False  # spans and masks are drawn per call: a slice of the batch draws others

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05,
                 num_anchors: int = 2, num_positives: int = 2, max_span: int = 512, min_span: int = 32,
                 sampling: str = "any", mlm_weight: float = 1.0, mlm_probability: float = 0.15,
                 mlm_head: str = "") -> None:  # fmt: skip
        super().__init__()
        self.temperature = temperature
        self.spans = {"num_anchors": num_anchors, "num_positives": num_positives, "max_span": max_span,
                      "min_span": min_span, "sampling": sampling}  # fmt: skip
        sample_spans(2 * num_anchors * max_span, np.random.default_rng(0), **self.spans)  # bad settings fail now
        self.num_positives = num_positives
        #: anchor1, positive1, anchor2, positive2, ...: (B, H) each, row i from document i.
        self.sentence_keys = tuple(f"{kind}{a}" for a in range(1, num_anchors + 1) for kind in ("anchor", "positive"))
        self.mlm_weight, self.mlm_probability = mlm_weight, mlm_probability
        # The reference's masked LM ties its decoder to the word embeddings (Hugging Face's default).
        self.lm_head = pretrained_mlm_head(mlm_head or context.model, encoder, tie_decoder=True) if mlm_weight else None

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        documents = batch["sent0"]
        size = documents["input_ids"].shape[0]
        anchors, positives = self.span_rows(encoder, documents)  # (B * A, T') and (B * A * P, T'')
        if self.lm_head is not None:
            anchors["input_ids"], labels = mask_tokens(anchors["input_ids"], anchors["attention_mask"],
                                                       encoder.tokenizer, probability=self.mlm_probability)  # fmt: skip
        outputs = encoder.backbone(**anchors, return_dict=True)
        anchor_embeddings = encoder.pool(outputs, anchors).view(size, -1, encoder.embedding_dim)  # (B, A, H)
        positive_embeddings = encoder(**positives).view(size, anchor_embeddings.shape[1], self.num_positives, -1)
        positive_embeddings = positive_embeddings.mean(dim=2)  # (B, A, H): an anchor's positives averaged
        embeddings = {}
        for a in range(anchor_embeddings.shape[1]):
            embeddings[f"anchor{a + 1}"] = anchor_embeddings[:, a]
            embeddings[f"positive{a + 1}"] = positive_embeddings[:, a]
        if self.lm_head is not None:
            logits = self.lm_head(outputs.last_hidden_state)  # (B * A, T', V)
            logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
            token_loss = nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # (B * A, T')
            embeddings["anchor_mlm_sum"] = token_loss.sum(dim=1).view(size, -1).sum(dim=1)  # (B,)
            embeddings["anchor_mlm_count"] = (labels != -100).sum(dim=1).view(size, -1).sum(dim=1).to(token_loss.dtype)
        return embeddings

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        anchors = torch.cat([embeddings[key] for key in self.sentence_keys[0::2]])  # (A * B, H)
        positives = torch.cat([embeddings[key] for key in self.sentence_keys[1::2]])  # (A * B, H), row for row
        terms = {"contrastive": nt_xent(anchors, positives, self.temperature, reduction="mean")}
        if self.lm_head is not None:
            terms["anchor_mlm"] = self.mlm_weight * embeddings["anchor_mlm_sum"].sum() / embeddings["anchor_mlm_count"].sum().clamp(min=1)
        return terms

    def span_rows(self, encoder: SentenceEncoder, documents: dict[str, Tensor]) -> tuple[dict, dict]:
        """Token rows of every document's anchors (document after document) and of their positives."""
        rng = np.random.default_rng(int(torch.randint(2**62, ())))  # follows the run's seeded torch RNG
        special = torch.tensor(encoder.tokenizer.all_special_ids, device=documents["input_ids"].device)
        keep = documents["attention_mask"].bool() & ~torch.isin(documents["input_ids"], special)
        anchor_rows, positive_rows = [], []
        for ids, kept in zip(documents["input_ids"].tolist(), keep.tolist()):
            tokens = [token for token, use in zip(ids, kept) if use]  # the document without special tokens
            anchors, positives = sample_spans(len(tokens), rng, **self.spans)
            anchor_rows += [self._row(encoder, tokens, span) for span in anchors]
            positive_rows += [self._row(encoder, tokens, span) for span in positives]
        device = documents["input_ids"].device
        pad = encoder.pad_token_id
        return ({key: value.to(device) for key, value in pad_batch(anchor_rows, pad).items()},
                {key: value.to(device) for key, value in pad_batch(positive_rows, pad).items()})  # fmt: skip

    @staticmethod
    def _row(encoder: SentenceEncoder, tokens: list[int], span: Span) -> dict[str, list[int]]:
        tokenizer = encoder.tokenizer  # [CLS] span [SEP] (RoBERTa: <s> span </s>), cut to the model's limit
        first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        last = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        ids = [first, *tokens[span[0] : span[1]][: encoder.max_length - 2], last]
        row = {"input_ids": ids, "attention_mask": [1] * len(ids)}
        if "token_type_ids" in encoder.model_input_names:
            row["token_type_ids"] = [0] * len(ids)
        return row
