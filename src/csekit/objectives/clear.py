"""CLEAR (Wu, Wang, Gu, Khabsa, Sun & Ma 2020, "CLEAR: Contrastive Learning for Sentence Representation",
arXiv:2012.15466).

- Views (Sec. 3.1, 3.2): each sentence ``s`` gives two views ``AUG(s, seed1)`` and ``AUG(s, seed2)``,
  where ``AUG`` applies the chosen augmentations in order (:mod:`csekit.augment.text`). The default
  pair is the paper's ``subs + del-span``: substitution, then span deletion.
- Loss (Sec. 3.1, SimCLR's NT-Xent): over the ``2N`` views of a batch of ``N`` sentences, each view
  is pulled towards the other view of its sentence and pushed from the ``2N - 2`` other views,
  ``l(i, j) = -log exp(sim(z_i, z_j) / t) / sum_{k != i} exp(sim(z_i, z_k) / t)``, averaged over
  all ``2N`` views (:func:`csekit.losses.nt_xent`, ``reduction="mean"``). ``z`` is the projection
  head's output (the ``cls`` pooler's MLP head, kept for training only with ``mlp_only_train``).
- MLM (Sec. 3.1, ``L = L_MLM + L_CL``): the paper pre-trains from scratch with both terms; here the
  masked-LM term is the ``mlm`` wrapper (:mod:`csekit.objectives.mlm`), which masks a copy of the
  original sentence for each of the two views (``wrappers: {mlm: {weight: 1.0}}`` in the BERT-base
  recipe; without it the contrastive term trains alone).

Batches hold token ids, so views are made in text: each sentence is decoded (special tokens
dropped), its whitespace-separated words are augmented, and the views are tokenized again
(``max_length``) with the tokenizer's own special tokens. This is the same for WordPiece (BERT) and
byte-level BPE (RoBERTa) tokenizers. The paper's ``[DEL]`` is a token added to its vocabulary before
pre-training; an existing encoder has none, so a deleted word or span becomes the tokenizer's mask
token (``deletion_placeholder="mask"``, BERT's nearest equivalent) or disappears (``"none"``).
The augmentation draws come from torch's global CPU generator: seeded, checkpointed, and replayed
by the gradient cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from torch import Tensor

from csekit.augment.text import SentenceAugmenter, python_rng
from csekit.augment.wordnet import WordNet
from csekit.data.collate import pad_batch
from csekit.errors import CsekitError
from csekit.losses import nt_xent
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext

PLACEHOLDERS = ("mask", "none")


class CLEAR(Objective):
    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    views: ClassVar[tuple[str, ...]] = ("sent0", "sent0")
    sentence_keys: ClassVar[tuple[str, ...]] = ("view1", "view2")

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *, temperature: float = 0.05,
                 augmentations: Sequence[str] = ("substitution", "span_deletion"), deletion_ratio: float = 0.7,
                 reorder_ratio: float = 0.3, substitution_ratio: float = 0.3, deletion_placeholder: str = "mask",
                 wordnet_dir: str | None = None):  # fmt: skip
        super().__init__()
        if isinstance(augmentations, str):
            augmentations = [augmentations]
        if deletion_placeholder not in PLACEHOLDERS:
            raise CsekitError(f"deletion_placeholder must be one of {', '.join(PLACEHOLDERS)}, not {deletion_placeholder!r}")
        placeholder = None
        if deletion_placeholder == "mask":
            placeholder = encoder.tokenizer.mask_token
            if placeholder is None:
                raise CsekitError("this tokenizer has no mask token; set options.deletion_placeholder=none")
        synonyms = WordNet(wordnet_dir) if "substitution" in augmentations else None
        self.augmenter = SentenceAugmenter(tuple(augmentations), deletion_ratio=deletion_ratio,
                                           reorder_ratio=reorder_ratio, substitution_ratio=substitution_ratio,
                                           placeholder=placeholder, synonyms=synonyms)  # fmt: skip
        self.temperature = temperature
        self.max_length = context.max_length  # the augmented views are tokenized again, as the data was

    def augmented_views(self, encoder: SentenceEncoder, sentences: dict[str, Tensor]) -> dict[str, Tensor]:
        """(B, T) token ids -> (2B, T') tokens of two augmented views: rows 0..B-1, then B..2B-1."""
        lengths = sentences["attention_mask"].sum(dim=1).tolist()  # right padding: real tokens first
        ids = [row[:length] for row, length in zip(sentences["input_ids"].tolist(), lengths)]
        texts = encoder.tokenizer.batch_decode(ids, skip_special_tokens=True)
        rng = python_rng()  # one draw from torch's global CPU generator seeds the whole batch
        augmented = [self.augmenter(text, rng) for text in texts] + [self.augmenter(text, rng) for text in texts]
        tokens = encoder.tokenize(augmented, max_length=self.max_length)
        rows = [{key: tokens[key][i] for key in tokens} for i in range(len(augmented))]
        padded = pad_batch(rows, encoder.pad_token_id)  # (2B, T')
        return {key: value.to(sentences["input_ids"].device) for key, value in padded.items()}

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        size = batch["sent0"]["input_ids"].shape[0]
        outputs = encoder(**self.augmented_views(encoder, batch["sent0"]))  # (2B, H): both views in one pass
        return {"view1": outputs[:size], "view2": outputs[size:]}

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        return {"contrastive": nt_xent(embeddings["view1"], embeddings["view2"], self.temperature, reduction="mean")}
