"""Sentence-BERT (Reimers & Gurevych, EMNLP 2019, "Sentence-BERT: Sentence Embeddings using Siamese
BERT-Networks"), its two objectives for sentence pairs, Sec. 3:

- classification (Eq. 1): ``softmax(W_t (u, v, |u - v|))`` over the NLI labels, cross-entropy. ``W_t``
  is :class:`~csekit.models.pair_classifier.PairClassifier`, trained here and saved with the model
  (``pair_classifier/`` in every saved folder), so the 3-way classifier reloads with its encoder
  (:func:`~csekit.models.load_pair_classifier`). ``features`` picks the concatenation (Table 6).
- regression: the mean squared error of ``cos(u, v)`` against the gold score on [0, 1]
  (:func:`~csekit.losses.cosine_regression`; STS-B's 0-5 and SICK's 1-5 scores are rescaled by the readers).

Both encode the two sentences with the same encoder (the siamese network) in one forward pass. The
paper pools by the mean of the tokens (``pooler: mean`` in the recipes).
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn
from torch.nn import functional as F

from csekit.data.labelled import LABEL, NLI_LABELS, SCORE
from csekit.losses import cosine_regression
from csekit.models.encoder import SentenceEncoder
from csekit.models.pair_classifier import PAIR_CLASSIFIER, PairClassifier
from csekit.objectives.base import Batch, Embeddings, Objective, RunContext
from csekit.objectives.pairs import PairEmbeddings


class SBERTClassification(PairEmbeddings, Objective):
    targets: ClassVar[tuple[str, ...]] = (LABEL,)
    truncatable = False  # the classifier reads (u, v, |u - v|) at the full width

    def __init__(self, encoder: SentenceEncoder, context: RunContext, *,
                 features: tuple[str, ...] = ("u", "v", "|u-v|")):  # fmt: skip
        super().__init__()
        self.classifier = PairClassifier(encoder.embedding_dim, NLI_LABELS, features=features)

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        logits = self.classifier(embeddings["sent0"], embeddings["sent1"])  # (B, 3)
        return {"classification": F.cross_entropy(logits, batch["targets"][LABEL])}

    def saved_heads(self) -> dict[str, nn.Module]:
        return {PAIR_CLASSIFIER: self.classifier}


class SBERTRegression(PairEmbeddings, Objective):
    targets: ClassVar[tuple[str, ...]] = (SCORE,)

    def __init__(self, encoder: SentenceEncoder, context: RunContext):
        super().__init__()

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        return {"regression": cosine_regression(embeddings["sent0"], embeddings["sent1"], batch["targets"][SCORE])}
