"""The objective contract: a batch in, named loss terms out.

An objective is split in two so that wrappers compose without knowing the method:

- ``embed(encoder, batch) -> {name: (B, ...) tensor}``: every forward pass through the encoder (and
  through the objective's own trainable modules) happens here. Rows follow the batch's rows, so the
  gradient cache can run ``embed`` on slices of a batch and concatenate the results. The keys named in
  ``sentence_keys`` are the trained encoder's sentence embeddings (B, H): the rows a wrapper may
  truncate, normalise or distil. Other keys are row-wise helpers of the loss (a frozen model's
  embeddings, token ids, per-example partial sums).
- ``loss(embeddings, batch) -> {term: scalar}``: a pure function of the embeddings (cross-device
  gathering happens inside the loss functions). The trainer minimises the sum of the terms and logs
  each one.

Modules the objective trains that belong to the saved model (Sentence-BERT's classifier) are returned
by ``saved_heads()``: the trainer writes each into the model folder beside the encoder.

Two hooks carry the state that outlives a step: ``after_micro_batch(embeddings)``, called once per
micro-batch after its loss, with the whole micro-batch's embeddings (ESimCSE stages its queue keys
here), and ``after_step(encoder)``, after each optimizer step (a momentum encoder follows the weights).
``forward(encoder, batch)`` is ``loss(embed(encoder, batch), batch)`` and has no side effect.

An objective is built as ``cls(encoder, context, **options)``: ``context`` (:class:`RunContext`) is what
the run says about itself (the starting model, batch size, max length, world size); every method knob is
a keyword-only option with a default, so a recipe's ``options`` are checked against the signature before
anything loads (:func:`csekit.objectives.check_options`). Frozen helpers (:mod:`csekit.objectives.frozen`)
stay in eval mode with no gradients and are left out of checkpoints.

A batch is ``{column: {"input_ids": (B, T), "attention_mask": (B, T), ...}}``: one tokenized text field
per column the objective reads (``sent0``, ``sent1``, ``hard_neg``), plus the targets it declares
(``batch["targets"][column]``: a (B,) ``score`` on [0, 1] or NLI ``label`` index), when asked for, the raw texts
(``batch["text"][column]``, for helpers with their own tokenizer) and precomputed embedding columns
(``batch["embeddings"][name]``, (B, D)).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from csekit.data.batches import Batch
from csekit.models.encoder import SentenceEncoder
from csekit.objectives.frozen import FrozenHelper

#: embed()'s output: named row-wise tensors, (B, ...) each.
Embeddings = dict[str, Tensor]


@dataclass(frozen=True)
class RunContext:
    """What an objective may know about the run it trains in."""

    model: str = ""  # the starting model's reference (a helper's default, an MLM head's source)
    batch_size: int = 64  # examples per micro-batch on one process
    max_length: int = 32  # tokens per sentence after truncation
    world_size: int = 1  # processes training together


class Objective(nn.Module):
    #: The text columns a training example must have, in order (``sent0`` is the anchor).
    columns: ClassVar[tuple[str, ...]] = ("sent0",)
    #: The column each block of the forward pass encodes, in order (SimCSE's ``num_sent``): two dropout
    #: copies of the anchor are ``("sent0", "sent0")``. The MLM wrapper masks one copy per view.
    views: ClassVar[tuple[str, ...]] = ("sent0",)
    #: embed()'s keys that hold the trained encoder's sentence embeddings.
    sentence_keys: ClassVar[tuple[str, ...]] = ()
    #: The target columns a training example must have (``score``, ``label``: :mod:`csekit.data.labelled`).
    targets: ClassVar[tuple[str, ...]] = ()
    #: Whether every term depends on the batch only through ``embed``'s output (gradient cache needs it).
    supports_grad_cache: ClassVar[bool] = True
    #: Whether ``loss`` takes the sentence keys cut to a prefix of their width (Matryoshka); a classifier
    #: over the full width (Sentence-BERT's) or a queue of full-width keys (ESimCSE's) does not.
    truncatable: ClassVar[bool] = True
    #: Whether each batch must be consecutive examples of the training files (Quick-Thoughts' neighbours).
    contiguous_batches: ClassVar[bool] = False

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        raise NotImplementedError

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError

    def forward(self, encoder: SentenceEncoder, batch: Batch) -> dict[str, Tensor]:
        return self.loss(self.embed(encoder, batch), batch)

    def after_micro_batch(self, embeddings: Embeddings) -> None:
        """Called once per micro-batch, after its loss, with all of its embeddings (graph-free)."""

    def after_step(self, encoder: SentenceEncoder) -> None:
        """Called after every optimizer step (a momentum encoder follows the encoder here)."""

    def saved_heads(self) -> dict[str, nn.Module]:
        """Trained modules saved with the model, by subfolder name (each has ``save(folder)``)."""
        return {}

    def precomputed_embeddings(self) -> dict[str, tuple[FrozenHelper, str]]:
        """``{name: (helper, column)}``: embedding columns the trainer may compute once per corpus (a frozen
        teacher's embedding of a text column) and serve as ``batch["embeddings"][name]``; where a batch
        lacks one, ``embed`` computes it from the batch itself."""
        return {}

    # ------------------------------------------------------------------ frozen helpers
    def helpers(self) -> Iterator[tuple[str, FrozenHelper]]:
        """(module name, helper) of every frozen helper this objective holds, wrapped ones included."""
        for name, module in self.named_modules():
            if isinstance(module, FrozenHelper):
                yield name, module

    @property
    def text_columns(self) -> tuple[str, ...]:
        """Columns whose raw text a batch must carry (for helpers with their own tokenizer)."""
        return tuple(sorted({column for _, helper in self.helpers() for column in helper.text_columns}))

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """``state_dict`` without the frozen helpers: they reload from their references on resume."""
        prefixes = tuple(f"{name}." for name, _ in self.helpers())
        return {key: value for key, value in self.state_dict().items() if not key.startswith(prefixes)}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load what :meth:`trainable_state_dict` saved (a helper's weights, in older checkpoints, are ignored)."""
        prefixes = tuple(f"{name}." for name, _ in self.helpers())
        own = {key: value for key, value in state.items() if not key.startswith(prefixes)}
        missing, unexpected = self.load_state_dict(own, strict=False)
        missing = [key for key in missing if not key.startswith(prefixes)]
        if missing or unexpected:
            raise RuntimeError(f"checkpoint does not fit the objective: missing {missing}, unexpected {unexpected}")


class ObjectiveWrapper(Objective):
    """An objective that holds another and adds to it (an auxiliary loss, a Matryoshka sum).

    Columns, views, sentence keys, targets, saved heads, precomputed embeddings, gradient-cache and truncation
    support, contiguous batches and both hooks are the inner objective's; a wrapper overrides ``embed`` and ``loss`` and calls the inner ones.
    """

    def __init__(self, inner: Objective):
        super().__init__()
        self.inner = inner

    @property
    def columns(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.inner.columns

    @property
    def views(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.inner.views

    @property
    def sentence_keys(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.inner.sentence_keys

    @property
    def targets(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.inner.targets

    @property
    def supports_grad_cache(self) -> bool:  # type: ignore[override]
        return self.inner.supports_grad_cache

    @property
    def truncatable(self) -> bool:  # type: ignore[override]
        return self.inner.truncatable

    @property
    def contiguous_batches(self) -> bool:  # type: ignore[override]
        return self.inner.contiguous_batches

    def embed(self, encoder: SentenceEncoder, batch: Batch) -> Embeddings:
        return self.inner.embed(encoder, batch)

    def loss(self, embeddings: Embeddings, batch: Batch) -> dict[str, Tensor]:
        return self.inner.loss(embeddings, batch)

    def after_micro_batch(self, embeddings: Embeddings) -> None:
        self.inner.after_micro_batch(embeddings)

    def after_step(self, encoder: SentenceEncoder) -> None:
        self.inner.after_step(encoder)

    def saved_heads(self) -> dict[str, nn.Module]:
        return self.inner.saved_heads()

    def precomputed_embeddings(self) -> dict[str, tuple[FrozenHelper, str]]:
        return self.inner.precomputed_embeddings()

    @property
    def wrapped(self) -> Objective:
        """The innermost objective (the method itself)."""
        return self.inner.wrapped if isinstance(self.inner, ObjectiveWrapper) else self.inner
