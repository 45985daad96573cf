"""Argument types and checks the commands share: a bad value is a one-line error, exit 2."""

from __future__ import annotations

import argparse

from csekit.errors import CsekitError


def positive_int(text: str) -> int:
    """An integer >= 1 (batch sizes, counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def refuse_other_methods_options(args: argparse.Namespace, only_for: dict[str, str]) -> None:
    """A one-line error for an option given with a method it does not belong to (``only_for``: option -> method)."""
    for option, method in only_for.items():
        if getattr(args, option) is not None and args.method != method:
            raise CsekitError(f"--{option.replace('_', '-')} is a {method} option, not a {args.method} one")
