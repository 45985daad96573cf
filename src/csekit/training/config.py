"""TrainConfig: every knob of a training run, as plain top-level keys of a YAML recipe.

A recipe is a YAML file of these keys; ``--set key=value`` overrides any of them, ``--set
options.NAME=V`` one option of the objective and ``--set wrappers.mlm.weight=V`` one of a wrapper. The
whole recipe is checked when the config is built, before anything is written or loaded: unknown keys,
values of the wrong type, choices that do not exist (objective, pooler, wrapper, precision, tasks) and
method options that do not bind to the objective's signature are one-line errors (a typo must not
silently fall back to a default). Keys that moved since earlier recipes say where they went.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from csekit.data.labelled import refuse_held_out
from csekit.data.readers import source_files
from csekit.errors import CsekitError
from csekit.evaluation import EVALUATORS, EvaluationSettings, split_tasks
from csekit.models.lora import check_lora
from csekit.models.pooling import check_pooler
from csekit.objectives import check_recipe_options
from csekit.objectives.options import coerce

PRECISIONS = ("auto", "fp32", "bf16")
HEAD_INITS = ("fresh", "pretrained")
#: Keys a resumed run may change: they steer when things happen, not what is trained (a changed max_steps
#: or epochs recomputes the linear decay for the new total from the step reached).
RESUMABLE_CHANGES = frozenset({"max_steps", "epochs", "eval_steps", "save_steps", "logging_steps", "tensorboard",
                               "data_dir", "device", "skip_bad_lines", "max_bad_share", "teacher_cache"})  # fmt: skip
#: Recipe keys of earlier versions -> where they live now.
MOVED_KEYS = {
    "temperature": "options.temperature",
    "hard_negative_weight": "options.hard_negative_weight",
    "mlm_weight": "wrappers.mlm.weight",
    "mlm_probability": "wrappers.mlm.probability",
}


@dataclass
class TrainConfig:
    # --- what to train
    model: str = ""
    """Starting encoder: a Hugging Face hub id or local folder (e.g. bert-base-uncased)."""
    objective: str = "simcse"
    """Training objective, a name from ``csekit.objectives.OBJECTIVES``."""
    pooler: str = "cls"
    """Pooler (cls, cls_before_pooler, mean, max, first_last_avg, last2avg; mask, mask_denoised for prompts;
    last_token, prompteol, metaeol, echo, contrastive_prompting for decoders)."""
    mlp_only_train: bool = False
    """Use the cls pooler's MLP head in training only and drop it from the saved model (unsup SimCSE)."""
    dropout: float | None = None
    """Override the backbone's hidden and attention dropout (SimCSE's noise); None keeps the model's."""
    head_init: str = "fresh"
    """The cls head's start: fresh (SimCSE's MLP is new) or pretrained (the checkpoint's own pooler, e.g. BERT's)."""
    lora: dict[str, Any] | None = None
    """Train LoRA adapters instead of the backbone: ``{r: 8, alpha: 16, dropout: 0.05, target_modules: all-linear, save: adapter|merged}``."""
    gradient_checkpointing: bool = False
    """Recompute the backbone's activations in backward instead of keeping them (less memory, same gradients)."""
    fsdp: bool = False
    """Under torchrun, shard the backbone (each layer, then the root) across the ranks with FSDP2 instead of replicating it."""
    # --- the method
    options: dict[str, Any] = field(default_factory=dict)
    """The objective's options (e.g. ``temperature``, ``dup_rate``), checked against its signature; ``--set options.NAME=V``."""
    wrappers: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Wrappers around the objective, in order, with their options: ``{mlm: {weight: 0.1}}`` (SimCSE's do_mlm)."""
    # --- data
    train_files: list[str] = field(default_factory=list)
    """Training files: .txt (one sentence a line), .csv/.tsv/.jsonl with the objective's columns, or stsb:, sick:, snli: PATH."""
    max_length: int = 32
    """Tokens per sentence after truncation (SimCSE: 32)."""
    streaming: bool = False
    """Read the files again each epoch through a shuffle buffer instead of holding them in memory."""
    skip_bad_lines: bool = False
    """Count and skip malformed lines instead of stopping at the first one."""
    max_bad_share: float = 0.01
    """With skip_bad_lines, stop when more than this share of the lines is bad (a broken file, not a stray line)."""
    token_cache: bool = True
    """Keep the tokenized corpus on disk ($CSEKIT_TOKEN_CACHE, else ~/.cache/csekit/tokens): the next run reads it back."""
    embedding_files: dict[str, str] = field(default_factory=dict)
    """Precomputed embeddings per training example, ``{name: file.npy}``: a batch carries them as ``embeddings``."""
    teacher_cache: str | None = None
    """Folder of cached teacher embeddings (distillation objectives; default $CSEKIT_TEACHER_CACHE, else ~/.cache/csekit/teacher-embeddings)."""
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
    pack_rows: int | None = None
    """Pack the sentences of a batch into rows of this many tokens (block-diagonal attention): no compute on padding."""
    compile: bool = False
    """torch.compile the backbone (inductor; the first steps pay the compilation, about a minute on a CPU)."""
    device: str | None = None
    """cpu, cuda, cuda:1 ... (default: cuda when available)."""
    # --- evaluation, checkpoints, logs
    output_dir: str = "runs/simcse"
    """Where best/, final/, checkpoint/, metrics.jsonl and config.yaml go."""
    eval_steps: int = 125
    """Evaluate on the dev sets every this many steps and keep the best model (0: never)."""
    eval_tasks: str = "stsb"
    """Dev tasks for model selection, as csekit eval's --tasks (dev sets): stsb, stsb,sickr, align_uniform, ..."""
    eval_metric: str | None = None
    """The metric that selects best/, family/metric (default: the first family's headline, e.g. sts/avg)."""
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
        moved = [key for key in values if key in MOVED_KEYS]
        if moved:
            key = moved[0]
            raise CsekitError(f"{source}: {key} moved to {MOVED_KEYS[key]}: write it there "
                              f"(--set {MOVED_KEYS[key]}=...)")  # fmt: skip
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise CsekitError(f"{source}: unknown key(s) {', '.join(unknown)}; see `csekit train --help-keys`")
        hints = typing.get_type_hints(cls)
        config = cls(**{key: coerce(value, hints[key], f"{source}: {key}") for key, value in values.items()})
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        """Check choices and method options against the code (no model or data is loaded)."""
        try:
            check_pooler(self.pooler)
            self.lora = check_lora(self.lora)
            check_recipe_options(self.objective, self.options, self.wrappers)
            families = split_tasks(self.eval_tasks, EvaluationSettings(mode="dev"))
        except CsekitError as error:
            raise CsekitError(f"{source}: {error}") from None
        for key, value, choices in (("precision", self.precision, PRECISIONS), ("head_init", self.head_init, HEAD_INITS)):
            if value not in choices:
                raise CsekitError(f"{source}: {key} must be one of {', '.join(choices)}, not {value!r}")
        for key, ok, allowed in self._ranges():
            if not ok:
                raise CsekitError(f"{source}: {key} must be {allowed}, not {getattr(self, key)!r}")
        try:  # a test set named as training data is refused with the recipe, before anything loads
            for path in (file for spec in self.train_files for file in source_files(spec)):
                refuse_held_out(path)
        except CsekitError as error:
            raise CsekitError(f"{source}: {error}") from None
        if self.fsdp and self.save_steps:
            raise CsekitError(f"{source}: fsdp writes no resumable checkpoint of sharded weights: leave save_steps unset")
        first = next(iter(families))
        self.eval_metric = self.eval_metric or f"{first}/{EVALUATORS[first].primary_metric}"
        if self.eval_metric.split("/", 1)[0] not in families:
            raise CsekitError(f"{source}: eval_metric {self.eval_metric!r} is not a metric of eval_tasks "
                              f"{self.eval_tasks!r} (its families: {', '.join(families)})")  # fmt: skip

    def _ranges(self) -> list[tuple[str, bool, str]]:
        """(key, whether its value is allowed, what is allowed) for every numeric key."""
        optional = {"max_steps": self.max_steps, "grad_cache_chunk": self.grad_cache_chunk}
        return [
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("learning_rate", self.learning_rate > 0, "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("warmup_ratio", 0 <= self.warmup_ratio < 1, "in [0, 1)"),
            ("max_grad_norm", self.max_grad_norm >= 0, ">= 0 (0: no clipping)"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("gradient_accumulation", self.gradient_accumulation >= 1, ">= 1"),
            ("max_length", self.max_length >= 2, ">= 2 (a start and an end token)"),
            ("eval_steps", self.eval_steps >= 0, ">= 0 (0: never)"),
            ("logging_steps", self.logging_steps >= 1, ">= 1"),
            ("save_steps", self.save_steps is None or self.save_steps >= 0, ">= 0 or null (0, null: every eval_steps)"),
            ("dropout", self.dropout is None or 0 <= self.dropout < 1, "in [0, 1) or null"),
            ("max_bad_share", 0 <= self.max_bad_share <= 1, "in [0, 1]"),
            *((key, value is None or value >= 1, ">= 1 or null") for key, value in optional.items()),
        ]

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
            _set_dotted(values, key.split("."), value, override)
        return cls.from_dict(values, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def describe(cls) -> str:
        """One line per key: name, default and its docstring (for ``--help-keys``)."""
        docs = _field_docs(cls)
        return "\n".join(f"{f.name:<24} {_default(f)!s:<14} {docs.get(f.name, '')}" for f in dataclasses.fields(cls))


def check_resumable(saved: dict[str, Any], config: TrainConfig) -> None:
    """Refuse to resume a checkpoint of ``saved`` (its recipe) with a ``config`` that trains something else."""
    current = config.to_dict()
    changed = sorted(key for key, value in saved.items()
                     if key in current and key not in RESUMABLE_CHANGES and current[key] != value)  # fmt: skip
    if changed:
        details = "; ".join(f"{key} {saved[key]!r} -> {current[key]!r}" for key in changed[:4])
        raise CsekitError(f"the checkpoint was trained with other settings ({details}): a resumed run keeps them; "
                          f"only {', '.join(sorted(RESUMABLE_CHANGES))} may change")  # fmt: skip


def _set_dotted(values: dict[str, Any], path: list[str], value: Any, override: str) -> None:
    """``values[a][b] = value`` for ``a.b=value`` (options.dup_rate, wrappers.mlm.weight), making mappings on the way."""
    *parents, last = path
    target = values
    for name in parents:
        child = target.get(name)
        if child is None:
            child = target[name] = {}
        elif not isinstance(child, dict):
            raise CsekitError(f"--set {override!r}: {name} is not a mapping, so it has no key {last!r}")
        else:
            child = target[name] = dict(child)
        target = child
    target[last] = value


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
