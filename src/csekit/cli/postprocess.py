"""``csekit postprocess MODEL --method whitening|ditto --output DIR``: training-free post-processing, saved.

- ``whitening``: BERT-whitening fitted on unlabelled sentences (``--fit-on FILE``, one a line), optionally
  to ``--dim K``; with ``--layers 1,12`` the tokens of those layers are averaged first (WhiteningBERT).
- ``ditto``: diagonal attention pooling with ``--layer L --head H`` over ``--layers`` (default: the
  embedding output and the last layer, as the reference).

The output is a normal model folder: ``csekit eval DIR`` evaluates it. Whitened folders load in stock
sentence-transformers too; Ditto folders need csekit's input module (``SentenceTransformer(DIR,
trust_remote_code=True)`` with csekit installed, see :mod:`csekit.models.st_module`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from csekit.cli.arguments import positive_int, refuse_other_methods_options
from csekit.distributed import resolve_device
from csekit.errors import CsekitError
from csekit.models import POOLERS, AffineMap, load_transformer
from csekit.models.saving import check_model_target
from csekit.postprocess import DittoPooler, read_fit_sentences, use_layers, whiten
from csekit.postprocess.ditto import DEFAULT_HEAD, DEFAULT_LAYER
from csekit.postprocess.layers import parse_layers

METHODS = ("whitening", "ditto")
#: Options that only one method reads: giving them to the other is a mistake worth saying.
ONLY_FOR = {"fit_on": "whitening", "dim": "whitening", "max_sentences": "whitening", "pooler": "whitening",
            "layer": "ditto", "head": "ditto"}  # fmt: skip


def add_parser(commands: argparse._SubParsersAction, name: str) -> None:
    parser = commands.add_parser(
        name, help="whiten (BERT-whitening, WhiteningBERT) or Ditto-pool a model, training-free, and save it"
    )
    parser.add_argument("model", help="sentence-transformers folder, Hugging Face model folder, or hub id")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--output", required=True, help="folder to write the post-processed model to")
    parser.add_argument("--fit-on", help="whitening: unlabelled sentences, one a line (never an evaluation set)")
    parser.add_argument("--dim", type=int, help="whitening: keep the K directions of largest variance (default: all)")
    parser.add_argument("--max-sentences", type=int, help="whitening: fit on the first N sentences (default: all)")
    parser.add_argument(
        "--layers",
        help="average the tokens of these hidden states, 0 = embedding output, e.g. 1,12 (whitening: WhiteningBERT's "
             "layer combinations; ditto: default 0,L, the reference's first+last)",
    )  # fmt: skip
    parser.add_argument("--layer", type=int, help=f"ditto: attention layer, from 0 (default {DEFAULT_LAYER})")
    parser.add_argument(
        "--head", type=int, help=f"ditto: head of that layer, from 0 (default {DEFAULT_HEAD}: the reference's BERT-base)"
    )
    parser.add_argument("--pooler", choices=list(POOLERS), help="whitening: pooler to whiten (default: saved, or cls)")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    parser.set_defaults(run=run)


def check_options(args: argparse.Namespace) -> None:
    """One-line errors for option combinations that cannot mean what the user wants."""
    refuse_other_methods_options(args, ONLY_FOR)
    if args.method == "whitening" and args.fit_on is None:
        raise CsekitError("whitening needs --fit-on FILE: unlabelled sentences, one a line")
    if args.layers is not None and args.pooler is not None:
        raise CsekitError("give --layers or --pooler, not both: --layers chooses a layer-averaging pooler")
    output, model = Path(args.output).resolve(), Path(args.model).resolve()
    if output == model or output in model.parents:
        raise CsekitError(f"--output {args.output} holds the input model {args.model}: give a new folder beside it")


def run(args: argparse.Namespace) -> int:
    check_options(args)
    check_model_target(Path(args.output))  # an existing folder that is not a csekit model is never replaced
    # Read the fitting file before the model loads, so a bad file fails in a second, not after a download.
    sentences = read_fit_sentences(args.fit_on, max_sentences=args.max_sentences) if args.fit_on else []
    encoder = load_transformer(args.model, purpose="post-processing", pooler=args.pooler).to(resolve_device(args.device))
    num_layers = encoder.backbone.config.num_hidden_layers
    if args.method == "whitening":
        if args.layers is not None:
            use_layers(encoder, args.layers)
        hidden = encoder.backbone.config.hidden_size
        whiten(encoder, sentences, dim=args.dim, batch_size=args.batch_size)
        summary = (f"whitening fitted on {len(sentences)} sentences of {args.fit_on}: pooler {encoder.pooler.name}, "
                   f"{hidden} -> {encoder.embedding_dim} dimensions")  # fmt: skip
    else:
        if any(isinstance(module, AffineMap) for module in encoder.outputs):
            raise CsekitError(f"{args.model} is whitened after its own pooler; apply ditto to the model before whitening")
        layers = parse_layers(args.layers or f"0,{num_layers}", num_layers=num_layers)
        layer = DEFAULT_LAYER if args.layer is None else args.layer
        head = DEFAULT_HEAD if args.head is None else args.head
        encoder.set_pooler(DittoPooler(layer=layer, head=head, layers=layers))
        summary = f"ditto: attention layer {layer} head {head}, hidden states {','.join(map(str, layers))}"
    encoder.save(args.output)
    print(f"{summary}; saved to {args.output} (evaluate with: csekit eval {args.output})")
    return 0

