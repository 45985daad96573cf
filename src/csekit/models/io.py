"""Save and load encoders as sentence-transformers folders.

A saved folder is what ``SentenceTransformer(path)`` loads with no csekit installed::

    modules.json                      Transformer -> [WeightedLayerPooling] -> Pooling -> [Dense] -> [Dense] -> [Normalize]
    config.json, model.safetensors,   the backbone (Transformer module, path "")
    tokenizer files, sentence_bert_config.json
    1_WeightedLayerPooling/           first_last_avg / last2avg / layer_mean as fixed 0-1 layer weights
    N_Pooling/config.json             cls, mean or max
    N_Dense/                          the MLP head (dense + tanh), when it is kept at inference
    N_Dense/                          whitening (csekit.postprocess): an affine map, identity activation
    csekit_config.json                the pooler's csekit name (and token pooler settings), so csekit reloads it exactly

Every pooler maps onto stock sentence-transformers modules, so no custom code is needed to load, except
Ditto (csekit.postprocess.ditto): it needs attention weights that no stock module passes on, so its folder
names a ``csekit.postprocess.ditto.DittoPooling`` module in place of Pooling, which sentence-transformers
refuses to load with a message, and which csekit reloads exactly from ``csekit_config.json``.
The prompt poolers (``mask``, ``mask_denoised``: csekit.models.prompt) likewise: no stock module wraps
a sentence in a template or pools at its [MASK] token, so the folder names a
``csekit.models.prompt.MaskTokenPooling`` stand-in, and ``csekit_config.json`` keeps the template.
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
from csekit.models.pooling import POOLERS, check_pooler
from csekit.models.prompt import Prompt

CSEKIT_CONFIG = "csekit_config.json"
_ST = "sentence_transformers.models."
_POOLING_MODE = {"cls": "cls", "cls_before_pooler": "cls", "mean": "mean", "max": "max",
                 "first_last_avg": "mean", "last2avg": "mean", "layer_mean": "mean"}  # fmt: skip
# Token poolers of csekit.postprocess that io.py saves: layer means map onto stock modules, Ditto does not.
_LAYER_MEAN, _DITTO = "layer_mean", "ditto"
_DITTO_MODULE = "csekit.postprocess.ditto.DittoPooling"
_PROMPT_MODULE = "csekit.models.prompt.MaskTokenPooling"
_IDENTITY, _TANH = "torch.nn.modules.linear.Identity", "torch.nn.modules.activation.Tanh"


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
    backbone, hidden = encoder.backbone, encoder.backbone.config.hidden_size
    # The stock Transformer module hands all layers to WeightedLayerPooling only when the saved
    # config asks for hidden states; the live model keeps the flag off (it would slow training).
    averaged_layers = _averaged_layers(encoder)
    needs_layers = averaged_layers is not None
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

    def add(kind: str, config: dict[str, Any], weights: dict[str, torch.Tensor] | None = None, *,
            module_type: str | None = None) -> None:  # fmt: skip
        index = len(modules)
        sub = f"{index}_{kind}"
        (folder / sub).mkdir()
        _write_json(folder / sub / "config.json", config)
        if weights is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, folder / sub / "model.safetensors")
        modules.append({"idx": index, "name": str(index), "path": sub, "type": module_type or _ST + kind})

    if needs_layers:  # the equal-weight mean of hidden_states[i] for i in averaged_layers
        layers, start = backbone.config.num_hidden_layers, min(averaged_layers)
        weights = [1.0 if i in averaged_layers else 0.0 for i in range(start, layers + 1)]
        config = {"word_embedding_dimension": hidden, "layer_start": start, "num_hidden_layers": layers}
        add("WeightedLayerPooling", config, {"layer_weights": torch.tensor(weights)})
    if encoder.pooler == _DITTO:  # no stock module computes it: a stand-in that refuses to load (see ditto.py)
        add("DittoPooling", encoder.token_pooler.config(), module_type=_DITTO_MODULE)
    elif encoder.prompt is not None:  # likewise for the template and [MASK] pooling (see prompt.py)
        add("MaskTokenPooling", {"pooler": encoder.pooler, **encoder.prompt.to_dict()}, module_type=_PROMPT_MODULE)
    else:
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
    if encoder.whitening is not None:  # an affine map: a Dense with identity activation
        linear = encoder.whitening
        config = {"in_features": linear.in_features, "out_features": linear.out_features, "bias": True,
                  "activation_function": _IDENTITY}  # fmt: skip
        add("Dense", config, {"linear.weight": linear.weight, "linear.bias": linear.bias})
    if encoder.normalize:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": f"{len(modules)}_Normalize",
                        "type": _ST + "Normalize"})  # fmt: skip
        (folder / modules[-1]["path"]).mkdir()
    _write_json(folder / "modules.json", modules)
    # A saved cls model without its head is cls_before_pooler, which is what it computes.
    pooler = "cls_before_pooler" if encoder.pooler == "cls" and not keeps_head else encoder.pooler
    saved: dict[str, Any] = {"pooler": pooler, "max_length": encoder.max_length}
    if encoder.token_pooler is not None:
        saved["token_pooler"] = encoder.token_pooler.config()
    if encoder.whitening is not None:
        saved["whitening"] = {"dim": encoder.whitening.out_features}
    if encoder.prompt is not None:
        saved["prompt"] = encoder.prompt.to_dict()
    _write_json(folder / CSEKIT_CONFIG, saved)


def _averaged_layers(encoder: SentenceEncoder) -> tuple[int, ...] | None:
    """The hidden states (0 = embedding output) whose mean the pooler pools, for a layer-averaging pooler."""
    layers = encoder.backbone.config.num_hidden_layers
    if encoder.pooler == "first_last_avg":
        return (1, layers)
    if encoder.pooler == "last2avg":
        return (layers - 1, layers)
    if encoder.pooler == _LAYER_MEAN:
        return tuple(encoder.token_pooler.layers)
    return None


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
    poolings = {"Pooling", "DittoPooling", "MaskTokenPooling"}
    unsupported = set(kinds) - {"Transformer", "WeightedLayerPooling", "Dense", "Normalize"} - poolings
    if unsupported or "Transformer" not in kinds or not poolings & set(kinds):
        raise CsekitError(
            f"{name_or_path}: modules {sorted(kinds)} are not a Transformer + Pooling encoder csekit can load"
        )
    if kinds["Transformer"]["path"]:
        raise CsekitError(f"{name_or_path}: the Transformer module must sit at the folder's root")

    saved = _read_json(name_or_path, CSEKIT_CONFIG) or {}
    if "MaskTokenPooling" in kinds and "prompt" not in saved:
        raise CsekitError(f"{name_or_path}: a MaskTokenPooling module needs the prompt saved in {CSEKIT_CONFIG}")
    head_module, affine_module = _split_dense(name_or_path, modules)
    saved_pooler = saved.get("pooler") or _infer_pooler(name_or_path, kinds, has_head=head_module is not None)
    token_config = saved.get("token_pooler") if pooler is None else None  # a pooler override replaces it
    if saved_pooler not in POOLERS and token_config is None and pooler is None:
        raise CsekitError(f"{name_or_path}: {CSEKIT_CONFIG} names pooler {saved_pooler!r} without its settings")
    st_config = _read_json(name_or_path, "sentence_bert_config.json") or {}
    max_length = max_length or saved.get("max_length") or st_config.get("max_seq_length")
    base_pooler = pooler or ("mean" if token_config is not None else saved_pooler)
    encoder = SentenceEncoder.from_pretrained(name_or_path, pooler=base_pooler, max_length=max_length)
    hidden = encoder.backbone.config.hidden_size
    if encoder.prompt is not None and "prompt" in saved:  # the saved template, also under a mask pooler override
        encoder.prompt = Prompt.from_dict(saved["prompt"], encoder.tokenizer)
    if token_config is not None:
        from csekit.postprocess import token_pooler_from_config, use_token_pooler  # postprocess builds on models

        use_token_pooler(encoder, token_pooler_from_config(token_config))
    if encoder.pooler == "cls" and head_module is not None:
        encoder.head = _load_head(name_or_path, head_module["path"], hidden)
    if affine_module is not None:  # BERT-whitening (or any affine map a folder applies after pooling)
        if encoder.pooler != saved_pooler:
            raise CsekitError(f"{name_or_path}: its affine map (whitening) was fitted after the {saved_pooler} "
                              f"pooler and cannot follow {encoder.pooler}; load it without a pooler override")  # fmt: skip
        encoder.whitening = _load_affine(name_or_path, affine_module["path"], hidden)
    encoder.normalize = "Normalize" in kinds
    return encoder


def _split_dense(name_or_path: str, modules: list[dict]) -> tuple[dict | None, dict | None]:
    """The Dense modules: (the tanh head, the affine map after it), each None when absent."""
    dense = [module for module in modules if module["type"].rsplit(".", 1)[-1] == "Dense"]
    activations = [(_read_json(name_or_path, f"{m['path']}/config.json") or {}).get("activation_function", _TANH)
                   for m in dense]  # fmt: skip
    head = [m for m, activation in zip(dense, activations) if not activation.endswith("Identity")]
    affine = [m for m, activation in zip(dense, activations) if activation.endswith("Identity")]
    if len(head) > 1 or len(affine) > 1 or (head and affine and dense.index(affine[0]) < dense.index(head[0])):
        raise CsekitError(f"{name_or_path}: csekit loads at most a dense + tanh head then one affine Dense, got "
                          f"activations {activations}")  # fmt: skip
    return (head[0] if head else None), (affine[0] if affine else None)


def _infer_pooler(name_or_path: str, kinds: dict[str, dict], *, has_head: bool) -> str:
    """The csekit pooler a folder written by another tool computes."""
    config = _read_json(name_or_path, f"{kinds['Pooling']['path']}/config.json") or {}
    modes = [key for key in ("cls_token", "mean_tokens", "max_tokens") if config.get(f"pooling_mode_{key}")]
    mode = config.get("pooling_mode") or (modes[0].split("_")[0] if len(modes) == 1 else None)
    if "WeightedLayerPooling" in kinds:
        raise CsekitError(f"{name_or_path}: WeightedLayerPooling saved without {CSEKIT_CONFIG} is not supported")
    if mode == "cls":
        return "cls" if has_head else "cls_before_pooler"
    if mode in ("mean", "max") and not has_head:
        return mode
    raise CsekitError(f"{name_or_path}: pooling {config} is not one of csekit's poolers")


def _load_head(name_or_path: str, subfolder: str, hidden: int) -> MLPHead:
    config = _read_json(name_or_path, f"{subfolder}/config.json") or {}
    activation = config.get("activation_function", "")
    if config.get("in_features") != hidden or config.get("out_features") != hidden or not activation.endswith("Tanh"):
        raise CsekitError(f"{name_or_path}/{subfolder}: only a square dense + tanh head is supported, got {config}")
    state = _dense_state(name_or_path, subfolder)
    head = MLPHead(hidden)
    head.dense.load_state_dict({"weight": state["linear.weight"], "bias": state["linear.bias"]})
    return head


def _load_affine(name_or_path: str, subfolder: str, hidden: int) -> torch.nn.Linear:
    config = _read_json(name_or_path, f"{subfolder}/config.json") or {}
    if config.get("in_features") != hidden or not config.get("bias", True):
        raise CsekitError(f"{name_or_path}/{subfolder}: an affine Dense must take the {hidden} pooled features "
                          f"and have a bias, got {config}")  # fmt: skip
    state = _dense_state(name_or_path, subfolder)
    linear = torch.nn.Linear(hidden, config["out_features"])
    linear.load_state_dict({"weight": state["linear.weight"], "bias": state["linear.bias"]})
    return linear.requires_grad_(False)


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
