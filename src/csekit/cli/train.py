"""``csekit train RECIPE.yaml [--set key=value ...] [--asset key=asset ...] [--resume]``."""

from __future__ import annotations

import argparse
import json

from csekit.data.assets import ASSETS, resolve
from csekit.errors import CsekitError
from csekit.training.config import TrainConfig


def add_parser(commands: argparse._SubParsersAction, name: str) -> None:
    parser = commands.add_parser(name, help="train a sentence encoder from a YAML recipe")
    parser.add_argument("recipe", nargs="?", help="YAML recipe (see recipes/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key, e.g. --set model=bert-base-uncased (repeatable)")  # fmt: skip
    parser.add_argument("--asset", dest="assets", action="append", default=[], metavar="KEY=ASSET",
                        help="set a recipe key to an asset: the copy in $CSEKIT_SHARED when there is one, else its "
                             f"public equivalent, downloaded once into the user cache ({', '.join(ASSETS)})")  # fmt: skip
    parser.add_argument("--skip-bad-lines", action="store_true",
                        help="count and skip malformed training lines instead of stopping at the first")  # fmt: skip
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the run OUTPUT_DIR holds (its best/, final/, checkpoint/, logs) with a new one")  # fmt: skip
    parser.add_argument("--compare-sts", action="store_true",
                        help="afterwards, print the STS test table of the starting model beside the trained one")  # fmt: skip
    parser.add_argument("--help-keys", action="store_true", help="list every recipe key with its default")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.help_keys:
        from csekit.objectives import OBJECTIVES, WRAPPERS
        from csekit.objectives.options import describe_options

        print(TrainConfig.describe())
        print("\noptions: of each objective (name=default)")
        print("\n".join(f"  {name:<12} {describe_options(cls)}" for name, cls in OBJECTIVES.items()))
        print("wrappers: (name=default)")
        print("\n".join(f"  {name:<12} {describe_options(cls)}" for name, cls in WRAPPERS.items()))
        return 0
    if not args.recipe:
        raise CsekitError("csekit train needs a recipe: csekit train RECIPE.yaml (see recipes/)")
    from csekit.distributed import get_rank
    from csekit.training.trainer import train

    overrides = [*asset_overrides(args.assets), *args.overrides, *(["skip_bad_lines=true"] if args.skip_bad_lines else [])]
    config = TrainConfig.from_yaml(args.recipe, overrides)
    result = train(config, resume=args.resume, overwrite=args.overwrite)
    if get_rank() != 0:  # under torchrun, one process reports
        return 0
    if result.best_metric is not None:
        print(f"best dev {config.eval_metric} {result.best_metric:.2f} at step {result.best_step}")
    print(f"{result.steps} steps, {result.examples_per_second:.1f} examples/s; models in {result.output_dir}/best "
          f"and {result.output_dir}/final")  # fmt: skip
    if args.compare_sts:
        compare_sts(config.model, config.pooler, str(result.output_dir / "best"), data_dir=config.data_dir)
    return 0


def asset_overrides(pairs: list[str]) -> list[str]:
    """``KEY=ASSET`` pairs as ``--set`` overrides to where each asset is, printed (what is missing is downloaded)."""
    keys = {}
    for pair in pairs:
        key, sep, name = pair.partition("=")
        if not sep:
            raise CsekitError(f"--asset {pair!r}: expected key=asset, e.g. model=bert-mini")
        keys[key.strip()] = name.strip()
    paths = resolve(keys.values(), on_download=lambda asset: print(f"downloading {asset.public.describe()}", flush=True))
    for key, name in keys.items():
        print(f"{key}: {name} from {paths[name]}")
    return [f"{key}={json.dumps(str(paths[name]))}" for key, name in keys.items()]  # JSON is YAML, quoted


def compare_sts(start: str, start_pooler: str, trained: str, *, data_dir: str | None) -> None:
    """The seven-task STS test table of the starting model (under the recipe's pooler, and under mean
    pooling, the stronger untrained baseline) beside the trained one."""
    from csekit.evaluation.sts import TASKS, TITLES, STSEvaluator
    from csekit.models import load_encoder

    evaluator = STSEvaluator(TASKS, mode="test", data_dir=data_dir)
    columns = {f"start ({start_pooler})": load_encoder(start, pooler=start_pooler)}
    if start_pooler != "mean":
        columns["start (mean)"] = load_encoder(start, pooler="mean")
    columns["trained"] = load_encoder(trained)
    scores = {name: evaluator.evaluate(model) for name, model in columns.items()}
    print("STS test, Spearman x100\n" + f"{'task':<8}" + "".join(f"{name:>22}" for name in scores))
    for task in (*TASKS, "avg"):
        print(f"{TITLES.get(task, task):<8}" + "".join(f"{metrics[task]:22.2f}" for metrics in scores.values()))
