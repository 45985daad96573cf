"""Decoder backbones: any Hugging Face causal language model as a sentence encoder's backbone.

A causal LM's token ``t`` sees only tokens ``<= t``, so what a decoder knows of the whole sentence sits at
its last token (``last_token`` pooling, the prompt poolers of :mod:`csekit.models.eol`) or is spread over
all of them (``mean``). The backbone is the base model, the stack of blocks without the language-model head
(``AutoModel`` of a decoder checkpoint, ``LlamaModel`` for a ``LlamaForCausalLM`` one): its hidden states.

Padding goes on the left, so that the last position of every row is its last real token, as the
reference code of PromptEOL, MetaEOL and Contrastive Prompting pads (``tokenizer.padding_side = "left"``).
csekit's collate pads on the right (the encoders' convention); :func:`left_padded` moves the padding of any
batch to the left at the one place every path goes through, :meth:`SentenceEncoder.forward` (training
collate, ``encode``, the evaluators, the sentence-transformers module alike), and gives each row position
ids counted from its first real token, so a left-padded row computes what the same row alone computes
(rotary models are shift-invariant anyway; learned absolute positions are not).

A decoder tokenizer often has no padding token: the encoder then pads with the end-of-sequence token (the
attention mask hides it; the id is never read). The tokenizer's ``padding_side`` is set to ``"left"`` too,
so that code calling the tokenizer itself pads as the model expects, and the saved tokenizer says so.

GGUF checkpoints (llama.cpp's format) load through transformers' ``gguf_file=`` (de-quantized to float32):
a model reference ``FOLDER#gguf=FILE`` names the file inside the folder, wherever csekit takes a model
(``csekit eval``, ``model:`` in a recipe, :func:`csekit.load_encoder`). A saved model is a plain float32
checkpoint again.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from csekit.errors import CsekitError

#: ``FOLDER#gguf=FILE``: a GGUF file inside a local folder (or hub repository).
GGUF_MARK = "#gguf="


def split_reference(reference: str) -> tuple[str, str | None]:
    """``"FOLDER#gguf=FILE"`` -> ``("FOLDER", "FILE")``; any other reference -> ``(reference, None)``."""
    if GGUF_MARK not in reference:
        return reference, None
    folder, gguf_file = reference.split(GGUF_MARK, 1)
    if not folder or not gguf_file.endswith(".gguf") or "/" in gguf_file:
        raise CsekitError(f"model reference {reference!r}: write FOLDER#gguf=FILE.gguf, the GGUF file's name inside "
                          "the folder")  # fmt: skip
    return folder, gguf_file


def is_decoder(backbone: nn.Module) -> bool:
    """Whether the backbone's attention is causal (a decoder-only language model)."""
    return any(getattr(module, "is_causal", False) is True for module in backbone.modules()
               if not isinstance(module, PreTrainedModel))  # fmt: skip


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Pad on the left, with the end-of-sequence token where the tokenizer has no padding token."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CsekitError(f"{type(tokenizer).__name__} has neither a padding nor an end-of-sequence token to pad with")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"


def left_padded(inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Each (B, T) field with every row's padding moved to its start (real tokens in their order), plus
    ``position_ids`` counted from each row's first real token (0 on padding)."""
    mask = inputs["attention_mask"]  # (B, T)
    order = torch.argsort((mask != 0).to(torch.int8), dim=1, stable=True)  # (B, T): padding first, tokens in order
    moved = {key: value.gather(1, order) for key, value in inputs.items()}
    moved["position_ids"] = (moved["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)  # (B, T)
    return moved


def left_pad_rows(rows: list[list[int]], pad_token_id: int, device: torch.device) -> dict[str, Tensor]:
    """Token id lists -> left-padded ``input_ids`` and ``attention_mask``, (len(rows), longest)."""
    longest = max(len(row) for row in rows)
    ids = [[pad_token_id] * (longest - len(row)) + list(row) for row in rows]
    mask = [[0] * (longest - len(row)) + [1] * len(row) for row in rows]
    return {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device)}


def decoder_forward(backbone: nn.Module, inputs: Mapping[str, Tensor], *, output_hidden_states: bool,
                    output_attentions: bool = False) -> tuple[object, dict[str, Tensor]]:  # fmt: skip
    """The backbone's outputs for ``inputs`` padded on either side, and the left-padded inputs they align with.

    ``token_type_ids`` never reach a decoder (it has none); prompt poolers use that field to mark the tokens
    of each prompt (see :mod:`csekit.models.eol`)."""
    moved = left_padded(inputs)
    arguments = {key: moved[key] for key in ("input_ids", "attention_mask")}
    model = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone  # under LoRA adapters
    if "position_ids" in inspect.signature(model.forward).parameters:
        arguments["position_ids"] = moved["position_ids"]
    outputs = backbone(**arguments, output_hidden_states=output_hidden_states, output_attentions=output_attentions,
                       return_dict=True)  # fmt: skip
    return outputs, moved


def decoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's list of transformer blocks (``layers`` of Llama, Mistral, Qwen; ``h`` of GPT-2)."""
    for name in ("layers", "h", "blocks"):
        blocks = getattr(backbone, name, None)
        if isinstance(blocks, nn.ModuleList):
            return blocks
    raise CsekitError(f"cannot find the transformer blocks of {type(backbone).__name__} (no layers, h or blocks list)")
