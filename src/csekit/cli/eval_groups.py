"""``csekit eval`` over several models: mean ± std per method, and each method against the first.

    csekit eval runs/a-seed1/best runs/a-seed2/best runs/a-seed3/best         # one method, 3 seeds
    csekit eval --group simcse=runs/s1/best,runs/s2/best --group esimcse=runs/e1/best,runs/e2/best
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from csekit.atomic import write_text
from csekit.distributed import resolve_device
from csekit.errors import CsekitError
from csekit.evaluation.base import Evaluator
from csekit.evaluation.compare import EvaluatedModel, compare, evaluate_model, summarize
from csekit.models import load_encoder


def table_rows(family: str, evaluator: Evaluator) -> list[tuple[str, str, int]]:
    """(family/metric, title, decimals) of one family's rows in the group tables."""
    return [(f"{family}/{key}", title, decimals) for key, title, decimals in evaluator.summary_rows()]


def parse_groups(models: list[str], specs: list[str]) -> dict[str, list[str]]:
    """Name -> model paths, from positional models (one group, "all") or ``--group NAME=PATH,PATH``."""
    if models and specs:
        raise CsekitError("give models either as MODEL arguments or with --group NAME=PATH,..., not both")
    if not models and not specs:
        raise CsekitError("no model given: csekit eval MODEL [MODEL ...] or --group NAME=PATH,PATH,...")
    if models:
        return {"all": list(models)}
    groups: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, paths = spec.partition("=")
        members = [path.strip() for path in paths.split(",") if path.strip()]
        if not sep or not name.strip() or not members:
            raise CsekitError(f"--group {spec!r}: expected NAME=PATH[,PATH...]")
        if name.strip() in groups:
            raise CsekitError(f"--group {name.strip()!r} is given twice; give each method one --group")
        groups[name.strip()] = members
    return groups


def run_groups(args: argparse.Namespace, groups: dict[str, list[str]], evaluators: dict[str, Evaluator]) -> int:
    evaluated: dict[str, list[EvaluatedModel]] = {}
    for name, paths in groups.items():
        evaluated[name] = []
        for path in paths:
            encoder = load_encoder(path, pooler=args.pooler, truncate_dim=args.dim, layers=args.layers)
            encoder = encoder.to(resolve_device(args.device))
            model = evaluate_model(path, encoder, evaluators, pooler=encoder.pooler.name, batch_size=args.batch_size)
            evaluated[name].append(model)
            print(f"{name}: {path}  seed {model.seed if model.seed is not None else '?'}  pooler {model.pooler}")
    summaries = {name: summarize(models) for name, models in evaluated.items()}
    rows = [row for family, evaluator in evaluators.items() for row in table_rows(family, evaluator)]
    row_keys = [key for key, _, _ in rows]
    sts_tasks = list(evaluators["sts"].tasks) if "sts" in evaluators else []
    baseline, *others = evaluated
    options = {"metrics": row_keys, "sts_tasks": sts_tasks, "resamples": args.resamples, "seed": args.bootstrap_seed}
    comparisons = {other: compare(evaluated[baseline], evaluated[other], **options) for other in others}
    print(f"\nmean ± std over each method's models (sample std, n - 1); mode {args.mode}")
    for family, evaluator in evaluators.items():
        print("\n" + format_group_table(summaries, table_rows(family, evaluator)))
    for other, comparison in comparisons.items():
        print("\n" + format_comparison(baseline, other, comparison, rows, args.resamples))
    if args.json_path:
        record = {"mode": args.mode, "tasks": args.tasks, "groups": {
            name: {"models": [{"model": m.model, "seed": m.seed, "pooler": m.pooler, "metrics": m.metrics}
                              for m in evaluated[name]], **summaries[name]}
            for name in evaluated
        }, "comparisons": [{"baseline": baseline, "other": other, **c} for other, c in comparisons.items()]}  # fmt: skip
        write_text(Path(args.json_path), json.dumps(_finite(record), indent=2) + "\n")
    return 0


def _finite(value):
    """JSON has no nan or inf: the std of one model and the t of identical runs become null."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _mean_std(summary: dict, key: str, decimals: int) -> str:
    mean, std = summary["mean"].get(key), summary["std"].get(key)
    if mean is None:
        return "-"
    return f"{mean:.{decimals}f}" + ("" if std is None or math.isnan(std) else f" ± {std:.{decimals}f}")


def format_group_table(summaries: dict[str, dict], rows: list[tuple[str, str, int]]) -> str:
    """Rows: metrics; columns: methods, each ``mean ± std`` over its n models."""
    headers = [f"{name} (n={summary['n']})" for name, summary in summaries.items()]
    cells = [[_mean_std(summary, key, decimals) for summary in summaries.values()] for key, _, decimals in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
    lines = [f"{'metric':<9}" + "".join(f"  {h:>{w}}" for h, w in zip(headers, widths))]
    lines.append("-" * len(lines[0]))
    for (_, title, _), row in zip(rows, cells):
        lines.append(f"{title:<9}" + "".join(f"  {cell:>{w}}" for cell, w in zip(row, widths)))
    return "\n".join(lines)


def format_comparison(
    baseline: str, other: str, comparison: dict, rows: list[tuple[str, str, int]], resamples: int
) -> str:
    """Δ = other − baseline per metric: bootstrap interval and p (STS), t-test p (seeds)."""
    t_test = comparison["t_test"]
    if t_test is None:
        t_note = "no t-test: a method has one model and the seeds do not pair"
    elif t_test["kind"] == "paired":
        t_note = f"paired t-test over seeds {', '.join(map(str, t_test['seeds']))}"
    else:
        t_note = "Welch's t-test (the methods share no seeds)"
    lines = [f"{other} − {baseline}: paired bootstrap over test pairs ({resamples} resamples), {t_note}",
             f"{'metric':<9} {'Δ':>8} {'95% interval':>18} {'p boot':>7} {'p t-test':>8}"]  # fmt: skip
    lines.append("-" * len(lines[1]))
    for key, title, decimals in rows:
        boot = comparison["bootstrap"].get(key)
        test = (t_test or {}).get("metrics", {}).get(key)
        if boot is None and test is None:
            continue
        delta = boot["delta"] if boot else test["delta"]
        interval = f"[{boot['low']:+.2f}, {boot['high']:+.2f}]" if boot else "-"
        p_boot = f"{boot['p_value']:.4f}" if boot else "-"
        p_test = f"{test['p_value']:.4f}" if test else "-"
        lines.append(f"{title:<9} {delta:+8.{max(decimals, 2)}f} {interval:>18} {p_boot:>7} {p_test:>8}")
    return "\n".join(lines)
