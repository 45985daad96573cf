"""A deep prompt: trained key/value vectors prepended in every self-attention layer (P-tuning v2).

P-tuning v2 (Liu et al., ACL 2022) and PromCSE (Jiang, Zhang & Wang, EMNLP Findings 2022) give
each of the L layers P "virtual tokens" that every real token attends to but that attend to nothing
themselves: layer l's keys and values are ``[K_prefix_l; K_l]`` and ``[V_prefix_l; V_l]`` (P + T rows),
its queries the T real tokens'. As the reference's ``PrefixEncoder`` (``promcse/models.py``, with
``prefix_projection`` off, as in every script the reference ships), the prefix is one embedding table of
P rows, each row the L x 2 x H numbers of its key and value in every layer, initialised N(0, 0.02) as BERT
initialises an embedding, with the backbone's hidden dropout on it while training.

The backbone takes the prefix through its cache argument: :class:`PrefixCache` answers each layer's
``update(key, value, layer)`` with the prefix's keys and values put before the layer's own, and reports P
tokens already seen, so, as the reference's ``past_key_values`` did in the transformers it pins (4.2.1),
the real tokens' position ids start at P. The attention mask covers the P prefix keys (always attended) and
the T tokens (padding masked), in the format of the backbone's attention implementation.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from transformers.masking_utils import create_bidirectional_mask

from csekit.errors import CsekitError


class PrefixCache:
    """The backbone's cache argument that prepends a prefix's keys and values in every layer and keeps nothing."""

    def __init__(self, keys: Tensor, values: Tensor):
        self.keys, self.values = keys, values  # (L, B, heads, P, head_dim) each

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        # (B, heads, T, head_dim) -> (B, heads, P + T, head_dim)
        return torch.cat([self.keys[layer_idx], key], dim=2), torch.cat([self.values[layer_idx], value], dim=2)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys.shape[3]


class DeepPrefix(nn.Module):
    """``length`` trained key/value vectors for each layer of a backbone of ``config``."""

    def __init__(self, config, length: int):
        super().__init__()
        if length < 1:
            raise CsekitError(f"a prefix needs at least 1 token, got {length}")
        self.layers, self.heads = config.num_hidden_layers, config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.embedding = nn.Embedding(length, self.layers * 2 * config.hidden_size)
        nn.init.normal_(self.embedding.weight, mean=0.0, std=getattr(config, "initializer_range", 0.02))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    @property
    def length(self) -> int:
        return self.embedding.num_embeddings

    def cache(self, batch_size: int) -> PrefixCache:
        """Every layer's prefix keys and values for ``batch_size`` rows (each row its own dropout draw)."""
        rows = self.embedding.weight.expand(batch_size, -1, -1)  # (B, P, L * 2 * H)
        rows = rows.reshape(batch_size, self.length, 2 * self.layers, self.heads, self.head_dim)
        rows = self.dropout(rows).permute(2, 0, 3, 1, 4)  # (2L, B, heads, P, head_dim): key, value of layer 0, ...
        return PrefixCache(rows[0::2], rows[1::2])

    def backbone_inputs(self, backbone: nn.Module, attention_mask: Tensor) -> dict:
        """The cache and the (B, 1, T, P + T) attention mask that put the prefix in front of every row."""
        size, tokens = attention_mask.shape
        positions = getattr(backbone.config, "max_position_embeddings", None)
        if positions is not None and self.length + tokens > positions:
            raise CsekitError(f"{tokens} tokens after a {self.length}-token prefix pass the model's {positions} positions")
        everything = torch.cat([attention_mask.new_ones(size, self.length), attention_mask], dim=1)  # (B, P + T)
        dtype, device = self.embedding.weight.dtype, attention_mask.device
        mask = create_bidirectional_mask(  # only the shapes and dtypes of these stand-ins are read
            config=backbone.config, inputs_embeds=torch.empty(size, tokens, 0, dtype=dtype, device=device),
            attention_mask=everything, encoder_hidden_states=torch.empty(size, self.length + tokens, 0, dtype=dtype, device=device),
            allow_is_bidirectional_skip=False)  # fmt: skip
        return {"cache": self.cache(size), "attention_mask": mask}

    def save(self, weights_file: str | os.PathLike) -> None:
        Path(weights_file).parent.mkdir(parents=True, exist_ok=True)
        save_file({"embedding.weight": self.embedding.weight.detach().cpu().contiguous()}, weights_file)

    @classmethod
    def load(cls, weights_file: str, config) -> DeepPrefix:
        weights = load_file(weights_file)
        table = weights.get("embedding.weight")
        width = config.num_hidden_layers * 2 * config.hidden_size
        if table is None or table.ndim != 2 or table.shape[1] != width:
            raise CsekitError(f"{weights_file}: a prefix for this model is a (P, {width}) embedding.weight table")
        prefix = cls(config, table.shape[0])
        with torch.no_grad():
            prefix.embedding.weight.copy_(table)
        return prefix
