"""Embedding-layer views: ConSERT's augmentations of the (B, T, H) embedding output.

Yan et al., ACL 2021, "ConSERT: A Contrastive Framework for Self-Supervised Sentence Representation
Transfer", Sec. 3.2 and Fig. 2. Each one acts between the embedding layer and the first transformer
block, as the reference code's patched ``BertModel.forward`` does (``_replace_position_ids``,
``_replace_embedding_output``, ``_cutoff_embeddings``):

- ``token_shuffle``: the position ids of each sentence's real tokens are permuted; the token ids stay
  in place, so the model reads the tokens in a shuffled order;
- ``token_cutoff``: ``int(n * rate)`` whole token rows of the n real tokens are zeroed;
- ``feature_cutoff``: ``int(H * rate)`` whole feature columns are zeroed (each sentence its own);
- ``dropout``: ``int(n * H * rate)`` single elements among the real tokens' rows are zeroed, an exact
  count and no ``1 / (1 - rate)`` rescaling, unlike ``nn.Dropout``;
- ``adversarial``: the embedding output plus ``noise_norm * g / ||g||``, g the loss gradient at the
  embedding output, normalised per token (Fast Gradient Value; ``losses/AdvCLSoftmaxLoss.py``);
- ``none``: the embedding output as it is.

"Real tokens" are the attention mask's ones, [CLS] and [SEP] included, as in the reference: they are
shuffled and cut like any word. Padding is never shuffled nor counted. Since a rate is below 1,
``int(n * rate) < n`` and every sentence keeps at least one real token.

The views are applied without touching the backbone: :func:`embedding_augmentation` hooks the
backbone's ``embeddings`` module for the forwards inside a ``with`` block and removes the hooks after.
Every draw takes a ``torch.Generator | None``; None draws from torch's global generator of the
batch's device, which the trainer seeds and the gradient cache replays.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from csekit.errors import CsekitError

#: Every name :func:`embedding_augmentation` takes; ``adversarial`` needs a loss gradient (ConSERT's objective).
EMBEDDING_AUGMENTATIONS = ("none", "token_shuffle", "token_cutoff", "feature_cutoff", "dropout", "adversarial")
#: Rates of the paper (Sec. 4, implementation details: token cutoff 0.15, feature cutoff 0.2, dropout
#: 0.2; the feature cutoff rate is also the one of ``scripts/unsup-consert-base.sh``).
DEFAULT_RATES = {"token_cutoff": 0.15, "feature_cutoff": 0.2, "dropout": 0.2}
#: Perturbation norm per token: ``main.py --noise_norm`` default.
DEFAULT_NOISE_NORM = 1.0


def check_augmentation(name: str) -> str:
    if name not in EMBEDDING_AUGMENTATIONS:
        choices = ", ".join(EMBEDDING_AUGMENTATIONS)
        raise CsekitError(f"unknown embedding augmentation {name!r}; choose one of {choices}")
    return name


def check_rate(name: str, rate: float) -> float:
    if not 0.0 < rate < 1.0:
        raise CsekitError(f"the {name} rate must be between 0 and 1 (exclusive), got {rate}")
    return rate


# ------------------------------------------------------------------------------ the augmentations
def shuffled_position_ids(
    position_ids: Tensor, attention_mask: Tensor, *, generator: torch.Generator | None = None
) -> Tensor:
    """(B, T) position ids with each row's real-token ids permuted among its real tokens; padding keeps its own."""
    real = attention_mask.bool()  # (B, T)
    keys = _uniform(real.shape, real.device, generator).masked_fill(~real, 2.0)  # padding sorts last
    # Real slots in a random order, then padding in index order ...
    source = keys.argsort(dim=1, stable=True)  # (B, T)
    # ... written to the real slots in index order, then padding in index order (padding maps to itself).
    target = (~real).to(torch.uint8).argsort(dim=1, stable=True)  # (B, T)
    shuffled = position_ids.expand(real.shape).clone()  # (B, T)
    return shuffled.scatter_(1, target, position_ids.expand(real.shape).gather(1, source))


def token_cutoff(
    embeddings: Tensor, attention_mask: Tensor, rate: float, *, generator: torch.Generator | None = None
) -> Tensor:
    """(B, T, H) with ``int(n * rate)`` random real-token rows of each sentence set to zero."""
    real = attention_mask.bool()  # (B, T)
    counts = _floor(real.sum(dim=1), rate)  # (B,)
    keys = _uniform(real.shape, embeddings.device, generator).masked_fill(~real, 2.0)  # (B, T)
    cut = _smallest(keys, counts)  # (B, T)
    return embeddings.masked_fill(cut.unsqueeze(-1), 0.0)


def feature_cutoff(embeddings: Tensor, rate: float, *, generator: torch.Generator | None = None) -> Tensor:
    """(B, T, H) with ``int(H * rate)`` random feature columns of each sentence set to zero (every position)."""
    size, _, hidden = embeddings.shape
    counts = torch.full((size,), int(hidden * rate), device=embeddings.device)  # (B,)
    cut = _smallest(_uniform((size, hidden), embeddings.device, generator), counts)  # (B, H)
    return embeddings.masked_fill(cut.unsqueeze(1), 0.0)


def embedding_dropout(
    embeddings: Tensor, attention_mask: Tensor, rate: float, *, generator: torch.Generator | None = None
) -> Tensor:
    """(B, T, H) with ``int(n * H * rate)`` random elements of each sentence's real-token rows set to zero."""
    size, length, hidden = embeddings.shape
    real = attention_mask.bool().unsqueeze(-1).expand(size, length, hidden).reshape(size, length * hidden)
    counts = _floor(real.sum(dim=1), rate)  # (B,)
    keys = _uniform(real.shape, embeddings.device, generator).masked_fill(~real, 2.0)  # (B, T * H)
    cut = _smallest(keys, counts).view(size, length, hidden)  # (B, T, H)
    return embeddings.masked_fill(cut, 0.0)


def adversarial_perturbation(gradient: Tensor, noise_norm: float = DEFAULT_NOISE_NORM) -> Tensor:
    """(B, T, H) Fast Gradient Value step: each token's gradient scaled to L2 norm ``noise_norm``.

    As the reference (``do_noise_normalization``): ``g / (||g||_2 + 1e-10)`` over the hidden axis, so
    tokens with no gradient (padding) get no perturbation. The result carries no graph.
    """
    gradient = gradient.detach()
    return noise_norm * gradient / (gradient.norm(p=2, dim=-1, keepdim=True) + 1e-10)  # (B, T, H)


# ------------------------------------------------------------------------------ applying them
@contextmanager
def embedding_augmentation(
    encoder: nn.Module,
    name: str,
    attention_mask: Tensor,
    *,
    rate: float | None = None,
    generator: torch.Generator | None = None,
    replacement: Tensor | None = None,
) -> Iterator[None]:
    """Apply augmentation ``name`` to the embedding output of every encoder forward inside the block.

    ``attention_mask`` (B, T) is the batch the forwards will see; embedding calls of another shape
    inside the block (a prompt pooler's template pass) are left alone. ``rate`` defaults to
    :data:`DEFAULT_RATES`. ``adversarial`` takes ``replacement``, the (B, T, H) perturbed embedding
    output to use instead of the module's own (the reference reuses the clean pass's output plus the
    noise); see :func:`captured_embedding_output`. The hooks are removed when the block exits.
    """
    module = _embeddings_of(encoder)
    check_augmentation(name)
    if name in DEFAULT_RATES:
        rate = check_rate(name, DEFAULT_RATES[name] if rate is None else rate)
    if name == "adversarial" and replacement is None:
        raise ValueError("the adversarial view needs the perturbed embedding output (replacement=...)")

    def shuffle_positions(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if args:
            raise CsekitError("token_shuffle needs the backbone to call its embeddings with keyword arguments")
        tokens = kwargs.get("input_ids")
        shape = tuple(tokens.shape if tokens is not None else kwargs["inputs_embeds"].shape[:2])
        if shape != tuple(attention_mask.shape):
            return args, kwargs  # another pass (a prompt pooler's template alone): not this batch
        base = kwargs.get("position_ids")
        if base is None:
            base = _default_position_ids(module, kwargs.get("input_ids"), attention_mask)
        return args, {**kwargs, "position_ids": shuffled_position_ids(base, attention_mask, generator=generator)}

    def replace_output(_module: nn.Module, _args: tuple, output: Tensor) -> Tensor:
        if output.shape[:2] != attention_mask.shape:
            return output  # another pass (a prompt pooler's template alone): not this batch
        if name == "token_cutoff":
            return token_cutoff(output, attention_mask, rate, generator=generator)
        if name == "feature_cutoff":
            return feature_cutoff(output, rate, generator=generator)
        if name == "dropout":
            return embedding_dropout(output, attention_mask, rate, generator=generator)
        if replacement.shape != output.shape:
            shapes = f"{tuple(replacement.shape)} vs {tuple(output.shape)}"
            raise ValueError(f"the replacement does not match the embedding output: {shapes}")
        return replacement

    handles = []
    if name == "token_shuffle":
        _check_takes_position_ids(module)
        handles.append(module.register_forward_pre_hook(shuffle_positions, with_kwargs=True))
    elif name != "none":
        handles.append(module.register_forward_hook(replace_output))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def captured_embedding_output(encoder: nn.Module) -> Iterator[list[Tensor]]:
    """Collect the embedding output of each forward inside the block (the adversarial attack's input).

    An output with no graph (frozen embeddings, or a ``no_grad`` caller) is made a leaf that requires a
    gradient, so the attack can still differentiate the loss with respect to it.
    """
    outputs: list[Tensor] = []

    def capture(_module: nn.Module, _args: tuple, output: Tensor) -> Tensor:
        if not output.requires_grad and torch.is_grad_enabled():
            output = output.detach().requires_grad_()
        outputs.append(output)
        return output

    handle = _embeddings_of(encoder).register_forward_hook(capture)
    try:
        yield outputs
    finally:
        handle.remove()


# ------------------------------------------------------------------------------ helpers
def _uniform(shape: tuple[int, ...] | torch.Size, device: torch.device, generator: torch.Generator | None) -> Tensor:
    """Uniform [0, 1) draws on the generator's device (the batch's device for the global one)."""
    where = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=where).to(device)


def _floor(counts: Tensor, rate: float) -> Tensor:
    """``int(count * rate)`` in float64, as Python computes the reference's counts."""
    return (counts.to(torch.float64) * rate).floor().long()


def _smallest(keys: Tensor, counts: Tensor) -> Tensor:
    """(B, N) boolean mask of the ``counts[b]`` smallest keys of each row."""
    ranks = keys.argsort(dim=1).argsort(dim=1)  # (B, N): each key's place in its row's order
    return ranks < counts.unsqueeze(1)


def _embeddings_of(encoder: nn.Module) -> nn.Module:
    module = getattr(getattr(encoder, "backbone", encoder), "embeddings", None)
    if not isinstance(module, nn.Module):
        raise CsekitError(f"{type(encoder).__name__} has no backbone.embeddings module to augment")
    return module


def _check_takes_position_ids(module: nn.Module) -> None:
    if "position_ids" not in inspect.signature(module.forward).parameters or not hasattr(module, "position_embeddings"):
        kind = type(module).__name__
        raise CsekitError(f"token_shuffle needs absolute position embeddings; {kind} takes no position_ids")


def _default_position_ids(module: nn.Module, input_ids: Tensor | None, attention_mask: Tensor) -> Tensor:
    """The ids the embeddings would use by themselves: 0..T-1 (BERT), or RoBERTa's padding_idx + 1 onwards."""
    length = attention_mask.shape[1]
    padding_idx = getattr(module, "padding_idx", None)
    if padding_idx is not None:  # RoBERTa counts real tokens from padding_idx + 1; padding gets padding_idx
        mask = attention_mask.long() if input_ids is None else input_ids.ne(padding_idx).long()
        return mask.cumsum(dim=1) * mask + padding_idx  # (B, T)
    return torch.arange(length, device=attention_mask.device).expand(attention_mask.shape)  # (B, T)
