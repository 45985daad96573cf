"""``csekit serve MODEL``: an embedding HTTP server (OpenAI's and text-embeddings-inference's routes).

The routes, the batching and the limits are :mod:`csekit.serve`'s; this command loads the model, checks
its options and runs the server until SIGINT or SIGTERM. FastAPI and uvicorn are imported only here, when
the command runs, so the other commands work without the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from csekit.cli.arguments import positive_int
from csekit.distributed import resolve_device
from csekit.errors import CsekitError
from csekit.models import POOLERS, load_encoder
from csekit.serve.batcher import DEFAULT_MAX_BATCH_TOKENS
from csekit.serve.limits import ServeLimits

API_KEY_VARIABLE = "CSEKIT_API_KEY"


def add_parser(commands: argparse._SubParsersAction, name: str) -> None:
    parser = commands.add_parser(name, help="serve a model over HTTP: OpenAI /v1/embeddings, /embed, /similarity")
    parser.add_argument("model", metavar="MODEL", help="sentence-transformers folder, Hugging Face model folder, or hub id")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=port_number, default=8080)
    parser.add_argument("--model-name", help="the name clients send as 'model' (default: the model folder's name)")
    parser.add_argument("--pooler", choices=list(POOLERS), help="override the model's pooler (default: saved one, or cls)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    defaults = ServeLimits()
    parser.add_argument("--max-batch-tokens", type=positive_int, default=DEFAULT_MAX_BATCH_TOKENS,
                        help="padded tokens (rows x longest) per model batch; at least the model's maximum input length "
                        "(default: %(default)s)")  # fmt: skip
    parser.add_argument("--max-inputs", type=positive_int, default=defaults.max_inputs,
                        help="texts per request (default: %(default)s)")  # fmt: skip
    parser.add_argument("--max-input-chars", type=positive_int, default=defaults.max_input_chars,
                        help="characters per text (default: %(default)s)")  # fmt: skip
    parser.add_argument("--max-body-bytes", type=positive_int, default=defaults.max_body_bytes,
                        help="bytes per request body, checked before it is parsed (default: %(default)s)")  # fmt: skip
    parser.add_argument("--api-key", help=f"require 'Authorization: Bearer KEY' on every route but /health (default: "
                        f"${API_KEY_VARIABLE}, which keeps the key out of the process list; unset: no key)")  # fmt: skip
    parser.add_argument("--index", metavar="PATH", help="a search index built with this model: adds POST /search")
    parser.add_argument("--graceful-timeout", type=seconds, default=30.0,
                        help="seconds the requests in flight get to finish after SIGINT/SIGTERM (default: %(default)s)")  # fmt: skip
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"], default="info")
    parser.set_defaults(run=run)


def port_number(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, not {value}")
    return value


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be at least 0, not {text}")
    return value


def run(args: argparse.Namespace) -> int:
    try:
        from csekit.serve.app import create_app
        from csekit.serve.server import listen, serve
    except ImportError as error:
        raise CsekitError(f"csekit serve needs the serve extra ({error.name} is not installed): "
                          "pip install 'csekit[serve]'") from None  # fmt: skip
    api_key = _api_key(args.api_key)
    index = None
    if args.index:  # before the model loads: a bad index path fails at once
        from csekit.search import load_index

        index = load_index(args.index)
    encoder = load_encoder(args.model, pooler=args.pooler).to(resolve_device(args.device))
    model_name = args.model_name or default_model_name(args.model)
    limits = ServeLimits(max_inputs=args.max_inputs, max_input_chars=args.max_input_chars,
                         max_body_bytes=args.max_body_bytes)  # fmt: skip
    app = create_app(encoder, model_name=model_name, index=index, limits=limits,
                     max_batch_tokens=args.max_batch_tokens, api_key=api_key)  # fmt: skip
    sock = listen(args.host, args.port)
    routes = "/v1/embeddings /embed /similarity" + (" /search" if index is not None else "")
    print(f"csekit serve: {model_name} (pooler {encoder.pooler.name}, {encoder.embedding_dim} dimensions, at most "
          f"{encoder.max_length} tokens an input) on http://{args.host}:{args.port} {routes}"
          + ("" if api_key else " (no API key)"), file=sys.stderr, flush=True)  # fmt: skip
    stopped_by = serve(app, sock, log_level=args.log_level, graceful_timeout=args.graceful_timeout)
    if stopped_by:
        print(f"csekit serve: stopped by {stopped_by} after the requests in flight", file=sys.stderr)
    return 0


def default_model_name(model: str) -> str:
    """A local folder's name (``runs/simcse/best`` -> ``best``), or a hub id as given."""
    return Path(model).resolve().name if os.path.isdir(model) else model


def _api_key(given: str | None) -> str | None:
    if given is not None and not given.strip():
        raise CsekitError("--api-key is empty: give a key, or leave the option out to serve without one")
    return given or os.environ.get(API_KEY_VARIABLE) or None

