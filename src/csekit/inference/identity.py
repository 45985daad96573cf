"""What a set of embeddings was computed with, so that vectors of different models are never mixed.

An index, an encode run being resumed, or a server with an index compares identities before it uses
vectors: the digest covers every weight and buffer the encoder computes with (backbone, head, output
modules) and the pooler's settings (a prompt template is part of it), so two models agree only when they
compute the same function, wherever their files live.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

from csekit.errors import CsekitError
from csekit.models import SentenceEncoder
from csekit.models.saving import saved_pooler


def model_identity(encoder: SentenceEncoder, name: str) -> dict[str, Any]:
    """``{"model": name, "pooler": {...}, "dim", "normalize", "max_length", "digest"}`` of ``encoder``."""
    pooler = saved_pooler(encoder)
    digest = hashlib.sha256(json.dumps(pooler, sort_keys=True).encode())
    # a train-only head does not take part in inference
    update_with_tensors(digest, {key: tensor for key, tensor in encoder.state_dict().items()
                                 if encoder.uses_head or not key.startswith("head.")})  # fmt: skip
    return {"model": name, "pooler": pooler, "dim": encoder.embedding_dim, "normalize": bool(encoder.normalize),
            "max_length": encoder.max_length, "digest": digest.hexdigest()[:32]}  # fmt: skip


def update_with_tensors(digest: Any, tensors: Mapping[str, torch.Tensor]) -> None:
    """Feed every tensor's name, shape, dtype and bytes into ``digest`` (a hashlib object), in name order."""
    for key, tensor in sorted(tensors.items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())


def check_same_model(saved: dict[str, Any], current: dict[str, Any], *, what: str) -> None:
    """Refuse ``current`` where ``what`` (an index, a partial encode) was made with the ``saved`` model."""
    if saved.get("digest") != current.get("digest"):
        raise CsekitError(f"{what} was made with another model ({saved.get('model')}, pooler "
                          f"{saved.get('pooler', {}).get('name')}, digest {saved.get('digest')}) than "
                          f"{current['model']} (pooler {current['pooler']['name']}, digest {current['digest']}): "
                          "use that model, or build it again with this one")  # fmt: skip


def tokenization_digest(encoder: SentenceEncoder, max_length: int) -> str:
    """sha256 of what decides a text's token ids under ``encoder.tokenize``: the tokenizer's full definition
    and truncation side, the pooler's settings (a prompt template wraps the text), the max length and the
    fields, wherever the files live."""
    tokenizer = encoder.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # less its truncation and padding: state the last call left (max_length covers them)
        definition = json.dumps({key: value for key, value in json.loads(backend.to_str()).items()
                                 if key not in ("truncation", "padding")}, sort_keys=True)  # fmt: skip
    else:  # a slow tokenizer: its vocabulary and settings (file paths left out: they are not content)
        settings = {key: value for key, value in tokenizer.init_kwargs.items() if not key.endswith("_file")}
        definition = json.dumps([sorted(tokenizer.get_vocab().items()), settings], sort_keys=True, default=str)
    record = {"tokenizer": type(tokenizer).__name__, "definition": definition, "truncation_side": tokenizer.truncation_side,
              "pooler": saved_pooler(encoder), "max_length": max_length, "fields": encoder.model_input_names}  # fmt: skip
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
