"""``csekit generate``: options, the SynCSE and CLAIF pipelines end to end, malformed outputs, kill and rerun."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from llm_servers import Proxy

from csekit.cli.main import main
from csekit.data.readers import read_examples
from csekit.generation.pipelines import PIPELINES, claif, gcse, syncse

SENTENCES = ["A man is playing a guitar.", "Two dogs run across the field.", "The train leaves at noon.",
             "She is cooking dinner for her family.", "The children are laughing at the clown.",
             "A plane lands on the runway.", "He reads a book in the garden.", "The shop closes early on Sundays."]  # fmt: skip
QUICK = ["--temperature", "0", "--max-new-tokens", "16"]


@pytest.fixture
def sentences(tmp_path) -> Path:
    path = tmp_path / "sentences.txt"
    path.write_text("\n".join(SENTENCES) + "\n")
    return path


def _generate(*args: str) -> int:
    return main(["generate", *map(str, args)])


def test_registry_lists_each_pipeline_module():
    assert PIPELINES == {"syncse": syncse.run, "claif": claif.run, "gcse": gcse.run}


@pytest.mark.parametrize(("args", "message"), [
    (["--option", "shot=2"], "pipeline 'syncse' has no option.*shot; it accepts shots=3, template_version=1"),
    (["--option", "shots"], "must be KEY=VALUE"),
    (["--option", "shots=9"], "shots must be between 0 and 6"),
    (["--option", "template_version=7"], r"no template syncse/entailment.v7.txt; shipped: contradiction.v1.txt"),
    (["--output", "out.parquet"], "write a .csv or .jsonl file"),
    (["--input", "missing.txt"], "no input file missing.txt: give sentences one a line.*wiki1m"),
    (["--generator", "openai:nothing"], "openai:MODEL@BASE_URL"),
])  # fmt: skip
def test_bad_arguments_are_one_line_errors(args, message, sentences, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    defaults = {"--input": str(sentences), "--output": "out.csv", "--generator": "openai:m@http://127.0.0.1:9/v1"}
    for flag in set(defaults) & set(args):
        defaults.pop(flag)
    assert _generate("syncse", *[item for pair in defaults.items() for item in pair], *args) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert re.search(message, error), error


def test_syncse_writes_triples_simcse_sup_reads_with_provenance_per_row(llama_server, sentences, tmp_path, capsys):
    out = tmp_path / "syncse.csv"
    assert _generate("syncse", "--input", sentences, "--output", out, "--limit", 3, "--option", "shots=2",
                     "--generator", f"openai:smollm2@{llama_server}/v1", *QUICK) == 0  # fmt: skip
    summary = capsys.readouterr().out
    assert "syncse: input 3 -> entailment" in summary and "asked the generator" in summary
    rows = list(read_examples(out, columns=("sent0", "sent1", "hard_neg")))  # the reader simcse_sup trains from
    records = [json.loads(line) for line in (tmp_path / "syncse.provenance.jsonl").read_text().splitlines()]
    assert 1 <= len(rows) == len(records) <= 3 and all(row["sent0"] in SENTENCES[:3] for row in rows)
    assert records[0]["made"] == {"sent1": {"stage": "entailment", "template": "entailment.v1"},
                                  "hard_neg": {"stage": "contradiction", "template": "contradiction.v1"}}  # fmt: skip
    assert records[0]["generator"] == f"openai:smollm2@{llama_server}/v1" and records[0]["sampling"]["temperature"] == 0
    assert records[0]["source"] == {"sent0": rows[0]["sent0"]} and len(records[0]["shots"]) == 2


def test_claif_writes_scored_pairs_for_cosine_regression(llama_server, sentences, tmp_path, capsys):
    out = tmp_path / "claif.csv"
    assert _generate("claif", "--input", sentences, "--output", out, "--limit", 2, "--option", "mask_rates=[0.0,0.5]",
                     "--generator", f"openai:smollm2@{llama_server}/v1", *QUICK) == 0  # fmt: skip
    assert "claif: input 2 -> rewrite" in capsys.readouterr().out
    rows = list(read_examples(out, columns=("sent0", "sent1"), targets=("score",)))  # sbert_regression's reader
    records = [json.loads(line) for line in (tmp_path / "claif.provenance.jsonl").read_text().splitlines()]
    assert len(rows) == len(records) and all(0.0 <= float(row["score"]) <= 1.0 for row in rows)
    assert {record["mask_rate"] for record in records} <= {0.0, 0.5}
    assert all((record["mask_rate"] == 0) == (record["made"]["sent1"]["template"] == "same.v1") for record in records)


def test_claif_masks_the_papers_share_of_words_and_reads_the_first_number():
    import random

    masked = claif.mask_words("a b c d e f g h i j", 0.3, random.Random(0), merge_rate=0.0)
    assert masked.split().count(claif.MASK) == 3 and len(masked.split()) == 10
    merged = claif.mask_words("a b c d e f g h i j", 0.8, random.Random(0), merge_rate=1.0)
    assert "<mask> <mask>" not in merged and claif.MASK in merged
    assert claif.parse_score("0.8, because both say the same.") == (0.8, None)
    assert claif.parse_score("They differ a lot.") == (None, "no_score")
    assert claif.parse_score("4.5 out of 5") == (None, "bad_score")
    assert claif.parse_score("I'm sorry, I cannot rate that.") == (None, "refusal")


@pytest.mark.parametrize(("content", "kind"), [("I'm sorry, but I can't help with that.", "refusal"), ("  \n", "empty")])
def test_malformed_outputs_are_counted_and_skipped_never_a_crash(content, kind, sentences, tmp_path, capsys):
    proxy = Proxy(content=content)
    try:
        out = tmp_path / "out.jsonl"
        assert _generate("syncse", "--input", sentences, "--output", out, "--generator", f"openai:m@{proxy.url}/v1") == 0
        assert f"input 8 -> entailment 0 -> contradiction 0 rows; dropped: {kind} 8" in capsys.readouterr().out
        assert out.read_text() == ""
    finally:
        proxy.close()
    failing = Proxy(fail_first=100, fail_status=400)
    try:
        assert _generate("claif", "--input", sentences, "--output", tmp_path / "c.csv", "--limit", 1,
                         "--generator", f"openai:m@{failing.url}/v1#retries=0") == 0  # fmt: skip
        assert "dropped: failed 9" in capsys.readouterr().out
    finally:
        failing.close()


def _cached_prompts(cache: Path) -> set[str]:
    return {json.dumps(json.loads(path.read_text())["messages"], sort_keys=True) for path in cache.glob("*/*.json")}


def test_a_killed_run_rerun_asks_nothing_twice_and_writes_what_an_uninterrupted_run_writes(llama_server, sentences, tmp_path):
    """SIGKILL ``csekit generate`` partway, rerun it: the rerun asks only the prompts whose answers the
    killed run had not stored (counted at a proxy in front of the server), and writes the same file."""
    proxy = Proxy(llama_server)
    try:
        def command(out: Path, cache: Path) -> list[str]:
            return [sys.executable, "-m", "csekit.cli.main", "generate", "syncse", "--input", str(sentences),
                    "--output", str(out), "--cache", str(cache), "--concurrency", "2", "--limit", "6", "--option", "shots=1",
                    "--generator", f"openai:smollm2@{proxy.url}/v1", *QUICK]  # fmt: skip

        whole = subprocess.run(command(tmp_path / "whole.csv", tmp_path / "whole-cache"), capture_output=True, text=True)
        assert whole.returncode == 0, whole.stderr
        prompts = [json.dumps(body["messages"], sort_keys=True) for body in proxy.bodies]
        assert len(prompts) == len(set(prompts)) > 6  # each prompt asked once (a contradiction for each kept entailment)

        proxy.bodies.clear()
        cache = tmp_path / "cache"
        killed = subprocess.Popen(command(tmp_path / "out.csv", cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while len(list(cache.glob("*/*.json"))) < 4 and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        stored = _cached_prompts(cache)
        asked_before = len(proxy.bodies)
        assert 4 <= len(stored) < len(prompts) and not (tmp_path / "out.csv").exists()

        rerun = subprocess.run(command(tmp_path / "out.csv", cache), capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        asked_again = [json.dumps(body["messages"], sort_keys=True) for body in proxy.bodies[asked_before:]]
        assert not stored & set(asked_again)  # nothing stored is asked again
        assert sorted(asked_again) == sorted(set(prompts) - stored)  # and every missing prompt exactly once
        assert asked_before - len(stored) <= 2  # re-asked overall: only what was in flight at the kill (concurrency 2)
        assert f"from cache {len(stored)}" in rerun.stdout
        assert (tmp_path / "out.csv").read_text() == (tmp_path / "whole.csv").read_text()
        assert (tmp_path / "out.provenance.jsonl").read_text() == (tmp_path / "whole.provenance.jsonl").read_text()
    finally:
        proxy.close()


@pytest.mark.parametrize(("pipeline", "content", "objective"), [
    ("syncse", "Someone does something somewhere.", "simcse_sup"), ("claif", "0.6, as they share a subject.", "sbert_regression"),
])  # fmt: skip
def test_the_training_file_trains_the_objective_it_is_made_for(pipeline, content, objective, sentences, tmp_path):
    from conftest import make_tiny_encoder, write_recipe

    proxy = Proxy(content=content)
    try:
        out = tmp_path / f"{pipeline}.csv"
        assert _generate(pipeline, "--input", sentences, "--output", out, "--generator", f"openai:m@{proxy.url}/v1") == 0
    finally:
        proxy.close()
    make_tiny_encoder("mean").save(tmp_path / "tiny")
    recipe = write_recipe(tmp_path, tmp_path / "tiny", objective=objective, pooler="mean", mlp_only_train=False,
                          train_files=[str(out)], max_steps=2, save_steps=2, batch_size=4)  # fmt: skip
    assert main(["train", str(recipe)]) == 0
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_outputs_are_checked_by_kind():
    from csekit.generation.pipeline import check_json, check_text

    assert check_text(' Sentence 2: "A man plays music."\nExplanation: ...') == ("A man plays music.", None)
    assert check_text(None) == (None, "failed") and check_text(' "" ') == (None, "empty")
    assert check_text("As an AI, I cannot rewrite this.") == (None, "refusal")
    assert check_json('Here it is: {"a": [1, 2]} hope that helps') == ({"a": [1, 2]}, None)
    assert check_json("{'a': 1}") == (None, "bad_json") and check_json("") == (None, "empty")
