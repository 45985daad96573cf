"""Load sentence-transformers folders (see :mod:`csekit.models.saving` for what a csekit folder holds) and
plain Hugging Face encoders. Weights are read from safetensors, or from ``.bin`` files with
``weights_only=True`` only; module paths that leave the folder are refused."""

from __future__ import annotations

import json
import os
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from safetensors.torch import load_file

from csekit.errors import CsekitError
from csekit.models.decoder import split_reference
from csekit.models.encoder import SentenceEncoder, check_model_reference
from csekit.models.modules import AffineMap, MLPHead, dense_activation
from csekit.models.pooling import POOLERS, Pooler, check_pooler
from csekit.models.prefix import DeepPrefix
from csekit.models.saving import CSEKIT_CONFIG, PREFIX_FILE
from csekit.models.static import StaticEncoder, load_static

#: Module kinds (the last part of ``type``) that make up a saved pooler after the Transformer; the
#: last two are the input stand-ins that format 1 folders named.
_POOLING_KINDS = {"Pooling", "WeightedLayerPooling", "DittoPooling", "MaskTokenPooling"}


def load_encoder(
    name_or_path: str | os.PathLike, *, pooler: str | None = None, max_length: int | None = None,
    pretrained_head: bool = True, truncate_dim: int | None = None, layers: int | None = None,
) -> SentenceEncoder | StaticEncoder:  # fmt: skip
    """Load a sentence-transformers folder or a plain Hugging Face encoder (local folder or hub id).

    ``truncate_dim`` keeps a prefix of each embedding (default: the saved ``truncate_dim``, else all of it;
    ``.truncate(None)`` on the result gives the full width back); ``layers`` cuts the backbone to its first k transformer blocks
    (a 2D Matryoshka model used shallower). Both are checked against the model (one-line errors naming the range).

    For a sentence-transformers model the saved pooler is used unless ``pooler`` overrides it; a plain
    decoder (a causal LM, ``FOLDER#gguf=FILE`` for a GGUF file) gets ``pooler`` or ``last_token``; a plain
    encoder gets ``pooler`` or, by default, ``cls`` (SimCSE's default), whose head starts from the
    checkpoint's own pooler when ``pretrained_head`` (SimCSE's evaluation of a raw model) and fresh
    otherwise (SimCSE's training). A ``StaticEmbedding`` folder is a :class:`StaticEncoder`, which has no
    pooler to choose.
    """
    encoder = _load(str(name_or_path), pooler=pooler, max_length=max_length, pretrained_head=pretrained_head)
    if isinstance(encoder, StaticEncoder) and (layers is not None or truncate_dim is not None):
        raise CsekitError(f"{name_or_path} is a static embedding model: a prefix or a layer count applies to "
                          "transformer encoders")  # fmt: skip
    if layers is not None:
        encoder.keep_layers(layers)
    if truncate_dim is not None:
        encoder.truncate(truncate_dim)
    return encoder


def _load(name_or_path: str, *, pooler: str | None, max_length: int | None,
          pretrained_head: bool) -> SentenceEncoder | StaticEncoder:  # fmt: skip
    if pooler is not None:
        check_pooler(pooler)
    if split_reference(name_or_path)[1] is not None:  # a GGUF checkpoint: a plain causal LM
        return SentenceEncoder.from_pretrained(name_or_path, pooler=pooler, max_length=max_length)
    check_model_reference(name_or_path)
    modules = _read_modules(name_or_path)
    if modules is None:
        return SentenceEncoder.from_pretrained(name_or_path, pooler=pooler, max_length=max_length,
                                               pretrained_head=pretrained_head)  # fmt: skip
    kinds = [_kind(module) for module in modules]
    if kinds[0] == "StaticEmbedding":
        if pooler is not None:
            raise CsekitError(f"{name_or_path} is a static embedding model: a mean of token vectors, with no pooler "
                              f"to choose (drop --pooler {pooler})")  # fmt: skip
        return load_static(name_or_path, modules, max_length=max_length)
    after = [module for module, kind in zip(modules[1:], kinds[1:]) if kind not in _POOLING_KINDS]
    head, outputs, normalize = None, [], False
    for module in after:  # the head (dense + tanh), output maps (Dense), Normalize, in that order
        kind, where = _kind(module), f"{name_or_path}/{module['path']}"
        if normalize:
            raise CsekitError(f"{name_or_path}: Normalize must be the last module")
        if kind == "Normalize":
            normalize = True
            continue
        if kind != "Dense":
            raise CsekitError(f"{name_or_path}: module {module['type']} is not one csekit can load")
        config = _read_json(name_or_path, f"{module['path']}/config.json") or {}
        weights = _dense_state(name_or_path, module["path"])
        if not dense_activation(config).endswith("Tanh"):
            outputs.append(AffineMap.from_stock(config, weights, where=where))
        elif head is None and not outputs:
            head = MLPHead.from_stock(config, weights, where=where)
        else:
            raise CsekitError(f"{where}: csekit loads one dense + tanh head, right after pooling")
    encoder, saved_name = load_input(name_or_path, modules, pooler=pooler, max_length=max_length, has_head=head is not None)
    if outputs and encoder.pooler.name != saved_name:
        raise CsekitError(f"{name_or_path}: its output map (whitening) was fitted after the {saved_name} pooler "
                          f"and cannot follow {encoder.pooler.name}; load it without a pooler override")  # fmt: skip
    if head is not None and encoder.pooler.wants_head:
        encoder.set_head(head, at_inference=True)
    encoder.set_outputs(outputs)
    encoder.normalize = normalize
    st_config = _read_json(name_or_path, "config_sentence_transformers.json") or {}
    return encoder.truncate(_saved_config(name_or_path).get("truncate_dim") or st_config.get("truncate_dim"))


def load_transformer(name_or_path: str | os.PathLike, *, purpose: str, **options: Any) -> SentenceEncoder:
    """:func:`load_encoder` for what needs the transformer itself (training, post-processing, distilling from
    it): a static model, which has none, is refused naming ``purpose``, whatever the other options."""
    if split_reference(str(name_or_path))[1] is not None:  # a GGUF checkpoint: a causal LM
        return load_encoder(name_or_path, **options)
    check_model_reference(str(name_or_path))
    modules = _read_modules(str(name_or_path))
    if modules and _kind(modules[0]) == "StaticEmbedding":
        raise CsekitError(f"{name_or_path} is a static embedding model (a table of token vectors, no transformer): "
                          f"{purpose} needs a transformer encoder")  # fmt: skip
    return load_encoder(name_or_path, **options)


def load_input(
    name_or_path: str, modules: list[dict] | None = None, *, pooler: str | None = None,
    max_length: int | None = None, has_head: bool = False,
) -> tuple[SentenceEncoder, str]:  # fmt: skip
    """The backbone, tokenizer and pooler of a saved folder (no head or output modules), and the name of
    the pooler it was saved with. ``pooler`` overrides it (keeping the saved settings when one of the two
    pooler classes derives from the other, e.g. ``mask`` and ``mask_denoised`` share the template)."""
    modules = modules if modules is not None else _read_modules(name_or_path) or []
    kinds = {_kind(module): module for module in modules}
    if not modules or _kind(modules[0]) not in ("Transformer", "PooledTransformer") or modules[0]["path"]:
        raise CsekitError(f"{name_or_path}: modules {list(kinds)} do not start with a Transformer at the folder's "
                          "root, which csekit needs")  # fmt: skip
    saved = _saved_config(name_or_path)
    saved_pooler = saved.get("pooler") or {"name": _infer_pooler(name_or_path, kinds, has_head=has_head)}
    saved_name, settings = saved_pooler["name"], {k: v for k, v in saved_pooler.items() if k != "name"}
    if saved_name not in POOLERS:
        raise CsekitError(f"{name_or_path}: {CSEKIT_CONFIG} names pooler {saved_name!r}, which csekit does not know "
                          f"(it knows {', '.join(POOLERS)})")  # fmt: skip
    name = pooler or saved_name
    if not _related(POOLERS[name], POOLERS[saved_name]):
        settings = {}
    st_config = _read_json(name_or_path, "sentence_bert_config.json") or {}
    max_length = max_length or saved.get("max_length") or st_config.get("max_seq_length")
    # A saved head replaces whatever head the pooler gets here, so none is read from the checkpoint then.
    encoder = SentenceEncoder.from_pretrained(name_or_path, pooler=name, pooler_settings=settings, max_length=max_length,
                                              pretrained_head=not has_head)  # fmt: skip
    if saved.get("prefix"):
        weights_file = _locate(name_or_path, PREFIX_FILE)
        if weights_file is None:
            raise CsekitError(f"{name_or_path}: {CSEKIT_CONFIG} names a prefix, but {PREFIX_FILE} is missing")
        encoder.set_prefix(DeepPrefix.load(weights_file, encoder.backbone.config))
    return encoder, saved_name


def _related(first: type[Pooler], second: type[Pooler]) -> bool:
    return issubclass(first, second) or issubclass(second, first)


def _saved_config(name_or_path: str) -> dict[str, Any]:
    """``csekit_config.json`` in the current format (format 1 folders are converted), or {}."""
    saved = _read_json(name_or_path, CSEKIT_CONFIG) or {}
    pooler = saved.get("pooler")
    if isinstance(pooler, str):  # format 1: a name, with the settings in other keys
        token_pooler = saved.get("token_pooler")
        if token_pooler:
            pooler = dict(token_pooler)
        else:
            pooler = {"name": pooler, **(saved.get("prompt") or {})}
    return {**saved, "pooler": pooler} if pooler else saved


def _infer_pooler(name_or_path: str, kinds: dict[str, dict], *, has_head: bool) -> str:
    """The csekit pooler a folder written by another tool computes."""
    if "Pooling" not in kinds:
        raise CsekitError(f"{name_or_path}: modules {list(kinds)} have no Pooling module and no {CSEKIT_CONFIG}")
    if "WeightedLayerPooling" in kinds:
        raise CsekitError(f"{name_or_path}: WeightedLayerPooling saved without {CSEKIT_CONFIG} is not supported")
    config = _read_json(name_or_path, f"{kinds['Pooling']['path']}/config.json") or {}
    modes = [key for key in ("cls_token", "mean_tokens", "max_tokens") if config.get(f"pooling_mode_{key}")]
    mode = config.get("pooling_mode") or (modes[0].split("_")[0] if len(modes) == 1 else None)
    if mode == "cls":
        return "cls" if has_head else "cls_before_pooler"
    if mode in ("mean", "max") and not has_head:
        return mode
    raise CsekitError(f"{name_or_path}: pooling {config} is not one of csekit's poolers")


def _read_modules(name_or_path: str) -> list[dict] | None:
    located = _locate(name_or_path, "modules.json")
    if located is None:
        return None
    modules = json.loads(Path(located).read_text(encoding="utf-8"))
    for module in modules:
        path = PurePosixPath(module.get("path", ""))
        if path.is_absolute() or ".." in path.parts:
            raise CsekitError(f"{name_or_path}: modules.json names a module path {str(path)!r} outside the model folder")
    return modules


def _kind(module: dict) -> str:
    return module["type"].rsplit(".", 1)[-1]


def _dense_state(name_or_path: str, subfolder: str) -> dict[str, torch.Tensor]:
    weights_file = _locate(name_or_path, f"{subfolder}/model.safetensors")
    if weights_file is not None:
        return load_file(weights_file)
    bin_file = _locate(name_or_path, f"{subfolder}/pytorch_model.bin")
    if bin_file is None:
        raise CsekitError(f"{name_or_path}/{subfolder}: no model.safetensors or pytorch_model.bin")
    return torch.load(bin_file, map_location="cpu", weights_only=True)


def _read_json(name_or_path: str, relative: str) -> Any:
    located = _locate(name_or_path, relative)
    return None if located is None else json.loads(Path(located).read_text(encoding="utf-8"))


def _locate(name_or_path: str, relative: str) -> str | None:
    """A file of a local folder or a hub repository, or None when the model has no such file."""
    if os.path.isdir(name_or_path):
        candidate = os.path.join(name_or_path, relative)
        return candidate if os.path.isfile(candidate) else None
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(name_or_path, relative)
    except EntryNotFoundError:
        return None
    except Exception as error:  # network, auth, unknown repo: say which model and why
        raise CsekitError(f"cannot load model {name_or_path!r} from the Hugging Face hub: {error}") from None
