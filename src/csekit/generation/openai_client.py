"""Any OpenAI-compatible chat-completions endpoint as a generator, through the official ``openai`` client.

``max_concurrency`` requests are in flight at most (a thread pool of that size: the client is thread-safe).
Each request has ``timeout`` seconds. A connection error, a timeout, 429 or any 5xx is retried up to
``max_retries`` times after an exponential backoff with full jitter (``uniform(0, min(cap, base·2^attempt))``),
the client's own retries switched off so that this is the one policy; any other 4xx (a bad request, a wrong
key, an unknown model) would fail the same way again and is not retried. A prompt that still fails gives
``None`` and is counted in ``failures`` by reason; a run never crashes on a backend error. Each request
carries its own seed, derived from the sampling's seed and the prompt (:func:`~csekit.generation.base.prompt_seed`).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed

import openai

from csekit.errors import CsekitError
from csekit.generation.base import Prompt, Sampling, StreamingGenerator, as_messages, prompt_seed

#: Sent where the key variable is unset: local servers (llama.cpp, vLLM) accept any key, the client needs one.
NO_KEY = "no-key"


class OpenAIGenerator(StreamingGenerator):
    """``model`` at ``base_url`` (``http://127.0.0.1:8000/v1``); the API key is read from ``$api_key_env``."""

    def __init__(self, model: str, *, base_url: str, max_concurrency: int = 4, timeout: float = 60.0,
                 max_retries: int = 4, backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 api_key_env: str = "OPENAI_API_KEY") -> None:  # fmt: skip
        if max_concurrency < 1:
            raise CsekitError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if max_retries < 0 or timeout <= 0:
            raise CsekitError(f"max_retries must be 0 or more and timeout above 0, got {max_retries} and {timeout}")
        self.model, self.base_url = model, base_url.rstrip("/")
        self.identity = f"openai:{model}@{self.base_url}"
        self.max_concurrency, self.max_retries = max_concurrency, max_retries
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.client = openai.OpenAI(base_url=self.base_url, api_key=os.environ.get(api_key_env) or NO_KEY,
                                    timeout=timeout, max_retries=0)  # fmt: skip
        self.failures: Counter[str] = Counter()
        self.retries = 0
        self._lock = threading.Lock()

    def generate_each(self, prompts: Sequence[Prompt], sampling: Sampling) -> Iterator[tuple[int, str | None]]:
        """``(index, output)`` in the order the answers arrive."""
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            futures = {pool.submit(self._ask, prompt, sampling): index for index, prompt in enumerate(prompts)}
            for future in as_completed(futures):
                yield futures[future], future.result()

    def _ask(self, prompt: Prompt, sampling: Sampling) -> str | None:
        request = {"model": self.model, "messages": as_messages(prompt), "max_tokens": sampling.max_new_tokens,
                   "temperature": sampling.temperature, "top_p": sampling.top_p,
                   "seed": prompt_seed(sampling.seed, prompt)}  # fmt: skip
        if sampling.stop:
            request["stop"] = list(sampling.stop)
        for attempt in range(self.max_retries + 1):
            try:
                response = self.client.chat.completions.create(**request)
                return response.choices[0].message.content or ""
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as error:
                reason = _reason(error)  # APITimeoutError is an APIConnectionError
            except openai.APIStatusError as error:
                if error.status_code < 500:  # the same request would fail the same way again
                    self._count(f"http {error.status_code}")
                    return None
                reason = _reason(error)
            if attempt < self.max_retries:
                with self._lock:
                    self.retries += 1
                time.sleep(random.uniform(0, min(self.backoff_cap, self.backoff_base * 2**attempt)))
        self._count(reason)
        return None

    def _count(self, reason: str) -> None:
        with self._lock:
            self.failures[reason] += 1


def _reason(error: openai.OpenAIError) -> str:
    if isinstance(error, openai.APITimeoutError):
        return "timeout"
    if isinstance(error, openai.APIConnectionError):
        return "connection"
    return f"http {getattr(error, 'status_code', '?')}"
