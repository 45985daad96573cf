"""Save and load encoders as sentence-transformers folders.

A saved folder is what ``SentenceTransformer(path)`` loads with no csekit installed::

    modules.json                      Transformer -> [WeightedLayerPooling] -> Pooling -> [Dense] -> [Normalize]
    config.json, model.safetensors,   the backbone (Transformer module, path "")
    tokenizer files, sentence_bert_config.json
    1_WeightedLayerPooling/           first_last_avg / last2avg as fixed layer weights
    N_Pooling/config.json             cls, mean or max
    N_Dense/                          the MLP head (dense + tanh), when it is kept at inference
    csekit_config.json                the pooler's csekit name, so csekit reloads it exactly

Every pooler maps onto stock sentence-transformers modules, so no custom code is needed to load.
Weights are read from safetensors, or from ``.bin`` files with ``weights_only=True`` only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from csekit.atomic import replace_dir
from csekit.errors import CsekitError
from csekit.models.encoder import MLPHead, SentenceEncoder, check_model_reference
from csekit.models.pooling import NEEDS_HIDDEN_STATES, check_pooler

CSEKIT_CONFIG = "csekit_config.json"
_ST = "sentence_transformers.models."
_POOLING_MODE = {"cls": "cls", "cls_before_pooler": "cls", "mean": "mean", "max": "max",
                 "first_last_avg": "mean", "last2avg": "mean"}  # fmt: skip


# ---------------------------------------------------------------------------------------- save
def save_encoder(encoder: SentenceEncoder, path: str | os.PathLike) -> None:
    """Write ``encoder`` as a sentence-transformers folder; the folder appears whole or not at all."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _write_folder(encoder, staging)
        replace_dir(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_folder(encoder: SentenceEncoder, folder: Path) -> None:
    backbone, hidden = encoder.backbone, encoder.embedding_dim
    # The stock Transformer module hands all layers to WeightedLayerPooling only when the saved
    # config asks for hidden states; the live model keeps the flag off (it would slow training).
    needs_layers = encoder.pooler in NEEDS_HIDDEN_STATES
    previous_flag = backbone.config.output_hidden_states
    backbone.config.output_hidden_states = needs_layers
    try:
        backbone.save_pretrained(folder, safe_serialization=True)
    finally:
        backbone.config.output_hidden_states = previous_flag
    encoder.tokenizer.save_pretrained(folder)
    _write_json(folder / "sentence_bert_config.json", {"max_seq_length": encoder.max_length, "do_lower_case": False})
    _write_json(folder / "config_sentence_transformers.json", {"similarity_fn_name": "cosine"})

    modules: list[dict[str, Any]] = [{"idx": 0, "name": "0", "path": "", "type": _ST + "Transformer"}]

    def add(kind: str, config: dict[str, Any], weights: dict[str, torch.Tensor] | None = None) -> None:
        index = len(modules)
        sub = f"{index}_{kind}"
        (folder / sub).mkdir()
        _write_json(folder / sub / "config.json", config)
        if weights is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, folder / sub / "model.safetensors")
        modules.append({"idx": index, "name": str(index), "path": sub, "type": _ST + kind})

    if needs_layers:
        layers = backbone.config.num_hidden_layers
        if encoder.pooler == "last2avg":  # hidden_states[L-1] and [L], equally weighted
            start, weights = layers - 1, [1.0, 1.0]
        else:  # first_last_avg: hidden_states[1] and [L]
            start, weights = 1, [1.0] + [0.0] * (layers - 2) + [1.0]
        config = {"word_embedding_dimension": hidden, "layer_start": start, "num_hidden_layers": layers}
        add("WeightedLayerPooling", config, {"layer_weights": torch.tensor(weights)})
    mode = _POOLING_MODE[encoder.pooler]
    add("Pooling", {
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
    })  # fmt: skip
    keeps_head = encoder.head is not None and encoder.head_at_inference
    if keeps_head:
        config = {"in_features": hidden, "out_features": hidden, "bias": True,
                  "activation_function": "torch.nn.modules.activation.Tanh"}  # fmt: skip
        dense = encoder.head.dense
        add("Dense", config, {"linear.weight": dense.weight, "linear.bias": dense.bias})
    if encoder.normalize:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": f"{len(modules)}_Normalize",
                        "type": _ST + "Normalize"})  # fmt: skip
        (folder / modules[-1]["path"]).mkdir()
    _write_json(folder / "modules.json", modules)
    # A saved cls model without its head is cls_before_pooler, which is what it computes.
    pooler = "cls_before_pooler" if encoder.pooler == "cls" and not keeps_head else encoder.pooler
    _write_json(folder / CSEKIT_CONFIG, {"pooler": pooler, "max_length": encoder.max_length})


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------- load
def load_encoder(name_or_path: str, *, pooler: str | None = None, max_length: int | None = None) -> SentenceEncoder:
    """Load a sentence-transformers folder or a plain Hugging Face encoder (local folder or hub id).

    For a sentence-transformers model the saved pooler is used unless ``pooler`` overrides it; a plain
    encoder gets ``pooler`` or, by default, ``cls`` (SimCSE's default).
    """
    name_or_path = str(name_or_path)
    check_model_reference(name_or_path)
    if pooler is not None:
        check_pooler(pooler)
    modules_file = _locate(name_or_path, "modules.json")
    if modules_file is None:
        return SentenceEncoder.from_pretrained(name_or_path, pooler=pooler or "cls", max_length=max_length)

    modules = json.loads(Path(modules_file).read_text(encoding="utf-8"))
    kinds = {module["type"].rsplit(".", 1)[-1]: module for module in modules}
    unsupported = set(kinds) - {"Transformer", "WeightedLayerPooling", "Pooling", "Dense", "Normalize"}
    if unsupported or "Transformer" not in kinds or "Pooling" not in kinds:
        raise CsekitError(
            f"{name_or_path}: modules {sorted(kinds)} are not a Transformer + Pooling encoder csekit can load"
        )
    if kinds["Transformer"]["path"]:
        raise CsekitError(f"{name_or_path}: the Transformer module must sit at the folder's root")

    saved = _read_json(name_or_path, CSEKIT_CONFIG) or {}
    saved_pooler = saved.get("pooler") or _infer_pooler(name_or_path, kinds)
    st_config = _read_json(name_or_path, "sentence_bert_config.json") or {}
    max_length = max_length or saved.get("max_length") or st_config.get("max_seq_length")
    encoder = SentenceEncoder.from_pretrained(name_or_path, pooler=pooler or saved_pooler, max_length=max_length)
    if encoder.pooler == "cls" and "Dense" in kinds:
        encoder.head = _load_head(name_or_path, kinds["Dense"]["path"], encoder.embedding_dim)
    encoder.normalize = "Normalize" in kinds
    return encoder


def _infer_pooler(name_or_path: str, kinds: dict[str, dict]) -> str:
    """The csekit pooler a folder written by another tool computes."""
    config = _read_json(name_or_path, f"{kinds['Pooling']['path']}/config.json") or {}
    modes = [key for key in ("cls_token", "mean_tokens", "max_tokens") if config.get(f"pooling_mode_{key}")]
    mode = config.get("pooling_mode") or (modes[0].split("_")[0] if len(modes) == 1 else None)
    if "WeightedLayerPooling" in kinds:
        raise CsekitError(f"{name_or_path}: WeightedLayerPooling saved without {CSEKIT_CONFIG} is not supported")
    if mode == "cls":
        return "cls" if "Dense" in kinds else "cls_before_pooler"
    if mode in ("mean", "max") and "Dense" not in kinds:
        return mode
    raise CsekitError(f"{name_or_path}: pooling {config} is not one of csekit's poolers")


def _load_head(name_or_path: str, subfolder: str, hidden: int) -> MLPHead:
    config = _read_json(name_or_path, f"{subfolder}/config.json") or {}
    activation = config.get("activation_function", "")
    if config.get("in_features") != hidden or config.get("out_features") != hidden or not activation.endswith("Tanh"):
        raise CsekitError(f"{name_or_path}/{subfolder}: only a square dense + tanh head is supported, got {config}")
    weights_file = _locate(name_or_path, f"{subfolder}/model.safetensors")
    if weights_file is not None:
        state = load_file(weights_file)
    else:
        bin_file = _locate(name_or_path, f"{subfolder}/pytorch_model.bin")
        if bin_file is None:
            raise CsekitError(f"{name_or_path}/{subfolder}: no model.safetensors or pytorch_model.bin")
        state = torch.load(bin_file, map_location="cpu", weights_only=True)
    head = MLPHead(hidden)
    head.dense.load_state_dict({"weight": state["linear.weight"], "bias": state["linear.bias"]})
    return head


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
