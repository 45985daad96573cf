"""Training-free post-processing on the seven STS test sets: BERT-whitening over WhiteningBERT's layer
combinations, and Ditto, applied to raw or trained encoders.

    python benchmarks/postprocess.py --models bert-mini-mlm            # ~10 minutes on 2 shared CPU cores
    python benchmarks/postprocess.py --models all-MiniLM-L6-v2         # slower; results merge into the same files

For each model and each layer combination (hidden states averaged over tokens; 0 = embedding output;
the combinations csekit names are labelled mean / first_last_avg / last2avg): the plain pooler, then
whitening at full dimension and at k = 256, 128, 64 (``--dims``) where the model is wider. Whitening is
fitted on unlabelled text only (``--fit-on``, default the first 11,914 lines of SimCSE's wiki1m), never on
an evaluation set.

Ditto's layer and head are chosen on STS-B dev over every (layer, head) of the model, since its reference
fixes a per-model choice (BERT-base: layer 0, head 9, also scored where the model has a head 9); hidden
states 0 and L are weighted, as the reference's ``att_first_last``. ``+ whitening`` fits on the Ditto
embeddings.

Speed (the CPU is shared): one backbone pass per sentence set serves every pooler, through the library's
own pooler modules (``LayerMeanPooler``, ``DittoPooler``) on the encoder's tokenization, and whitening is the
fitted ``Linear`` applied to the pooled tables, which is what a saved model's ``Dense`` computes. Two
configurations per model (the first layer combination and the last Ditto setting, both whitened) are
also built for real, saved, reloaded with ``load_encoder`` and re-encoded: ``reload_checks`` in the JSON
gives the largest difference from the tables.

Writes ``--json`` and ``--markdown`` (default benchmarks/results/postprocess.{json,md}), keeping the
other models already in them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from csekit.data.collate import pad_batch
from csekit.evaluation.sts import TASKS, TITLES, STSEvaluator
from csekit.models import load_encoder
from csekit.postprocess import (
    DittoPooler,
    LayerMeanPooler,
    fit_whitening,
    read_fit_sentences,
    use_layers,
)
from csekit.postprocess.ditto import DEFAULT_HEAD, DEFAULT_LAYER
from csekit.postprocess.layers import named_pooler
from csekit.postprocess.whitening import whitening_layer

SHARED = Path(os.environ.get("CSEKIT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
RESULTS = Path(__file__).resolve().parent / "results"
#: Reduced whitening dimensions scored where the model is wider (BERT-whitening keeps e.g. 256 of 768).
REDUCED_DIMS = (256, 128, 64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["bert-mini-mlm", "all-MiniLM-L6-v2"],
                        help="names under shared/models, or model folders")  # fmt: skip
    parser.add_argument("--fit-on", default=str(SHARED / "data/train/unsup/wiki1m_for_simcse.first11914lines.txt"))
    parser.add_argument("--max-sentences", type=int)
    parser.add_argument("--data-dir", default=os.environ.get("CSEKIT_DATA", str(SHARED / "data/senteval/downstream")))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--dims", nargs="+", type=int, default=list(REDUCED_DIMS),
                        help="reduced whitening dimensions, each scored where smaller than the model's")  # fmt: skip
    parser.add_argument("--json", default=str(RESULTS / "postprocess.json"))
    parser.add_argument("--markdown", default=str(RESULTS / "postprocess.md"))
    args = parser.parse_args()

    fit = read_fit_sentences(args.fit_on, max_sentences=args.max_sentences)
    test = STSEvaluator(TASKS, data_dir=args.data_dir, batch_size=args.batch_size)
    dev = STSEvaluator(["stsb"], mode="dev", data_dir=args.data_dir, batch_size=args.batch_size)
    saved = json.loads(Path(args.json).read_text()) if Path(args.json).is_file() else {"models": {}}
    for model in args.models:
        path = model if os.path.isdir(model) else str(SHARED / "models" / model)
        start = time.perf_counter()
        record = benchmark_model(path, fit, test, dev, dims=args.dims, batch_size=args.batch_size)
        record.update(fit_on=Path(args.fit_on).name, fit_sentences=len(fit), seconds=time.perf_counter() - start,
                      machine=f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")  # fmt: skip
        saved["models"][Path(path).name] = record
        Path(args.json).write_text(json.dumps(saved, indent=1) + "\n")
        Path(args.markdown).write_text(markdown(saved))
        print(markdown({"models": {Path(path).name: record}}), flush=True)


def benchmark_model(path: str, fit: list[str], test: STSEvaluator, dev: STSEvaluator, *, dims: list[int],
                    batch_size: int) -> dict:  # fmt: skip
    encoder = load_encoder(path, pooler="mean")
    config = encoder.backbone.config
    layers, hidden, heads = config.num_hidden_layers, config.hidden_size, config.num_attention_heads
    encoder.set_pooler(DittoPooler(layer=0, head=0, layers=(0, layers)))  # eager attention for every pass
    encoder.eval()

    # Ditto: (layer, head) chosen on STS-B dev; the reference's BERT-base setting too where it exists.
    grid = {(layer, head): DittoPooler(layer=layer, head=head, layers=(0, layers))
            for layer in range(layers) for head in range(heads)}  # fmt: skip
    dev_scores = {key: dev.score(table)["stsb"] for key, table in pooled_tables(encoder, dev.sentences, grid, batch_size).items()}
    best = max(dev_scores, key=dev_scores.get)
    chosen = {best: "chosen on STS-B dev"}
    if DEFAULT_HEAD < heads:
        chosen.setdefault((DEFAULT_LAYER, DEFAULT_HEAD), "reference's BERT-base setting")

    poolers: dict[str, torch.nn.Module] = {}
    for combo in dict.fromkeys([(layers,), (1, layers), (2, layers), (layers - 1, layers), (0, layers)]):
        name = named_pooler(combo, num_layers=layers) or "layer_mean"
        poolers[f"{name} (layers {','.join(map(str, combo))})"] = LayerMeanPooler(layers=combo)
    for (layer, head), why in chosen.items():
        poolers[f"ditto layer {layer} head {head}, {why} (dev {dev_scores[layer, head]:.2f})"] = grid[layer, head]
    tests = pooled_tables(encoder, test.sentences, poolers, batch_size)
    fits = pooled_tables(encoder, fit, poolers, batch_size)

    rows, maps = [], {}
    dims = [None, *sorted((dim for dim in set(dims) if dim < hidden), reverse=True)]
    for label, table in tests.items():
        rows.append({"setting": label, "dim": table.shape[1], "metrics": test.score(table)})
        for dim in dims:
            maps[label, dim] = whitening_layer(*fit_whitening(fits[label], dim=dim))
            with torch.no_grad():  # the map a saved model's Dense applies to the same pooled vectors
                whitened = maps[label, dim](torch.from_numpy(table)).numpy()  # (S, k)
            rows.append({"setting": f"{label} + whitening", "dim": whitened.shape[1], "metrics": test.score(whitened)})
        print(f"{label}: {rows[-1 - len(dims)]['metrics']['avg']:.2f} -> "
              + ", ".join(f"{row['metrics']['avg']:.2f}" for row in rows[-len(dims):]), flush=True)  # fmt: skip
    checks = [reload_check(path, poolers[label], maps[label, None], test.sentences, tests[label], label)
              for label in (next(iter(poolers)), list(poolers)[-1])]  # fmt: skip
    return {"layers": layers, "hidden": hidden, "rows": rows, "reload_checks": checks,
            "ditto_dev_grid": {f"{layer},{head}": score for (layer, head), score in dev_scores.items()}}  # fmt: skip


@torch.inference_mode()
def pooled_tables(encoder, sentences: list[str], poolers: dict, batch_size: int) -> dict[object, np.ndarray]:
    """Every pooler's (S, H) table from one backbone pass (the encoder's tokenization, length-sorted batches)."""
    tokens = encoder.tokenize(sentences)
    order = sorted(range(len(sentences)), key=lambda i: -len(tokens["input_ids"][i]))
    pad = encoder.tokenizer.pad_token_id or 0
    tables = {key: np.empty((len(sentences), encoder.backbone.config.hidden_size), dtype=np.float32) for key in poolers}
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch = pad_batch([{key: tokens[key][i] for key in tokens} for i in rows], pad)
        batch = {key: value.to(encoder.device) for key, value in batch.items()}
        out = encoder.backbone(**batch, output_attentions=True, output_hidden_states=True)
        for key, pooler in poolers.items():
            tables[key][rows] = pooler(out, batch, encoder.backbone).float().cpu().numpy()  # (B, H)
    return tables


def reload_check(path: str, pooler, whitening, sentences: list[str], table: np.ndarray, label: str) -> dict:
    """Build the model for real (pooler + whitening), save it, reload it with load_encoder, compare embeddings."""
    encoder = load_encoder(path, pooler="mean")
    if isinstance(pooler, LayerMeanPooler):
        use_layers(encoder, pooler.layers)
    else:
        encoder.set_pooler(pooler)
    encoder.set_outputs([whitening])
    sample = sentences[:: max(1, len(sentences) // 500)]  # ~500 test sentences, every length
    with torch.no_grad():
        expected = whitening(torch.from_numpy(table[:: max(1, len(sentences) // 500)])).numpy()
    with tempfile.TemporaryDirectory() as folder:
        encoder.save(folder)
        reloaded = load_encoder(folder)
        got = reloaded.encode(sample, normalize=False)
    return {"setting": f"{label} + whitening", "saved_pooler": reloaded.pooler.name, "sentences": len(sample),
            "max_abs_diff": float(np.abs(got - expected).max())}  # fmt: skip


def markdown(saved: dict) -> str:
    lines = ["# Training-free post-processing (STS test, Spearman x100; STS12-16 'all')", ""]
    for name, record in saved["models"].items():
        lines += [f"## {name}", "",
                  f"{record['layers']} layers, {record['hidden']} dimensions; whitening fitted on the first "
                  f"{record['fit_sentences']} lines of {record['fit_on']} (unlabelled). {record['seconds']:.0f} s on "
                  f"{record['machine']}. Saved-and-reloaded models match the tables to "
                  f"{max(c['max_abs_diff'] for c in record['reload_checks']):.1e} (max abs, whitened).", "",
                  f"    python benchmarks/postprocess.py --models {name}", "",
                  "| setting | dim | " + " | ".join(TITLES[t] for t in TASKS) + " | avg |",
                  "| --- | ---: |" + " ---: |" * (len(TASKS) + 1)]  # fmt: skip
        for row in record["rows"]:
            values = " | ".join(f"{row['metrics'][t]:.2f}" for t in (*TASKS, "avg"))
            lines.append(f"| {row['setting']} | {row['dim']} | {values} |")
        lines.append("")
    lines += ["Whitening without a dimension keeps every direction that varies: the mean of one layer's LayerNorm",
              "outputs lies in a hyperplane, so `mean + whitening` has one dimension fewer than the model.", ""]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
