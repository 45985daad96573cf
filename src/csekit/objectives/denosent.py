"""DenoSent (Wang, Li, et al., AAAI 2024, "DenoSent: A Denoising Objective for Self-Supervised Sentence
Representation Learning").

Two objectives on one sentence embedding (Eq. 6, ``l = l_contrastive + l_denoising``):

- Intra-sentence denoising (Eq. 3-4): a randomly initialised Transformer decoder gets the sentence's own
  token embeddings under heavy dropout (the continuous noise, rate 0.825: most of the decoder's input is
  zero) and, as the only other thing it may read, the sentence embedding as a one-token memory for its
  cross-attention (Eq. 1); it predicts every original token at once, with no causal mask (Eq. 3), through
  the encoder's own masked-LM head, whose decoder is the encoder's word embeddings. The loss is the mean
  cross-entropy over the real tokens of the batch.
- Inter-sentence contrast (Eq. 5): InfoNCE between two dropout views, temperature ``temperature``.

Both read the embedding through a linear projector (``sent_embedding_projector``), which, like the
decoder, is used in training only: ``encode`` returns the pooled state itself.

Reference code: ``model.py``, ``config.py`` and the README's training command (github.com/xinghaow99/DenoSent).
The defaults are that command's: 16 single-head decoder layers (PyTorch's ``TransformerDecoderLayer`` with its
2048-wide feed-forward and dropout 0.1), noise dropout 0.825, contrastive weight 5, denoising weight 7,
temperature 0.05 (the paper's text says 0.03 and an unweighted sum), the template ``"[X]" means [MASK].``
(Sec. "Implementation Details"; the ``mask`` pooler, given this template, with no period added at inference,
as the reference's ``encode``; any other pooler pools as it is, the paper's "w/ CLS Pooling" ablation); the decoder and projector's linear
layers start from N(0, 0.02), as the reference's ``_init_weights`` sets them; the target embeddings are the
encoder's embedding-layer output (``hidden_states[0]``), detached (recomputed without gradient, so its
embedding dropout is a draw of its own rather than the first view's).

The discrete noise: the paper's is back-translation (English to Chinese and back with MarianMT), which
makes the positive ``s+`` and the decoder's target. ``denosent_pairs`` (:class:`DenoSentPairs`) trains on
such pairs given as ``sent0, sent1`` (the reference's ``positive_input_ids`` path: the anchor's embedding is
the memory, the rewrite the sentence rebuilt). Translating needs models this package does not ship, so
``denosent`` runs the reference's path for a corpus without pairs (``do_contrastive`` with ``input_ids``
twice, the sentence itself as the target): the paper's "w/o discrete noise" row (Table 3: 77.99 against
79.33 with back-translation).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from csekit.data.batches import Batch
from csekit.data.collate import concat_fields
from csekit.errors import CsekitError
from csekit.losses import info_nce
from csekit.models.encoder import SentenceEncoder
from csekit.models.prompt import MaskPooler
from csekit.objectives.base import Embeddings, Objective, RunContext
from csekit.objectives.mlm import pretrained_mlm_head

#: The paper's template for every experiment (Sec. "Implementation Details"; README: --prompt_format).
TEMPLATE = '"[X]" means [MASK].'


class DenoSent(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    views: ClassVar[tuple[str, ...]] = ("sent0", "sent0")
    sentence_keys: ClassVar[tuple[str, ...]] = ("view1", "view2")
    truncatable: ClassVar[bool] = False  # the projector reads the full width

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05,
                 contrastive_weight: float = 5.0, denoising_weight: float = 7.0, decoder_layers: int = 16,
                 decoder_heads: int = 1, decoder_feedforward: int = 2048, decoder_dropout: float = 0.1,
                 noise_dropout: float = 0.825, prediction_head: str = "", template: str = TEMPLATE):  # fmt: skip
        super().__init__()
        if isinstance(encoder.pooler, MaskPooler):  # encode(), the dev evaluation and save() use the template too
            settings = {**encoder.pooler.config(), "template": template, "end_with_period": False}
            encoder.set_pooler(type(encoder.pooler).create(settings, config=encoder.backbone.config, tokenizer=encoder.tokenizer))
        hidden = encoder.backbone.config.hidden_size
        if decoder_layers < 1 or hidden % decoder_heads or not 0 <= noise_dropout < 1:
            raise CsekitError(f"denosent: decoder_layers must be >= 1, decoder_heads divide the width {hidden} and "
                              f"noise_dropout lie in [0, 1); got {decoder_layers}, {decoder_heads}, {noise_dropout}")  # fmt: skip
        self.temperature, self.contrastive_weight, self.denoising_weight = temperature, contrastive_weight, denoising_weight
        self.projector = nn.Linear(hidden, hidden)
        layer = nn.TransformerDecoderLayer(d_model=hidden, nhead=decoder_heads, dim_feedforward=decoder_feedforward,
                                           dropout=decoder_dropout, batch_first=True)  # fmt: skip
        self.decoder = nn.TransformerDecoder(layer, num_layers=decoder_layers)
        for module in [self.projector, *self.decoder.modules()]:
            if isinstance(module, nn.Linear):  # the reference's _init_weights (attention in-projections keep PyTorch's)
                nn.init.normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.noise = nn.Dropout(noise_dropout)  # the continuous noise on the decoder's input
        # The encoder's MLM head, its decoder tied to the encoder's word embeddings (BertForMaskedLM.cls).
        self.prediction_head = pretrained_mlm_head(prediction_head or context.model, encoder, tie_decoder=True)

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        size = batch["sent0"]["input_ids"].shape[0]
        stacked = concat_fields([batch[column] for column in self.views], encoder.pad_token_id)  # (2B, T)
        view1, view2 = encoder(**stacked).split(size)  # 2 x (B, H): two dropout masks (or the rewrite)
        projected1, projected2 = self.projector(view1), self.projector(view2)  # (B, H) each
        # The decoder rebuilds the second view's sentence (the anchor itself, or its rewrite) from the anchor's embedding.
        sums, counts = self.reconstruction(encoder, projected1, batch[self.views[1]])
        return {"view1": view1, "view2": view2, "projected1": projected1, "projected2": projected2,
                "denoising_sum": sums, "denoising_count": counts}  # fmt: skip

    def reconstruction(self, encoder: SentenceEncoder, memory: Tensor, tokens: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(B, H) sentence embeddings, the sentences' (B, T) tokens -> (B,) summed token cross-entropy of
        each sentence rebuilt from its noised token embeddings and its embedding, (B,) its real tokens."""
        ids, real = tokens["input_ids"], tokens["attention_mask"].bool()  # (B, T) each
        with torch.no_grad():  # the target side is the embedding layer's output, detached (hidden_states[0])
            targets = encoder.backbone.embeddings(**{key: value for key, value in tokens.items() if key != "attention_mask"})
        decoded = self.decoder(tgt=self.noise(targets), memory=memory[:, None], tgt_key_padding_mask=~real)  # (B, T, H)
        logits = self.prediction_head(decoded[real])  # (N, V): the N real tokens of the batch
        token_loss = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), ids[real],
                                     reduction="none")  # (N,)  # fmt: skip
        rows = real.nonzero()[:, 0]  # (N,): the sentence of each real token
        sums = token_loss.new_zeros(ids.shape[0]).index_add(0, rows, token_loss)  # (B,)
        return sums, real.sum(dim=1).to(sums.dtype)

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        contrastive = info_nce(embeddings["projected1"], embeddings["projected2"], self.temperature)
        denoising = embeddings["denoising_sum"].sum() / embeddings["denoising_count"].sum()  # mean over real tokens
        return {"contrastive": self.contrastive_weight * contrastive, "denoising": self.denoising_weight * denoising}


class DenoSentPairs(DenoSent):
    """DenoSent on given discrete noise: ``sent1`` is a rewrite of ``sent0`` (the paper's back-translation),
    the positive of the contrast and the sentence the decoder rebuilds from ``sent0``'s embedding."""

    columns: ClassVar[tuple[str, ...]] = ("sent0", "sent1")
    views: ClassVar[tuple[str, ...]] = ("sent0", "sent1")
