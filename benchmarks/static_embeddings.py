"""Static embeddings distilled from all-MiniLM-L6-v2 against the teacher itself, one run on this CPU.

    python benchmarks/static_embeddings.py                       # the whole of ../shared/data/train/unsup
    python benchmarks/static_embeddings.py --max-sentences 60000 --steps 2000 --speed-sentences 5000
    python benchmarks/static_embeddings.py --max-sentences 3000 --steps 20 --speed-sentences 500   # a smoke run

Models, each distilled here from the same teacher:

- model2vec, csekit's (``csekit.static.model2vec``), and the ``model2vec`` package's own ``distill`` of the
  teacher's local folder (float32, its other defaults: 256 dimensions, SIF 1e-4), with its own
  ``StaticModel.encode`` (their tables are compared row by row);
- Wada et al.'s contextual method (``csekit.static.contextual``) over ``--corpus``: after its sentence-level
  PCA, and after its fine-tuning (``csekit.static.finetune``, the reference's schedule);
- the teacher, mean pooling as saved.

Each is scored by csekit's STSEvaluator on the seven STS test sets (what ``csekit eval`` prints) and timed
encoding the same ``--speed-sentences`` corpus sentences, the median of ``--repeats`` runs (after one
warm-up), from text to float32 vectors on the CPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import SHARED, describe, machine, relative
from sentence_transformers import SentenceTransformer

from csekit.evaluation import EvaluationSettings, build_evaluators, evaluate_all
from csekit.models import load_encoder
from csekit.models.static import StaticEncoder
from csekit.static import FineTuneSettings, distill_contextual, distill_model2vec, fine_tune
from csekit.static.vocabulary import skipped_ids

PACKAGE_MAX_LENGTH = 512  # model2vec's StaticModel.encode(max_length=512)
TASKS = ["sts12", "sts13", "sts14", "sts15", "sts16", "stsb", "sickr"]


class PackageModel:
    """model2vec's StaticModel behind csekit's evaluator protocol, encoding with its own code."""

    def __init__(self, model):
        self.model = model

    def encode(self, texts, *, batch_size: int = 1024, **_) -> np.ndarray:
        return np.asarray(self.model.encode(list(texts), batch_size=batch_size), dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default=str(SHARED / "models" / "all-MiniLM-L6-v2"))
    parser.add_argument("--corpus", default=str(SHARED / "data" / "train" / "unsup"), help="a folder of .txt files")
    parser.add_argument("--data-dir", default=str(SHARED / "data" / "senteval" / "downstream"))
    parser.add_argument("--max-sentences", type=int, help="N corpus sentences spread evenly over the files (default all)")
    parser.add_argument("--dim", type=int, default=256, help="table width of every static model")
    parser.add_argument("--remove", type=int, default=7, help="contextual: top sentence components removed")
    parser.add_argument("--tasks", default=",".join(TASKS), help="STS tasks (a smoke run may take one)")
    parser.add_argument("--steps", type=int, default=FineTuneSettings.max_steps, help="most fine-tuning steps")
    parser.add_argument("--speed-sentences", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", help="also save the distilled models under this folder")
    parser.add_argument("--json", default="benchmarks/results/static-embeddings.json")
    parser.add_argument("--md", default="benchmarks/results/static-embeddings.md")
    parser.add_argument("--render", help="only write --md again from this results JSON")
    args = parser.parse_args()
    if args.render:
        Path(args.md).write_text(_markdown(json.loads(Path(args.render).read_text(encoding="utf-8"))), encoding="utf-8")
        return

    files = sorted(path for path in Path(args.corpus).glob("*.txt") if "COPYRIGHT" not in path.name)
    corpus = [line for path in files for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if args.max_sentences and args.max_sentences < len(corpus):
        corpus = corpus[:: -(-len(corpus) // args.max_sentences)]  # every k-th line, k rounded up: at most N
    speed_texts = corpus[:: max(1, len(corpus) // args.speed_sentences)][: args.speed_sentences]
    info = machine()
    print(f"machine: {describe(info)}; corpus {len(corpus)} sentences from {len(files)} files", flush=True)
    evaluators = build_evaluators(args.tasks, EvaluationSettings(data_dir=args.data_dir))
    teacher = load_encoder(args.teacher).eval()
    rows, seconds = {}, {}

    started = time.perf_counter()
    ours_m2v = distill_model2vec(teacher, dim=args.dim)
    seconds["model2vec (csekit)"] = time.perf_counter() - started
    started = time.perf_counter()
    from model2vec.distill import distill

    package = distill(args.teacher, pca_dims=args.dim, quantize_to="float32", device="cpu")
    seconds["model2vec (package)"] = time.perf_counter() - started
    agreement = _agreement(ours_m2v, package, speed_texts)
    print(f"model2vec csekit vs package: {agreement}", flush=True)

    started = time.perf_counter()
    contextual, used, embeddings, report = distill_contextual(teacher, corpus, dim=args.dim, remove=args.remove)
    seconds["contextual, PCA"] = time.perf_counter() - started
    before = contextual.embedding.weight.detach().clone()
    started = time.perf_counter()
    record = fine_tune(contextual, [corpus[i] for i in used], embeddings, frozen=skipped_ids(teacher.tokenizer),
                       settings=FineTuneSettings(max_steps=args.steps))  # fmt: skip
    seconds["contextual, fine-tuning"] = time.perf_counter() - started
    pca_only = StaticEncoder(contextual.tokenizer, before)
    print(f"contextual: {report}; fine-tuning {json.dumps({k: v for k, v in record.items() if k != 'evaluations'})}",
          flush=True)  # fmt: skip

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.keep or scratch)
        ours_m2v.save(folder / "model2vec")
        contextual.save(folder / "contextual")
        models = {
            "teacher all-MiniLM-L6-v2 (csekit)": teacher,
            "(a) model2vec, csekit": load_encoder(folder / "model2vec"),
            "(a) model2vec, the model2vec package": PackageModel(package),
            "(b) contextual + sentence PCA": pca_only,
            "(b) contextual + PCA + fine-tuning": load_encoder(folder / "contextual"),
            "(a) model2vec, csekit's folder in SentenceTransformer": _STEncoder(folder / "model2vec"),
        }
        for name, model in models.items():
            scores = evaluate_all(model, evaluators)["sts"] if "SentenceTransformer" not in name else None
            speed = _speed(model, speed_texts, repeats=args.repeats)
            rows[name] = {"sts": scores, "sentences_per_s": speed}
            print(f"{name}: avg {scores['avg'] if scores else '-'}  {speed:.0f} sentences/s", flush=True)

    teacher_row = rows["teacher all-MiniLM-L6-v2 (csekit)"]
    for row in rows.values():
        row["speed_vs_teacher"] = row["sentences_per_s"] / teacher_row["sentences_per_s"]
        if row["sts"]:
            row["sts_vs_teacher"] = row["sts"]["avg"] / teacher_row["sts"]["avg"]
    command = [arg for arg in sys.argv if arg != args.keep and arg != "--keep"]  # --keep only copies the models
    result = {"machine": info, "command": " ".join(["python", *command]), "teacher": relative(args.teacher),
              "corpus": {"folder": relative(args.corpus), "files": [path.name for path in files], "sentences": len(corpus)},
              "speed_sentences": len(speed_texts), "repeats": args.repeats, "distill_seconds": seconds,
              "model2vec_agreement": agreement, "contextual": report,
              "fine_tuning": {k: v for k, v in record.items()}, "models": rows}  # fmt: skip
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    Path(args.md).write_text(_markdown(result), encoding="utf-8")
    print(_markdown(result))


class _STEncoder:
    """Stock sentence-transformers on a saved static folder (speed only: its vectors equal csekit's)."""

    def __init__(self, folder: Path):
        self.model = SentenceTransformer(str(folder), device="cpu")

    def encode(self, texts, *, batch_size: int = 1024, **_) -> np.ndarray:
        return self.model.encode(list(texts), batch_size=batch_size)


def _agreement(ours, package, texts: list[str]) -> dict:
    """Largest differences between csekit's model2vec table and the package's, over every token they share,
    and between their sentence embeddings of those ``texts`` of at most 512 tokens (the package cuts a text
    there; csekit, like sentence-transformers' StaticEmbedding, reads it whole)."""
    texts = [text for text, row in zip(texts, ours.tokenize(texts)["input_ids"]) if len(row) <= PACKAGE_MAX_LENGTH]
    table = ours.embedding.weight.detach().numpy()
    pairs = [(ours.tokenizer.token_to_id(token), index) for token, index in package.tokenizer.get_vocab().items()]
    mine, theirs = (list(column) for column in zip(*pairs))
    rows = float(np.abs(table[mine] - np.asarray(package.embedding)[theirs]).max())
    vectors = float(np.abs(ours.encode(texts) - np.asarray(package.encode(texts))).max())
    return {"shared_tokens": len(pairs), "max_row_difference": rows, "max_embedding_difference": vectors,
            "texts_compared": len(texts)}


def _speed(model, texts: list[str], *, repeats: int) -> float:
    model.encode(texts[:256])  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.encode(texts)
        times.append(time.perf_counter() - started)
    return len(texts) / statistics.median(times)


def _markdown(result: dict) -> str:
    names = ["STS12", "STS13", "STS14", "STS15", "STS16", "STS-B", "SICK-R"]
    lines = [
        "# Static embeddings distilled from all-MiniLM-L6-v2",
        "",
        f"`{result['command']}` — {describe(result['machine'])}. Corpus for the contextual method: "
        f"{result['corpus']['sentences']:,} sentences spread over `{result['corpus']['folder']}`. STS: csekit's STSEvaluator "
        f"on the seven test sets (Spearman ×100, what `csekit eval` prints); speed: encoding the same "
        f"{result['speed_sentences']:,} corpus sentences, median of {result['repeats']} runs, text to float32 vectors.",
        "",
        "| model | " + " | ".join(names) + " | avg | vs teacher | sentences/s | vs teacher |",
        "| --- | " + " | ".join("---:" for _ in names) + " | ---: | ---: | ---: | ---: |",
    ]
    for name, row in result["models"].items():
        scores = row["sts"]
        cells = [f"{scores.get(task, float('nan')):.2f}" for task in TASKS] + [f"**{scores['avg']:.2f}**", f"{row['sts_vs_teacher']:.3f}"] \
            if scores else ["-"] * (len(TASKS) + 2)  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {row['sentences_per_s']:,.0f} | {row['speed_vs_teacher']:.1f}x |")
    agreement, tuning, report = result["model2vec_agreement"], result["fine_tuning"], result["contextual"]
    lines += [
        "",
        f"csekit's model2vec against the package's: largest difference {agreement['max_row_difference']:.2e} over "
        f"the {agreement['shared_tokens']:,} token rows they share, {agreement['max_embedding_difference']:.2e} over "
        f"the embeddings of the {agreement['texts_compared']:,} timed sentences of at most 512 tokens (the package "
        "cuts longer texts at 512 tokens; csekit and sentence-transformers' StaticEmbedding read them whole).",
        "",
        f"Contextual method: {report['contributing_sentences']:,} sentences contribute a token state "
        f"(at most {report['per_token']} per token); {report['tokens_in_context']:,} tokens averaged in context, "
        f"{report['tokens_alone']:,} never seen in the corpus (their state alone), {report['tokens_skipped']:,} "
        f"zero rows (punctuation, special and unused tokens); sentence PCA on {report['pca_sentences']:,} "
        f"sentences, top {report['remove']} components removed, {report['dim']} kept. Fine-tuning: "
        f"{tuning['train_sentences']:,} training and {tuning['dev_sentences']:,} dev sentences, dev KL "
        f"{tuning['initial_dev_loss']:.4f} before, {tuning['best_dev_loss']:.4f} at step {tuning['best_step']} "
        f"(kept) of {tuning['steps']}.",
        "",
        "Distillation time (s): " + ", ".join(f"{name} {value:.0f}" for name, value in result["distill_seconds"].items()) + ".",
        "",
        *_reading(result),
    ]
    return "\n".join(lines)


def _reading(result: dict) -> list[str]:
    """What the table says, in numbers taken from it."""
    models, tuning = result["models"], result["fine_tuning"]
    teacher, package = models["teacher all-MiniLM-L6-v2 (csekit)"], models["(a) model2vec, the model2vec package"]
    model2vec, pca_only = models["(a) model2vec, csekit"], models["(b) contextual + sentence PCA"]
    tuned = models["(b) contextual + PCA + fine-tuning"]
    stopped = ("stopped early, its dev KL no better for 5 evaluations" if tuning["steps"] < tuning["settings"]["max_steps"]
               else "cut by the step budget while its dev KL was still falling" if tuning["best_step"] == tuning["steps"]
               else "at its step budget, the best dev KL before the end")  # fmt: skip
    return [
        "## Reading",
        "",
        f"- csekit's model2vec is the package's: the same STS average ({model2vec['sts']['avg']:.2f} and "
        f"{package['sts']['avg']:.2f}) from tables equal to float32 rounding.",
        f"- Wada et al.'s contextual vectors beat model2vec's by {pca_only['sts']['avg'] - model2vec['sts']['avg']:.2f} "
        f"points before fine-tuning; fine-tuning on the teacher's in-batch similarities adds "
        f"{tuned['sts']['avg'] - pca_only['sts']['avg']:.2f} more ({tuned['sts']['avg']:.2f}, "
        f"{tuned['sts_vs_teacher']:.1%} of the teacher's {teacher['sts']['avg']:.2f}); the fine-tuning was {stopped}.",
        f"- Every static model encodes {min(m['speed_vs_teacher'] for m in models.values() if m is not teacher):.0f}x "
        f"or more the teacher's {teacher['sentences_per_s']:.0f} sentences/s on the same cores: tokenizing is most of "
        "its time. The package's own `encode` (NumPy, no torch) is the fastest of them.",
        f"- The machine was shared (load {result['machine']['load_1min']} at the start): speeds are this run's, "
        "the ratios between rows are what to read.",
        "",
    ]


if __name__ == "__main__":
    main()
