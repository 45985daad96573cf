"""Method options, checked against the code: a recipe's ``options`` bind to the objective's signature.

An objective (or wrapper) takes its knobs as keyword-only parameters with defaults and annotations
(``temperature: float = 0.05``). :func:`check_options` binds a mapping of options to them before any
model loads: a name the signature lacks or a value of the wrong type is a one-line :class:`~csekit.errors.CsekitError` naming the method, the option and what it accepts
(the contract suite checks that every option is keyword-only with a default).
Types follow the annotations (:func:`coerce`, which the recipe's own keys use too).
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from csekit.errors import CsekitError

#: Parameters the builder passes itself, never recipe options.
BUILDER_PARAMETERS = frozenset({"self", "encoder", "context", "inner"})


def option_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The options ``cls`` takes: its constructor's parameters that the builder does not pass."""
    parameters = inspect.signature(cls.__init__).parameters
    return {name: p for name, p in parameters.items() if name not in BUILDER_PARAMETERS}


def check_options(cls: type, options: Mapping[str, Any], *, owner: str) -> dict[str, Any]:
    """``options`` checked and converted for ``cls`` (``owner`` names it in errors: ``objective 'simcse'``)."""
    accepted = option_parameters(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        choices = ", ".join(accepted) or "no options"
        raise CsekitError(f"{owner} has no option(s) {', '.join(unknown)}; it accepts {choices}")
    hints = typing.get_type_hints(cls.__init__)
    return {name: coerce(value, hints.get(name, Any), f"{owner}: option {name}") for name, value in options.items()}


def describe_options(cls: type) -> str:
    """``name=default`` of every option, for messages and ``--help-keys``."""
    return ", ".join(f"{name}={p.default!r}" for name, p in option_parameters(cls).items())


def coerce(value: Any, hint: Any, where: str) -> Any:
    """``value`` as the annotation ``hint`` wants it, or a one-line error naming ``where``.

    Ints pass for floats, number strings too (YAML reads ``3e-5`` as a string); numbers pass for strings;
    one item passes for a list of one; a mapping's keys become strings. In a union, a value that already
    has one of its types stays as it is.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (types.UnionType, typing.Union):
        if any(isinstance(arg, type) and isinstance(value, arg) for arg in args):
            return value
        return coerce(value, next(arg for arg in args if arg is not type(None)), where)
    if origin in (dict, Mapping) or hint is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise CsekitError(f"{where} must be a mapping of names to values, got {value!r}")
        return {str(name): item for name, item in value.items()}
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        items = value if isinstance(value, list | tuple) else [value]
        return [coerce(item, args[0] if args else Any, where) for item in items]
    if hint is float and isinstance(value, int | float | str) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(hint, type) and (not isinstance(value, hint) or (hint is int and isinstance(value, bool))):
        raise CsekitError(f"{where} must be {hint.__name__}, got {value!r}")
    return value
