"""Training-free post-processing of any encoder, saved with the model.

- :mod:`~csekit.postprocess.whitening`: BERT-whitening (Su et al. 2021), an affine map fitted on
  unlabelled sentences, saved as a stock sentence-transformers ``Dense``;
- :mod:`~csekit.postprocess.layers`: WhiteningBERT's layer combinations (Huang et al. 2021), token
  averages of chosen layers, saved as stock ``WeightedLayerPooling`` + ``Pooling``;
- :mod:`~csekit.postprocess.ditto`: Ditto's diagonal attention pooling (Chen et al. 2023), saved in
  ``csekit_config.json`` (csekit reloads it exactly; sentence-transformers refuses it with a message).

A *token pooler* replaces an encoder's named pooler: a module with ``name``, ``needs_hidden_states``,
``needs_attentions``, ``check(config)``, ``config()`` and ``forward(backbone_outputs, attention_mask)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from csekit.errors import CsekitError
from csekit.postprocess.ditto import DittoPooler
from csekit.postprocess.layers import LayerMeanPooler, named_pooler, parse_layers
from csekit.postprocess.whitening import fit_whitening, read_fit_sentences, whiten, whitening_layer

if TYPE_CHECKING:
    from csekit.models.encoder import SentenceEncoder

#: Saved name -> token pooler class (``csekit_config.json``'s ``token_pooler.name``).
TOKEN_POOLERS: dict[str, type[nn.Module]] = {"layer_mean": LayerMeanPooler, "ditto": DittoPooler}


def use_token_pooler(encoder: SentenceEncoder, token_pooler: nn.Module) -> SentenceEncoder:
    """Pool ``encoder`` with ``token_pooler`` from now on (its named pooler, head and prompt are dropped)."""
    config = encoder.backbone.config
    token_pooler.check(config)
    if token_pooler.needs_attentions and getattr(config, "_attn_implementation", "eager") != "eager":
        try:  # only the eager implementation returns attention probabilities
            encoder.backbone.set_attn_implementation("eager")
        except (AttributeError, ValueError) as error:
            raise CsekitError(f"{token_pooler.name} needs attention weights, which this model cannot return: {error}") from None
    encoder.token_pooler = token_pooler.to(encoder.device)
    encoder.pooler = token_pooler.name
    encoder.head = encoder.prompt = None  # a prompt template goes with the mask poolers only
    return encoder


def token_pooler_from_config(config: dict) -> nn.Module:
    """The token pooler saved as ``config`` (``{"name": ..., options}``)."""
    options = dict(config)
    name = options.pop("name", None)
    if name not in TOKEN_POOLERS:
        raise CsekitError(f"unknown saved token pooler {name!r}; csekit knows {', '.join(TOKEN_POOLERS)}")
    try:
        return TOKEN_POOLERS[name](**options)
    except TypeError as error:
        raise CsekitError(f"saved {name} pooler settings {config} are not valid: {error}") from None


def use_layers(encoder: SentenceEncoder, layers: str | tuple[int, ...]) -> SentenceEncoder:
    """Average the tokens of ``layers`` (WhiteningBERT): an existing pooler where one computes it."""
    num_layers = encoder.backbone.config.num_hidden_layers
    layers = parse_layers(layers, num_layers=num_layers)
    name = named_pooler(layers, num_layers=num_layers)
    if name is None:
        return use_token_pooler(encoder, LayerMeanPooler(layers=layers))
    encoder.token_pooler, encoder.pooler, encoder.head, encoder.prompt = None, name, None, None
    return encoder


__all__ = [
    "TOKEN_POOLERS",
    "DittoPooler",
    "LayerMeanPooler",
    "fit_whitening",
    "read_fit_sentences",
    "token_pooler_from_config",
    "use_layers",
    "use_token_pooler",
    "whiten",
    "whitening_layer",
]
