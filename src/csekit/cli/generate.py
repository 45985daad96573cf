"""``csekit generate PIPELINE --input FILE --output FILE --generator SPEC``: LLM-made training data.

The pipeline (:data:`~csekit.generation.pipelines.PIPELINES`) reads the input sentences, asks the generator
through a disk cache (``--cache``, default ``OUTPUT.cache/``: a killed or rerun command asks again only
what is missing), and writes the training file (``.csv`` or ``.jsonl``) and ``OUTPUT.provenance.jsonl``
(one record per row: pipeline, stage and template of each generated column, generator, sampling, source
row), each whole or not at all. The summary line gives the rows kept after each stage and the outputs
dropped, by kind.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from dataclasses import replace
from pathlib import Path

import yaml

from csekit.atomic import check_writable, write_text
from csekit.cli.arguments import positive_int
from csekit.data.readers import read_examples
from csekit.errors import CsekitError
from csekit.generation import CachedGenerator, make_generator
from csekit.generation.pipeline import PipelineResult, bind_options, default_sampling, pipeline_options
from csekit.generation.pipelines import PIPELINES
from csekit.generation.specs import SPEC_HELP

OUTPUT_SUFFIXES = (".csv", ".jsonl")


def add_parser(commands: argparse._SubParsersAction, name: str) -> None:
    options = "\n".join(f"  {pipeline}: " + (", ".join(f"{key}={p.default!r}" for key, p in pipeline_options(run).items()))
                        for pipeline, run in sorted(PIPELINES.items()))  # fmt: skip
    parser = commands.add_parser(name, help="generate training data with an LLM (SynCSE, CLAIF, ...)",
                                 description="Generate a training file with an LLM, through a disk cache that a killed or "
                                             "rerun command resumes from; OUTPUT.provenance.jsonl records how each row was made.",
                                 epilog=f"pipeline options (--option KEY=VALUE):\n{options}",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("pipeline", choices=sorted(PIPELINES), metavar="PIPELINE", help=", ".join(sorted(PIPELINES)))
    parser.add_argument("--input", required=True, help="sentences: .txt (one a line), or .csv/.jsonl with a sent0 column")
    parser.add_argument("--output", required=True, help=f"training file to write ({', '.join(OUTPUT_SUFFIXES)})")
    parser.add_argument("--generator", required=True, metavar="SPEC", help=SPEC_HELP)
    parser.add_argument("--cache", help="cache folder (default: OUTPUT.cache beside the output)")
    parser.add_argument("--concurrency", type=positive_int, default=4, help="requests in flight (openai:; default 4)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="prompts per generate call (hf:; default 8)")
    parser.add_argument("--limit", type=positive_int, help="use the first N input sentences")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a pipeline option (repeatable), e.g. shots=2 or mask_rates=[0.0,0.4]")  # fmt: skip
    parser.add_argument("--max-new-tokens", type=positive_int, help="tokens per output (default: the pipeline's)")
    parser.add_argument("--temperature", type=float, help="0 = greedy (default: the pipeline's)")
    parser.add_argument("--top-p", type=float, help="nucleus sampling mass (default: the pipeline's)")
    parser.add_argument("--seed", type=int, help="sampling seed (default: the pipeline's)")
    parser.set_defaults(run=run)


def _parse_options(pairs: list[str]) -> dict[str, object]:
    options = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise CsekitError(f"--option {pair!r} must be KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)  # numbers, lists ([0.0,0.4]) and strings as YAML reads them
    return options


def _read_rows(path: Path, columns: tuple[str, ...], limit: int | None) -> list[dict[str, str]]:
    if not path.exists():
        raise CsekitError(f"no input file {path}: give sentences one a line (.txt) or a .csv/.jsonl with a "
                          f"{columns[0]} column, e.g. the first 11,914 lines of SimCSE's wiki1m_for_simcse.txt "
                          "(csekit's asset wiki1m-first11914)")  # fmt: skip
    rows = []
    for row in read_examples(path, columns=columns):
        if limit is not None and len(rows) == limit:
            break
        rows.append(dict(row))
    if not rows:
        raise CsekitError(f"{path} holds no sentences")
    return rows


def _training_file(result: PipelineResult, suffix: str) -> str:
    if suffix == ".jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in result.rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=result.columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(result.rows)
    return buffer.getvalue()


def run(args: argparse.Namespace) -> int:
    pipeline = PIPELINES[args.pipeline]
    output = Path(args.output)
    if output.suffix not in OUTPUT_SUFFIXES:
        raise CsekitError(f"--output {output}: write a {' or '.join(OUTPUT_SUFFIXES)} file")
    check_writable(output)
    options = bind_options(args.pipeline, pipeline, _parse_options(args.option))
    given = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed}
    sampling = replace(default_sampling(pipeline), **{key: value for key, value in given.items() if value is not None})
    rows = _read_rows(Path(args.input), getattr(pipeline, "input_columns", ("sent0",)), args.limit)
    cache_dir = Path(args.cache) if args.cache else output.with_name(output.name + ".cache")
    generator = CachedGenerator(make_generator(args.generator, concurrency=args.concurrency, batch_size=args.batch_size),
                                cache_dir)  # fmt: skip
    result = pipeline(rows, generator, work_dir=cache_dir / "work", sampling=sampling, **options)
    write_text(output, _training_file(result, output.suffix))
    provenance = output.with_name(output.stem + ".provenance.jsonl")
    write_text(provenance, "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in result.provenance))
    stages = " -> ".join(f"{stage} {count}" for stage, count in result.stages.items())
    dropped = ", ".join(f"{kind} {count}" for kind, count in sorted(result.malformed.items())) or "none"
    failures = getattr(generator.inner, "failures", None)
    failed = f", backend failures: {dict(failures)}" if failures else ""
    print(f"{args.pipeline}: {stages} rows; dropped: {dropped}; asked the generator {generator.asked}, "
          f"from cache {generator.hits}{failed}; wrote {len(result.rows)} rows to {output} and {provenance.name}")  # fmt: skip
    return 0
