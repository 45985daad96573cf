"""Training-free post-processing of any encoder, saved with the model.

- :mod:`~csekit.postprocess.whitening`: BERT-whitening (Su et al. 2021), an affine map fitted on
  unlabelled sentences, one of the encoder's output modules (a stock sentence-transformers ``Dense``);
- :mod:`~csekit.postprocess.layers`: WhiteningBERT's layer combinations (Huang et al. 2021), token
  averages of chosen layers: the pooler ``layer_mean`` (stock ``WeightedLayerPooling`` + ``Pooling``);
- :mod:`~csekit.postprocess.ditto`: Ditto's diagonal attention pooling (Chen et al. 2023): the pooler
  ``ditto`` (csekit's sentence-transformers input module).

The two poolers join :data:`csekit.models.POOLERS` through :func:`register_poolers`, which importing
``csekit`` calls, so a saved folder naming them loads wherever csekit is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from csekit.models.pooling import register_pooler
from csekit.postprocess.ditto import DittoPooler
from csekit.postprocess.layers import LayerMeanPooler, named_pooler, parse_layers
from csekit.postprocess.whitening import fit_whitening, read_fit_sentences, whiten, whitening_layer

if TYPE_CHECKING:
    from csekit.models.encoder import SentenceEncoder

#: The poolers this package adds to the registry.
PACKAGE_POOLERS = (LayerMeanPooler, DittoPooler)


def register_poolers() -> None:
    for pooler in PACKAGE_POOLERS:
        register_pooler(pooler)


def use_layers(encoder: SentenceEncoder, layers: str | tuple[int, ...]) -> SentenceEncoder:
    """Average the tokens of ``layers`` (WhiteningBERT): an existing pooler where one computes it."""
    num_layers = encoder.backbone.config.num_hidden_layers
    layers = parse_layers(layers, num_layers=num_layers)
    return encoder.set_pooler(named_pooler(layers, num_layers=num_layers) or LayerMeanPooler(layers=layers))


__all__ = [
    "PACKAGE_POOLERS",
    "DittoPooler",
    "LayerMeanPooler",
    "fit_whitening",
    "read_fit_sentences",
    "register_poolers",
    "use_layers",
    "whiten",
    "whitening_layer",
]
