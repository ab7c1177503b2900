"""Typed fields from untyped input: a config built from JSON or the command line gets a
one-line error naming the field, before any arithmetic on a wrong type can fail deep
inside (a string learning rate, a float layer count).

    check_fields(config, "TrainConfig")   validates and normalises in place (frozen too)

Accepted: `int` fields take integers (numpy's too, never bool or float); `float` fields
take any real number (stored as float); `bool` fields take booleans; `str` fields take
strings; `X | None` also takes None; `tuple[T, ...]` takes a list or tuple of T.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing

import numpy as np

_KIND = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def check_fields(config, where: str) -> None:
    """Check every field of the dataclass instance `config` against its annotation;
    store the normalised value (a numpy integer becomes an int, an int in a float field
    a float, a list in a tuple field a tuple). Raises ValueError naming the field."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        ok, normalised = _conform(value, hints[field.name])
        if not ok:
            raise ValueError(
                f"{where}: {field.name} must be {_describe(hints[field.name])}, got {value!r}"
            )
        if normalised is not value:
            object.__setattr__(config, field.name, normalised)


def _conform(value, hint):
    """(whether value fits hint, the value normalised)."""
    if hint is type(None):
        return value is None, value
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        for option in args:
            ok, normalised = _conform(value, option)
            if ok:
                return True, normalised
        return False, value
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        items = [_conform(v, args[0]) for v in value]
        if not all(ok for ok, _ in items):
            return False, value
        return True, tuple(v for _, v in items)
    if hint is bool:
        return isinstance(value, (bool, np.bool_)), bool(value) if isinstance(
            value, np.bool_
        ) else value
    if hint is int:
        fits = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
        return fits, int(value) if fits and type(value) is not int else value
    if hint is float:
        fits = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
        return fits, float(value) if fits and type(value) is not float else value
    if hint is str:
        return isinstance(value, str), value
    return True, value  # anything else is the config's own business


def _describe(hint) -> str:
    if hint is type(None):
        return "null"
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_describe(a) for a in args)
    if typing.get_origin(hint) is tuple:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    return _KIND.get(hint, getattr(hint, "__name__", str(hint)))
