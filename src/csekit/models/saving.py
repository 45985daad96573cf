"""Save and load encoders as sentence-transformers folders.

A saved folder is a sequence of modules, each written by the stage that computes it::

    modules.json                      input -> [pooling modules] -> [head Dense] -> [output Dense ...] -> [Normalize]
    config.json, model.safetensors,   the backbone and tokenizer, at the folder's root
    tokenizer files, sentence_bert_config.json
    N_<Kind>/                         each further module's config.json (and model.safetensors)
    csekit_config.json                the pooler's name and settings, so csekit reloads it exactly, and the
                                      prefix a Matryoshka model is used at (``truncate_dim``, which
                                      config_sentence_transformers.json carries for sentence-transformers)
    prefix/model.safetensors          a deep prefix's keys and values for every layer (PromCSE), when the model has one
    <head>/                           heads an objective trained with the model, outside the module
                                      sequence (Sentence-BERT's ``pair_classifier/``); each saves itself

The input module is the stock ``Transformer`` followed by the stock modules the pooler names
(:meth:`~csekit.models.pooling.Pooler.stock_modules`: ``Pooling``, ``WeightedLayerPooling``), which any
sentence-transformers installation loads. A pooler that no stock module can express (a prompt template,
Ditto) or a model with a deep prefix (:mod:`csekit.models.prefix`) saves csekit's own input module instead (:mod:`csekit.models.st_module`), which
``SentenceTransformer(path, trust_remote_code=True)`` imports wherever csekit is installed. The head and
the output modules save themselves as stock ``Dense`` modules, ``normalize`` as ``Normalize``.
Weights are read from safetensors, or from ``.bin`` files with ``weights_only=True`` only; module paths
that leave the folder are refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from safetensors.torch import save_file

from csekit.atomic import replace_dir
from csekit.errors import CsekitError
from csekit.models.pooling import StockModule

if TYPE_CHECKING:
    from csekit.models.encoder import SentenceEncoder

CSEKIT_CONFIG = "csekit_config.json"
#: csekit's sentence-transformers input module, for poolers no stock module expresses.
INPUT_MODULE = "csekit.models.st_module.PooledTransformer"
#: A deep prefix's weights, inside the folder.
PREFIX_FILE = "prefix/model.safetensors"
FORMAT = 2  # csekit_config.json: {"pooler": {"name": ..., settings}}; format 1 kept the pooler as a string


class SavedHead(Protocol):
    """A module trained with the model that saves itself into a folder (:class:`~csekit.models.pair_classifier.PairClassifier`)."""

    def save(self, folder: str | os.PathLike) -> None: ...


def save_encoder(encoder: SentenceEncoder, path: str | os.PathLike, *, heads: Mapping[str, SavedHead] | None = None) -> None:
    """Write ``encoder`` as a sentence-transformers folder, each of ``heads`` in its own subfolder (named by
    its key, beside the modules); the folder appears whole or not at all."""
    target = Path(path)
    check_model_target(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        modules = write_input(encoder, staging)
        if encoder.head is not None and encoder.head_at_inference:
            if not hasattr(encoder.head, "stock_module"):
                raise CsekitError(f"a {type(encoder.head).__name__} head is for training only: set mlp_only_train")
            modules.append(encoder.head.stock_module())
        modules += [module.stock_module() for module in encoder.outputs]
        if encoder.normalize:
            modules.append(StockModule("Normalize"))
        write_modules(staging, modules)
        for name, head in (heads or {}).items():
            if (staging / name).exists():
                raise CsekitError(f"a head cannot be saved as {name}/: the model's own files use that name")
            head.save(staging / name)
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_model_target(target: Path) -> None:
    """A model is saved only where nothing but an earlier csekit model would be replaced."""
    if target.exists() and not target.is_dir():
        raise CsekitError(f"cannot save a model to {target}: it is a file")
    if target.is_dir() and any(target.iterdir()) and not (target / CSEKIT_CONFIG).is_file():
        raise CsekitError(f"cannot save a model to {target}: the folder holds files csekit did not write (a model "
                          "saved by csekit is replaced; anything else is kept): give a new or empty folder")  # fmt: skip


def write_input(encoder: SentenceEncoder, folder: Path) -> list[StockModule]:
    """Backbone, tokenizer and pooler settings into ``folder``; returns the input's module entries."""
    backbone, config = encoder.backbone, encoder.backbone.config
    # A decoder needs left padding with position ids from the first real token, which the stock Transformer
    # module does not give: its folder always names csekit's input module.
    stock = None if encoder.is_decoder else encoder.pooler.stock_modules(config.hidden_size, config.num_hidden_layers)
    # The stock Transformer module hands all layers on only when the saved config asks for hidden
    # states; the live model keeps the flag off (it would slow training).
    previous_flag = config.output_hidden_states
    config.output_hidden_states = stock is not None and encoder.pooler.needs_hidden_states
    try:
        backbone.save_pretrained(folder, safe_serialization=True)
    finally:
        config.output_hidden_states = previous_flag
    encoder.tokenizer.save_pretrained(folder)
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": encoder.max_length, "do_lower_case": False})
    # sentence-transformers truncates after its last module: with a Normalize module its rows are then
    # shorter than 1 (encode(normalize_embeddings=True) renormalises them, as csekit does); cosines agree.
    truncation = {"truncate_dim": encoder.truncate_dim} if encoder.truncate_dim is not None else {}
    _write_json(folder / "config_sentence_transformers.json", {"similarity_fn_name": "cosine", **truncation})
    prefix = {} if encoder.prefix is None else {"prefix": {"length": encoder.prefix.length, "path": PREFIX_FILE}}
    if encoder.prefix is not None:
        encoder.prefix.save(folder / PREFIX_FILE)
    _write_json(folder / CSEKIT_CONFIG, {"format": FORMAT, "pooler": saved_pooler(encoder), "max_length": encoder.max_length,
                                         "num_layers": config.num_hidden_layers, **truncation, **prefix})  # fmt: skip
    if stock is None or prefix:  # the stock Transformer module would run the backbone without the prefix
        return [StockModule("", type=INPUT_MODULE)]
    return [StockModule("Transformer"), *stock]


def saved_pooler(encoder: SentenceEncoder) -> dict[str, Any]:
    """``{"name": ..., settings}`` of what the saved model computes: a cls model whose head is for
    training only is ``cls_before_pooler``."""
    name = encoder.pooler.name
    if encoder.pooler.wants_head and not (encoder.head is not None and encoder.head_at_inference):
        name = "cls_before_pooler"
    return {"name": name, **encoder.pooler.config()}


def write_modules(folder: Path, modules: list[StockModule]) -> None:
    entries = []
    for index, module in enumerate(modules):
        sub = "" if index == 0 else f"{index}_{module.kind}"  # the input module sits at the root
        if sub:
            (folder / sub).mkdir()
            if module.config:
                _write_json(folder / sub / "config.json", module.config)
            if module.weights is not None:
                tensors = {key: value.detach().cpu().contiguous() for key, value in module.weights.items()}
                save_file(tensors, folder / sub / "model.safetensors")
        entries.append({"idx": index, "name": str(index), "path": sub, "type": module.class_path})
    _write_json(folder / "modules.json", entries)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


