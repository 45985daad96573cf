"""Texts -> the model's raw embeddings for a request: checked, tokenized off the model's thread, batched.

Tokenizing runs on one thread of its own, so the event loop stays free and the model's thread only
runs the model; one thread because a Hugging Face fast tokenizer changes its truncation settings on
each call and must not be called from two threads at once.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from csekit.models import SentenceEncoder
from csekit.serve.batcher import BatcherClosed, BatchObserver, MicroBatcher
from csekit.serve.errors import ApiError
from csekit.serve.limits import ServeLimits, check_texts
from csekit.serve.schema import Texts
from csekit.serve.tokens import tokenize_inputs


@dataclass(frozen=True)
class Embedded:
    vectors: np.ndarray  # (N, D) float32, as the model computes them, not normalized
    tokens: int  # tokens encoded, special and template tokens included
    truncated: int  # texts cut to the model's maximum input length


class EmbeddingService:
    def __init__(self, encoder: SentenceEncoder, *, limits: ServeLimits, max_batch_tokens: int,
                 on_batch: BatchObserver | None = None):  # fmt: skip
        self.encoder, self.limits = encoder.eval(), limits
        self.batcher = MicroBatcher(encoder, max_batch_tokens=max_batch_tokens, on_batch=on_batch)
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="csekit-tokenize")

    def start(self) -> None:
        self.batcher.start()

    def close(self) -> None:
        """Finish every request already submitted, then stop the threads."""
        self.batcher.close()
        self._tokenizer_thread.shutdown()

    async def embed(self, texts: Texts, *, truncate: bool) -> Embedded:
        check_texts(texts, self.limits)
        tokenize = partial(tokenize_inputs, self.encoder, texts.values, truncate=truncate, names=texts.names)
        tokens = await asyncio.get_running_loop().run_in_executor(self._tokenizer_thread, tokenize)
        try:
            future = self.batcher.submit(tokens.rows)
        except BatcherClosed as error:
            raise ApiError(503, str(error), code="shutting_down", kind="server_error") from None
        return Embedded(await asyncio.wrap_future(future), tokens.tokens, tokens.truncated)
