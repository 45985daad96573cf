"""LoRA adapters on an encoder's backbone (Hu et al. 2021, *LoRA: Low-Rank Adaptation of Large Language Models*,
Eq. 3: ``h = W0 x + (alpha / r) * B A x``, with ``A`` random, ``B`` zero at the start), through ``peft``.

Only the adapters train (and whatever the objective owns: a head, a classifier); the backbone's own weights stay
frozen, so any objective fine-tunes a decoder in the memory of its adapters. PromptEOL's fine-tuning (Jiang et
al. 2023, *Scaling Sentence Embeddings with Large Language Models*, Sec. 5; ``kongds/scaling_sentemb``
``ft_llm.py``) is supervised SimCSE through such adapters.

A trained model is saved one of two ways (the ``save`` option):

- ``adapter``: the sentence-transformers folder holds the tokenizer, pooler and modules as always, and the
  backbone as PEFT's ``adapter_config.json`` + ``adapter_model.safetensors``, whose ``base_model_name_or_path``
  names the frozen base model; loading reads the base model from there and puts the adapters back on it;
- ``merged``: ``W0 + (alpha / r) B A`` written into a plain backbone (``merge_and_unload``), a folder any
  sentence-transformers installation loads.

``gradient_checkpointing`` (recomputing each layer's activations in backward) trades compute for memory on
long prompts and big backbones; with frozen embeddings the checkpointed layers' inputs must require grad for
the adapters inside them to get gradients (``enable_input_require_grads``, what peft's k-bit preparation does).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from csekit.errors import CsekitError
from csekit.models.decoder import GGUF_MARK, split_reference

if TYPE_CHECKING:
    from csekit.models.encoder import SentenceEncoder

ADAPTER_CONFIG = "adapter_config.json"
#: option -> (what is allowed, check).
LORA_OPTIONS: dict[str, tuple[str, Any]] = {
    "r": ("an integer >= 1", lambda v: _number(v) and isinstance(v, int) and v >= 1),
    "alpha": ("a number > 0", lambda v: _number(v) and v > 0),
    "dropout": ("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
    "target_modules": ("a list of module names (q_proj, v_proj, ...) or 'all-linear'",
                       lambda v: v == "all-linear" or (isinstance(v, list) and v and all(isinstance(n, str) for n in v))),
    "save": ("adapter or merged", lambda v: v in ("adapter", "merged")),
}  # fmt: skip
LORA_DEFAULTS = {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "all-linear", "save": "adapter"}


def check_lora(options: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``lora`` recipe mapping with its defaults filled in (None: no LoRA), or a one-line error."""
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise CsekitError(f"lora must be a mapping of {', '.join(LORA_OPTIONS)}, not {options!r}")
    unknown = sorted(set(options) - set(LORA_OPTIONS))
    if unknown:
        raise CsekitError(f"lora: unknown option(s) {', '.join(unknown)}; allowed: {', '.join(LORA_OPTIONS)}")
    settings = {**LORA_DEFAULTS, **options}
    for key, (allowed, ok) in LORA_OPTIONS.items():
        if not ok(settings[key]):
            raise CsekitError(f"lora: {key} must be {allowed}, not {settings[key]!r}")
    return settings


def add_lora(encoder: SentenceEncoder, options: Mapping[str, Any], *, base_model: str) -> SentenceEncoder:
    """Put LoRA adapters on ``encoder``'s backbone (in place) and freeze everything else in it; ``base_model``
    is the reference the adapter folder will name (the model the run started from)."""
    from peft import LoraConfig, get_peft_model

    settings = check_lora(options)
    targets = settings["target_modules"]
    names = {name.rsplit(".", 1)[-1] for name, module in encoder.backbone.named_modules() if isinstance(module, nn.Linear)}
    missing = [] if targets == "all-linear" else sorted(set(targets) - names)
    if missing or not names:
        raise CsekitError(f"lora: target_modules {', '.join(missing) or targets} are not linear layers of "
                          f"{type(encoder.backbone).__name__}; it has {', '.join(sorted(names)) or 'none'}")  # fmt: skip
    if targets == "all-linear":  # peft's 'all-linear' needs a model with an output layer: name them instead
        targets = sorted(names)
    config = LoraConfig(r=settings["r"], lora_alpha=settings["alpha"], lora_dropout=settings["dropout"],
                        target_modules=targets, bias="none")  # fmt: skip
    encoder.backbone = get_peft_model(encoder.backbone, config)
    config.base_model_name_or_path = _reference(base_model)  # get_peft_model sets the backbone's own name
    return encoder


def enable_gradient_checkpointing(encoder: SentenceEncoder) -> None:
    """Recompute each backbone layer's activations in backward instead of keeping them (same loss and gradients)."""
    model = _base(encoder.backbone)
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise CsekitError(f"gradient_checkpointing: {type(model).__name__} does not support it")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()  # frozen embeddings: the adapters after them still get gradients


def is_lora(encoder: SentenceEncoder) -> bool:
    from peft import PeftModel

    return isinstance(encoder.backbone, PeftModel)


def merged(encoder: SentenceEncoder) -> SentenceEncoder:
    """A copy of ``encoder`` whose backbone has the adapters merged into its weights (a plain model)."""
    copied = copy.deepcopy(encoder)
    copied.backbone = copied.backbone.merge_and_unload()
    return copied


def adapter_base(folder: str | os.PathLike) -> str | None:
    """The base model an adapter folder was trained on (None: not an adapter folder)."""
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        return None
    base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise CsekitError(f"{folder}: {ADAPTER_CONFIG} names no base_model_name_or_path, so its base model is unknown")
    return base


def load_adapter(backbone: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """``backbone`` (the base model) with the adapters of ``folder`` on it."""
    from peft import PeftModel

    return PeftModel.from_pretrained(backbone, str(folder))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _base(backbone: nn.Module) -> nn.Module:
    """The transformers model inside a PeftModel (or the backbone itself)."""
    get_base = getattr(backbone, "get_base_model", None)
    return get_base() if callable(get_base) else backbone


def _reference(base_model: str) -> str:
    """A local folder (``FOLDER#gguf=FILE`` too) with an absolute path, so the adapter folder is read from
    anywhere; a hub id as it is."""
    folder, gguf_file = split_reference(base_model)
    if not os.path.isdir(folder):
        return base_model
    return str(Path(folder).resolve()) + (f"{GGUF_MARK}{gguf_file}" if gguf_file else "")
