"""Saved poolers in sentence-transformers: the embeddings ``SentenceTransformer(path)`` computes against
the ones ``csekit eval`` uses, for every pooler no stock module expresses (and a stock one beside them).

    python benchmarks/st_parity.py [--model ../shared/models/bert-mini-mlm] [--json out.json]

Each pooler is set on the model, saved, loaded back by csekit (``load_encoder``: what ``csekit eval``
encodes) and by sentence-transformers (``trust_remote_code=True`` where the folder names csekit's input
module), and both encode the distinct STS-B dev sentences; the table gives the largest absolute
difference of any coordinate, and the module the folder starts with.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from csekit import load_encoder
from csekit.evaluation.sts import STSEvaluator
from csekit.models.pooling import build_pooler

SHARED = Path(__file__).resolve().parents[2] / "shared"
#: Pooler -> settings for a BERT-mini-sized model (Ditto's layer and head: chosen on STS-B dev, postprocess.md).
POOLERS = {"mean": {}, "mask": {}, "mask_denoised": {}, "ditto": {"layer": 0, "head": 1}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED / "models" / "bert-mini-mlm"))
    parser.add_argument("--data-dir", default=os.environ.get("CSEKIT_DATA", str(SHARED / "data/senteval/downstream")))
    parser.add_argument("--json")
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    sentences = STSEvaluator("stsb", mode="dev", data_dir=args.data_dir).sentences
    rows = []
    for name, settings in POOLERS.items():
        encoder = load_encoder(args.model, pooler="mean")
        encoder.set_pooler(build_pooler(name, config=encoder.backbone.config, tokenizer=encoder.tokenizer,
                                        settings=settings))  # fmt: skip
        with tempfile.TemporaryDirectory() as folder:
            encoder.save(folder)
            first = json.loads((Path(folder) / "modules.json").read_text())[0]["type"]
            start = time.perf_counter()
            ours = load_encoder(folder).encode(sentences, batch_size=128)
            seconds = time.perf_counter() - start
            stock = first.startswith("sentence_transformers.")
            model = SentenceTransformer(folder, device="cpu", trust_remote_code=not stock)
            start = time.perf_counter()
            theirs = model.encode(sentences, batch_size=128, convert_to_numpy=True)
            rows.append({"pooler": name, "settings": settings, "first_module": first, "sentences": len(sentences),
                         "max_abs_diff": float(np.abs(ours - theirs).max()), "csekit_s": seconds,
                         "sentence_transformers_s": time.perf_counter() - start})  # fmt: skip
        print(f"{name}: max abs diff {rows[-1]['max_abs_diff']:.2e} ({first})", flush=True)
    print(f"\n{Path(args.model).name}, {len(sentences)} distinct STS-B dev sentences\n")
    print("| pooler | first module | max abs difference | csekit s | sentence-transformers s |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in rows:
        print(f"| {row['pooler']} | `{row['first_module']}` | {row['max_abs_diff']:.2e} | {row['csekit_s']:.1f} | "
              f"{row['sentence_transformers_s']:.1f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": Path(args.model).name, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
