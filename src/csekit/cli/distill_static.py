"""``csekit distill-static --teacher MODEL --method model2vec|contextual --output DIR``: a static table, saved.

- ``model2vec``: every vocabulary token through the teacher alone, PCA to ``--dim``, Zipf SIF weights
  (``--sif``); needs no corpus.
- ``contextual``: Wada et al. 2025: each token's states averaged over the ``--corpus`` sentences that
  contain it (at most ``--per-token``), sentence-level PCA removing the top ``--remove`` components, then
  ``--steps`` of fine-tuning against the teacher's similarities (``--no-fine-tune`` skips them).

The output is a sentence-transformers ``StaticEmbedding`` folder: ``csekit eval DIR`` evaluates it,
``SentenceTransformer(DIR)`` loads it.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
from pathlib import Path

from csekit.cli.arguments import positive_int, refuse_other_methods_options
from csekit.data.readers import read_examples
from csekit.distributed import resolve_device
from csekit.errors import CsekitError
from csekit.models import load_transformer
from csekit.models.saving import check_model_target
from csekit.static import METHODS, FineTuneSettings, distill_static
from csekit.static.contextual import DIM, PER_TOKEN, REMOVE
from csekit.static.model2vec import SIF_COEFFICIENT

#: Options that only one method reads: giving them to the other is a mistake worth saying.
ONLY_FOR = {"corpus": "contextual", "remove": "contextual", "per_token": "contextual", "max_sentences": "contextual",
            "steps": "contextual", "no_fine_tune": "contextual", "sif": "model2vec"}  # fmt: skip
CORPUS_HINT = "unlabelled text, one sentence a line (e.g. ../shared/data/train/unsup/wiki1m_for_simcse.first11914lines.txt)"


def add_parser(commands: argparse._SubParsersAction, name: str) -> None:
    parser = commands.add_parser(name, help="distil a static embedding table (model2vec, or Wada et al.'s "
                                            "contextual method) from a sentence encoder and save it")  # fmt: skip
    parser.add_argument("--teacher", required=True, help="sentence-transformers folder, Hugging Face folder or hub id")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--output", required=True, help="folder to write the static model to")
    parser.add_argument("--dim", type=positive_int, default=DIM, help="width of the table (default %(default)s)")
    parser.add_argument("--sif", type=float, help=f"model2vec: SIF coefficient a of a / (a + p) (default {SIF_COEFFICIENT})")
    parser.add_argument("--corpus", nargs="+", help=f"contextual: {CORPUS_HINT}")
    parser.add_argument("--max-sentences", type=positive_int, help="contextual: read the first N corpus sentences")
    parser.add_argument("--remove", type=int, help=f"contextual: top principal components removed (default {REMOVE})")
    parser.add_argument("--per-token", type=positive_int, help=f"contextual: sentences a token is averaged over (default {PER_TOKEN})")
    parser.add_argument("--steps", type=positive_int, help=f"contextual: most fine-tuning steps (default {FineTuneSettings.max_steps}, early-stopped)")
    parser.add_argument("--no-fine-tune", action="store_true", default=None, help="contextual: stop after the PCA")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.set_defaults(run=run)


def check_options(args: argparse.Namespace) -> None:
    refuse_other_methods_options(args, ONLY_FOR)
    if args.method == "contextual" and not args.corpus:
        raise CsekitError(f"the contextual method needs --corpus FILE ...: {CORPUS_HINT}")
    if args.sif is not None and not 0 < args.sif < 1:
        raise CsekitError(f"--sif must be between 0 and 1 (exclusive), not {args.sif}")
    if args.remove is not None and args.remove < 0:
        raise CsekitError(f"--remove must be 0 or more, not {args.remove}")
    for path in args.corpus or []:
        if not Path(path).is_file():
            raise CsekitError(f"corpus file {path} does not exist: give {CORPUS_HINT}")


def read_corpus(paths: list[str], *, max_sentences: int | None) -> list[str]:
    sentences = itertools.chain.from_iterable(read_examples(path, columns=("sent0",)) for path in paths)
    texts = [example["sent0"] for example in itertools.islice(sentences, max_sentences)]
    if not texts:
        raise CsekitError(f"{' '.join(paths)}: no sentences (the files are empty or blank)")
    return texts


def run(args: argparse.Namespace) -> int:
    check_options(args)
    check_model_target(Path(args.output))  # an existing folder that is not a csekit model is never replaced
    sentences = read_corpus(args.corpus, max_sentences=args.max_sentences) if args.corpus else []
    teacher = load_transformer(args.teacher, purpose="a teacher").to(resolve_device(args.device))
    fine_tuning = None if args.no_fine_tune else FineTuneSettings()
    if fine_tuning is not None and args.steps is not None:
        fine_tuning = dataclasses.replace(fine_tuning, max_steps=args.steps)
    options = {key: value for key, value in {"remove": args.remove, "per_token": args.per_token,
                                             "sif_coefficient": args.sif}.items() if value is not None}  # fmt: skip
    student, report = distill_static(teacher, method=args.method, sentences=sentences, dim=args.dim,
                                     fine_tuning=fine_tuning, **options)  # fmt: skip
    student.provenance["teacher"] = args.teacher
    student.save(args.output)
    summary = {key: value for key, value in report.items() if key != "fine_tuning"}
    if "fine_tuning" in report:  # its dev loss at the start, at the step kept, and the steps run
        summary["fine_tuning"] = {key: report["fine_tuning"][key] for key in ("initial_dev_loss", "best_dev_loss",
                                                                             "best_step", "steps")}  # fmt: skip
    print(json.dumps(summary))
    print(f"{args.method} static model ({len(student.tokenizer.get_vocab())} tokens x {student.embedding_dim}) saved to "
          f"{args.output} (evaluate with: csekit eval {args.output})")  # fmt: skip
    return 0
