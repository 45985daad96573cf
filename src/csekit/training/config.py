"""TrainConfig: every knob of a training run, as plain top-level keys of a YAML recipe.

A recipe is a YAML file of these keys; ``--set key=value`` overrides any of them. Unknown keys are
errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from csekit.errors import CsekitError


@dataclass
class TrainConfig:
    # --- what to train
    model: str = ""
    """Starting encoder: a Hugging Face hub id or local folder (e.g. bert-base-uncased)."""
    objective: str = "simcse"
    """Training objective, a name from ``csekit.objectives.OBJECTIVES``."""
    pooler: str = "cls"
    """Pooler (cls, cls_before_pooler, mean, max, first_last_avg, last2avg; mask, mask_denoised for prompts)."""
    mlp_only_train: bool = False
    """Use the cls pooler's MLP head in training only and drop it from the saved model (unsup SimCSE)."""
    dropout: float | None = None
    """Override the backbone's hidden and attention dropout (SimCSE's noise); None keeps the model's."""
    # --- the objective's options (each objective takes the ones it needs)
    temperature: float = 0.05
    """InfoNCE temperature tau (SimCSE: 0.05)."""
    hard_negative_weight: float = 0.0
    """Added to the logit of each anchor's own hard negative (SimCSE's ``hard_negative_weight``)."""
    mlm_weight: float = 0.0
    """Weight of the auxiliary masked-LM loss (SimCSE's ``do_mlm`` uses 0.1); 0 turns it off."""
    mlm_probability: float = 0.15
    """Share of tokens masked for the auxiliary MLM loss."""
    options: dict[str, Any] = field(default_factory=dict)
    """Method-specific options of the objective (e.g. ``dup_rate``, ``queue_size``); ``--set options.NAME=V``."""
    # --- data
    train_files: list[str] = field(default_factory=list)
    """Training files: .txt (one sentence a line), .csv/.tsv/.jsonl with the objective's columns."""
    max_length: int = 32
    """Tokens per sentence after truncation (SimCSE: 32)."""
    streaming: bool = False
    """Read the files again each epoch through a shuffle buffer instead of holding them in memory."""
    skip_bad_lines: bool = False
    """Count and skip malformed lines instead of stopping at the first one."""
    # --- optimisation
    batch_size: int = 64
    """Examples per optimizer step on each device (times gradient_accumulation)."""
    learning_rate: float = 3e-5
    """Peak AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to biases and LayerNorm weights)."""
    warmup_ratio: float = 0.0
    """Share of steps with a linear warmup; the rest decays linearly to 0 (SimCSE: no warmup)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 turns clipping off)."""
    epochs: int = 1
    """Passes over the data; ``max_steps`` ends the run earlier when set."""
    max_steps: int | None = None
    """Stop after this many optimizer steps."""
    gradient_accumulation: int = 1
    """Micro-batches per optimizer step (each one a separate contrastive batch)."""
    grad_cache_chunk: int | None = None
    """Embed the batch in chunks of this size with a gradient cache: big batches in little memory."""
    seed: int = 42
    """Seed for data order, dropout and initialisation."""
    precision: str = "auto"
    """auto (bf16 autocast on GPU, fp32 on CPU), fp32 or bf16."""
    device: str | None = None
    """cpu, cuda, cuda:1 ... (default: cuda when available)."""
    # --- evaluation, checkpoints, logs
    output_dir: str = "runs/simcse"
    """Where best/, final/, checkpoint/, metrics.jsonl and config.yaml go."""
    eval_steps: int = 125
    """Evaluate on the dev sets every this many steps and keep the best model (0: never)."""
    eval_tasks: str = "stsb"
    """Dev tasks for model selection: stsb, or stsb,sickr."""
    data_dir: str | None = None
    """SentEval downstream/ folder for evaluation (default: $CSEKIT_DATA)."""
    save_steps: int | None = None
    """Write a resumable checkpoint every this many steps (default: eval_steps)."""
    logging_steps: int = 10
    """Append training metrics to metrics.jsonl every this many steps."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs the tensorboard package)."""

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, source: str = "config") -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CsekitError(f"{source}: unknown key(s) {', '.join(unknown)}; see `csekit train --help-keys`")
        hints = typing.get_type_hints(cls)
        return cls(**{key: _coerce(value, hints[key], key, source) for key, value in values.items()})

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] = ()) -> TrainConfig:
        path = Path(path)
        if not path.is_file():
            raise CsekitError(f"recipe {path} does not exist")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise CsekitError(f"{path}: not valid YAML: {error}") from None
        if not isinstance(values, dict):
            raise CsekitError(f"{path}: a recipe is a mapping of keys to values")
        for override in overrides:
            key, sep, text = override.partition("=")
            if not sep:
                raise CsekitError(f"--set {override!r}: expected key=value")
            key, value = key.strip(), yaml.safe_load(text) if text.strip() else None
            if key.startswith("options."):  # one objective option, e.g. options.dup_rate=0.3
                values["options"] = {**(values.get("options") or {}), key.removeprefix("options."): value}
            else:
                values[key] = value
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> str:
        """One line per key: name, default and its docstring (for ``--help-keys``)."""
        docs = _field_docs(cls)
        return "\n".join(f"{f.name:<24} {_default(f)!s:<14} {docs.get(f.name, '')}" for f in dataclasses.fields(cls))


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check a YAML value against the field type; accept ints for floats and one path for a list."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        hint = next(arg for arg in args if arg is not type(None))
        origin = typing.get_origin(hint)
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise CsekitError(f"{source}: {key} must be a mapping of names to values, got {value!r}")
        return {str(name): item for name, item in value.items()}
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [str(item) for item in items]
    if hint is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        try:  # YAML reads 3e-5 (no dot) as a string; users write it that way
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise CsekitError(f"{source}: {key} must be {hint.__name__}, got {value!r}")
    return value


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _field_docs(cls: type) -> dict[str, str]:
    """The string literal under each field (attribute docstrings) from the class source."""
    import ast
    import inspect
    import itertools

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, following in itertools.pairwise(body):
        if isinstance(node, ast.AnnAssign) and isinstance(following, ast.Expr):
            if isinstance(following.value, ast.Constant) and isinstance(following.value.value, str):
                docs[node.target.id] = following.value.value
    return docs
