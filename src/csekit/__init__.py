"""csekit: contrastive sentence embeddings — train, evaluate and use the SimCSE line of methods."""

from csekit.errors import CsekitError
from csekit.models import POOLERS, SentenceEncoder, load_encoder, save_encoder
from csekit.postprocess import register_poolers as _register_poolers

_register_poolers()  # the training-free poolers (layer sets, Ditto) join POOLERS before any model loads

__version__ = "0.1.0"
__all__ = ["POOLERS", "CsekitError", "SentenceEncoder", "__version__", "load_encoder", "save_encoder"]
