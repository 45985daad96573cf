"""Encoders: a Hugging Face backbone, a pooler, an optional head, output modules, and sentence-transformers I/O."""

from csekit.models import contrastive_prompting, echo, eol  # noqa: F401  (decoder prompt poolers register)
from csekit.models.encoder import SentenceEncoder
from csekit.models.loading import load_encoder, load_transformer
from csekit.models.modules import AffineMap, MLPHead
from csekit.models.pair_classifier import PairClassifier, load_pair_classifier
from csekit.models.pooling import POOLERS, Pooler, register_pooler
from csekit.models.prompt import MaskPooler
from csekit.models.saving import save_encoder

__all__ = ["POOLERS", "AffineMap", "MLPHead", "MaskPooler", "PairClassifier", "Pooler", "SentenceEncoder",
           "load_encoder", "load_pair_classifier", "load_transformer", "register_pooler", "save_encoder"]
