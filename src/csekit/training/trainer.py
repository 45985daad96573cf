"""The training loop every objective plugs into (plain PyTorch).

AdamW with linear warmup and decay, gradient clipping and accumulation, bf16 autocast on GPU and fp32 on
CPU, dynamic padding over pre-tokenised data (by a background thread, a step ahead), the gradient cache
for big batches, and data parallelism under ``torchrun`` with negatives gathered across ranks (inside the
losses) and the gradient all-reduce overlapped with the last micro-batch's backward
(:mod:`csekit.training.gradient_sync`). Every ``eval_steps`` the model is scored on the dev sets and the
best one is kept, as SimCSE selects its models (any registered evaluator can select, by ``eval_metric``
and its direction); every ``save_steps`` a checkpoint is written from which ``resume=True`` continues
exactly. Big backbones train through LoRA adapters and with gradient checkpointing (:mod:`csekit.models.lora`),
and under ``torchrun`` sharded with FSDP2 (:mod:`csekit.training.fsdp`).
"""

from __future__ import annotations

import functools
import random
import sys
import time
from contextlib import closing, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from csekit.atomic import write_text
from csekit.data.batches import TrainingData
from csekit.distributed import get_rank, get_world_size, init_distributed
from csekit.errors import CsekitError, Interrupted
from csekit.evaluation import EvaluationSettings, Evaluator, build_evaluators, evaluate_all, flat_metrics
from csekit.inference.identity import tokenization_digest
from csekit.models import SentenceEncoder, load_transformer
from csekit.models.lora import add_lora, enable_gradient_checkpointing, merged
from csekit.objectives import Objective, RunContext, build_objective
from csekit.training import fsdp
from csekit.training.checkpoint import TrainState, load_checkpoint, read_state, save_checkpoint
from csekit.training.config import TrainConfig, check_resumable
from csekit.training.grad_cache import grad_cache_step
from csekit.training.gradient_sync import GradientSync
from csekit.training.metrics_log import MetricsLog
from csekit.training.prefetch import prefetched
from csekit.training.run_folder import RunLock, check_output, claim, tidy
from csekit.training.stop import StopRequests
from csekit.training.teacher_embeddings import precompute_teacher_embeddings


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    best_metric: float | None
    best_step: int | None
    examples_per_second: float


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> TrainResult:
    """Train ``config``; ``resume`` continues the run in its output_dir, ``overwrite`` replaces it."""
    config.validate()
    if not config.model:
        raise CsekitError("no model given: set `model` in the recipe or --set model=...")
    if not config.train_files:
        raise CsekitError("no training data given: set `train_files` in the recipe")
    output = Path(config.output_dir)
    device = init_distributed(config.device)
    rank = get_rank()
    if config.fsdp and resume:
        raise CsekitError("fsdp: sharded runs write no resumable checkpoint, so there is nothing to --resume")
    if rank == 0:
        check_output(output, resume=resume, overwrite=overwrite)
    with RunLock(output) if rank == 0 else nullcontext(), StopRequests() as stop:
        if rank == 0:
            tidy(output)
        saved = read_state(output / "checkpoint") if resume else None
        if saved is not None:
            check_resumable(saved.get("config") or _recorded_config(output), config)
        return _train(config, device, saved, stop, overwrite=overwrite)


def _train(config: TrainConfig, device: torch.device, saved: dict | None, stop: StopRequests, *,
           overwrite: bool) -> TrainResult:  # fmt: skip
    rank, world_size = get_rank(), get_world_size()
    output = Path(config.output_dir)
    _seed_everything(config.seed)
    encoder, objective = build_model(config, device)
    encoder.pack(config.pack_rows)
    sharded = config.fsdp and world_size > 1
    unsharded = fsdp.shard(encoder) if sharded else None  # rank 0's CPU copy, which saves the gathered weights
    if config.compile:  # in place: the parameters keep their names, so saving and checkpoints are unchanged
        encoder.backbone.compile()
    torch.manual_seed(config.seed + rank)  # ranks draw different dropout masks after a shared init

    data = TrainingData(
        config.train_files,
        columns=objective.columns,
        targets=objective.targets,
        tokenize=lambda texts: encoder.tokenize(texts, max_length=config.max_length),
        pad_token_id=encoder.pad_token_id,
        streaming=config.streaming,
        skip_bad_lines=config.skip_bad_lines,
        max_bad_share=config.max_bad_share,
        text_columns=objective.text_columns,
        embedding_files=config.embedding_files,
        tokenization=tokenization_digest(encoder, config.max_length) if config.token_cache else None,
    )
    if rank == 0 and not config.streaming:
        print(f"training data: {data.stats.summary()}", file=sys.stderr)
    precompute_teacher_embeddings(objective, data, folder=config.teacher_cache, given=list(config.embedding_files))
    batches_per_epoch = data.num_batches(config.batch_size, drop_last=True, world_size=world_size)
    total_steps = _total_steps(config, batches_per_epoch)
    parameters = _unique_trainable(encoder, objective)
    # A saved model is whole: under FSDP gathered (every rank takes part), written by rank 0.
    save = functools.partial(_save, config, sharded=sharded, unsharded=unsharded)
    optimizer = _adamw(_param_groups(parameters, config.weight_decay), config.learning_rate)
    warmup = int(config.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _linear_schedule(step, warmup, total_steps))
    state = TrainState()
    checkpoint_dir = output / "checkpoint"
    parts = {"encoder": encoder, "objective": objective, "optimizer": optimizer, "scheduler": scheduler}
    if saved is not None:
        state = load_checkpoint(checkpoint_dir, saved, **parts, rank=rank)
    if rank == 0:  # everything loaded: the folder is this run's now
        if saved is None:
            claim(output, overwrite=overwrite)
        # On resume, the keys that may change (max_steps, eval_steps, ...) as this run uses them.
        write_text(output / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    checkpoint = {**parts, "rank": rank, "world_size": world_size, "config": config.to_dict()}

    evaluators = None
    if config.eval_steps and (rank == 0 or sharded):  # a sharded forward needs every rank
        evaluators = build_evaluators(config.eval_tasks, EvaluationSettings(data_dir=config.data_dir, mode="dev"))
    logger = MetricsLog(output, tensorboard=config.tensorboard, enabled=rank == 0,
                        keep_through=state.step if saved is not None else None)  # fmt: skip
    autocast = _autocast(config.precision, device)
    save_steps = 0 if sharded else config.save_steps or config.eval_steps  # no resumable checkpoint of shards

    # A context, so that the bar is closed before any message and the message starts its own line.
    sync = GradientSync(fsdp.replicated(parameters) if sharded else parameters, world_size)
    with (tqdm(total=total_steps, initial=state.step, desc="train", disable=rank != 0, dynamic_ncols=True) as progress,
          closing(sync)):  # fmt: skip
        started, examples_at_start = time.perf_counter(), state.examples
        micro, accumulated = 0, {}
        while state.step < total_steps:
            epoch = data.batches(state.epoch, seed=config.seed, batch_size=config.batch_size,
                                 skip=state.batches_in_epoch, rank=rank, world_size=world_size,
                                 contiguous=objective.contiguous_batches)  # fmt: skip
            with closing(prefetched(epoch, device=device)) as batches:  # padded by a thread, a step ahead
                for batch in batches:
                    batch = _to_device(batch, device)
                    if micro + 1 == config.gradient_accumulation and not config.grad_cache_chunk:
                        sync.arm()  # the gradient cache runs backward chunk by chunk: it is reduced after
                    with autocast:
                        if config.grad_cache_chunk:
                            terms = grad_cache_step(objective, encoder, batch, config.grad_cache_chunk,
                                                    scale=1.0 / config.gradient_accumulation)  # fmt: skip
                        else:
                            embeddings = objective.embed(encoder, batch)
                            terms = objective.loss(embeddings, batch)
                            (sum(terms.values()) / config.gradient_accumulation).backward()
                            objective.after_micro_batch({key: value.detach() for key, value in embeddings.items()})
                    for name, value in terms.items():  # tensors: no device sync until a step is logged
                        accumulated[name] = accumulated.get(name, 0.0) + value.detach() / config.gradient_accumulation
                    state.batches_in_epoch += 1
                    state.examples += len(next(iter(batch.values()))["input_ids"])
                    micro += 1
                    if micro < config.gradient_accumulation:
                        continue
                    micro = 0
                    sync.finish()
                    clip = fsdp.clip_grad_norm if sharded else nn.utils.clip_grad_norm_
                    grad_norm = clip(parameters, config.max_grad_norm) if config.max_grad_norm else None
                    optimizer.step()
                    objective.after_step(encoder)
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    state.step += 1
                    progress.update(1)

                    rate = (state.examples - examples_at_start) * world_size / (time.perf_counter() - started)
                    if state.step % config.logging_steps == 0 or state.step == total_steps:
                        losses = {name: float(value) for name, value in accumulated.items()}
                        record = {f"train/{name}": value for name, value in _mean_across_ranks(losses).items()}
                        record.update({"train/loss": sum(record.values()), "train/lr": scheduler.get_last_lr()[0],
                                       "train/examples_per_s": rate, "train/epoch": state.epoch,
                                       "train/elapsed_s": time.perf_counter() - started})  # fmt: skip
                        if grad_norm is not None:
                            record["train/grad_norm"] = float(grad_norm)
                        logger.log(state.step, record)
                        progress.set_postfix(loss=f"{record['train/loss']:.4f}", lr=f"{record['train/lr']:.2e}",
                                             sent_s=f"{rate:.0f}")  # fmt: skip
                    accumulated = {}
                    if evaluators is not None and state.step % config.eval_steps == 0:
                        _evaluate(evaluators, config.eval_metric, encoder, objective, state, output, logger, save)
                    saving = bool(save_steps) and state.step % save_steps == 0
                    if saving:
                        save_checkpoint(checkpoint_dir, **checkpoint, state=state)
                    # Under torchrun the ranks agree on a stop with an all-reduce that waits for the device:
                    # asked only at logging steps, which wait for it anyway (a single process asks for free).
                    asking = world_size == 1 or state.step % config.logging_steps == 0
                    if asking and stop.requested(device):
                        logger.close()
                        if sharded:
                            raise Interrupted(f"stopped at step {state.step} of {total_steps}; sharded runs write no "
                                              "checkpoint")  # fmt: skip
                        if not saving:
                            save_checkpoint(checkpoint_dir, **checkpoint, state=state)
                        raise Interrupted(f"stopped at step {state.step} of {total_steps}; the checkpoint is saved: continue "
                                          "with --resume")  # fmt: skip
                    if state.step >= total_steps:
                        break
                else:  # the epoch ran out of batches
                    state.epoch += 1
                    state.batches_in_epoch = 0
                    if batches_per_epoch == 0:
                        raise CsekitError(f"the training data has fewer than {config.batch_size * world_size} examples")

    if evaluators is not None and state.step % config.eval_steps != 0:
        _evaluate(evaluators, config.eval_metric, encoder, objective, state, output, logger, save)
    save(encoder, output / "final", heads=objective.saved_heads())
    if evaluators is None:  # no model selection: the last model is the best one known
        save(encoder, output / "best", heads=objective.saved_heads())
    logger.close()
    if world_size > 1:
        torch.distributed.barrier()
    rate = (state.examples - examples_at_start) * world_size / max(time.perf_counter() - started, 1e-9)
    return TrainResult(output, state.step, state.best_metric, state.best_step, rate)


# ------------------------------------------------------------------------------------ pieces
def build_model(config: TrainConfig, device: torch.device | str = "cpu") -> tuple[SentenceEncoder, Objective]:
    """The encoder and objective of ``config``, in training mode on ``device``."""
    encoder = load_transformer(config.model, purpose="training", pooler=config.pooler,
                               pretrained_head=config.head_init == "pretrained").to(device)
    encoder.head_at_inference = not config.mlp_only_train
    if config.dropout is not None:
        set_dropout(encoder, config.dropout)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(encoder)
    if config.lora is not None:  # after set_dropout: the adapters keep their own dropout
        add_lora(encoder, config.lora, base_model=config.model)
    context = RunContext(model=config.model, batch_size=config.batch_size, max_length=config.max_length,
                         world_size=get_world_size())  # fmt: skip
    objective = build_objective(config.objective, encoder, options=config.options, context=context,
                                wrappers=config.wrappers).to(device)  # fmt: skip
    # from_pretrained returns models in eval mode: with dropout off the two SimCSE views coincide
    # and the unsupervised loss has nothing to learn from.
    encoder.train()
    objective.train()
    return encoder, objective


def _save(config: TrainConfig, encoder: SentenceEncoder, path: Path, *, heads, sharded: bool,
          unsharded: SentenceEncoder | None) -> None:  # fmt: skip
    """Save as the recipe asks (LoRA adapters merged or not) from rank 0; a sharded encoder is gathered first."""
    if sharded:
        encoder = fsdp.gathered(encoder, unsharded)  # every rank sends its shards; rank 0 gets them
    if get_rank() == 0:
        (merged(encoder) if config.lora and config.lora["save"] == "merged" else encoder).save(path, heads=heads)


def set_dropout(encoder: SentenceEncoder, probability: float) -> None:
    """Set every dropout of the backbone (and its config, so the saved model says so)."""
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
        if hasattr(encoder.backbone.config, name):
            setattr(encoder.backbone.config, name, probability)
    for module in encoder.backbone.modules():
        if isinstance(module, nn.Dropout):
            module.p = probability


def _evaluate(evaluators: dict[str, Evaluator], metric: str, encoder: SentenceEncoder, objective: Objective,
              state: TrainState, output: Path, logger, save) -> None:  # fmt: skip
    """Score the dev sets; keep the model as best/ when ``metric`` (family/name) improved in its direction."""
    results = evaluate_all(encoder, evaluators)  # encode() switches to eval mode and back
    family, name = metric.split("/", 1)
    if name not in results[family]:
        raise CsekitError(f"eval_metric {metric!r}: {family} has no metric {name!r}; it has "
                          f"{', '.join(key for key in results[family] if '/' not in key)}")  # fmt: skip
    score = results[family][name]
    if evaluators[family].improves(name, score, state.best_metric):
        state.best_metric, state.best_step = score, state.step
        save(encoder, output / "best", heads=objective.saved_heads())
    dev = {f"dev/{key}": value for key, value in flat_metrics(results).items() if key.count("/") == 1}
    logger.log(state.step, dev | {"dev/best": state.best_metric})


def _total_steps(config: TrainConfig, batches_per_epoch: int | None) -> int:
    if config.max_steps:
        return config.max_steps
    if batches_per_epoch is None:
        raise CsekitError("streaming data has no known length: set max_steps")
    return config.epochs * (batches_per_epoch // config.gradient_accumulation)


def _linear_schedule(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


def _unique_trainable(*modules: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters, each once (tied weights, e.g. an MLM decoder, appear in two modules)."""
    seen, unique = set(), []
    for module in modules:
        for parameter in module.parameters():
            if parameter.requires_grad and id(parameter) not in seen:
                seen.add(id(parameter))
                unique.append(parameter)
    return unique


def _param_groups(parameters: list[nn.Parameter], weight_decay: float) -> list[dict]:
    """Biases and LayerNorm weights (the 1-d parameters) get no weight decay, as in BERT."""
    decay = [p for p in parameters if p.ndim > 1]
    no_decay = [p for p in parameters if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _adamw(groups: list[dict], learning_rate: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel where this PyTorch has one for the device (4x faster on CPU)."""
    try:
        return torch.optim.AdamW(groups, lr=learning_rate, fused=True)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, lr=learning_rate)


def _mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    if get_world_size() == 1 or not values:
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64)
    torch.distributed.all_reduce(tensor)
    return dict(zip(values, (tensor / get_world_size()).tolist()))


def _to_device(value, device: torch.device):
    """Tensors of a (nested) batch moved to ``device``; raw texts stay as they are."""
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


def _autocast(precision: str, device: torch.device):
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)


def _recorded_config(output: Path) -> dict:
    """The config.yaml a run wrote, for checkpoints that did not keep their recipe."""
    try:
        return yaml.safe_load((output / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return {}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
