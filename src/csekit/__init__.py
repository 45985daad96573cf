"""csekit: contrastive sentence embeddings — train, evaluate and use the SimCSE line of methods."""

from csekit.errors import CsekitError
from csekit.models import POOLERS, SentenceEncoder, load_encoder, save_encoder

__version__ = "0.1.0"
__all__ = ["POOLERS", "CsekitError", "SentenceEncoder", "__version__", "load_encoder", "save_encoder"]
