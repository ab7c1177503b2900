"""Validation at the boundary, in one place: inputs get a one-line error naming the
problem and the fix before compiled code runs (inside jit JAX would clamp an
out-of-range token id silently).

    check_config(cfg)                     a ModelConfig, not something else
    check_tokens(tokens, cfg)             integer [batch, pos] the model can take
    check_token_ids(ids, cfg, name)       ids inside the vocabulary
    check_fields(config, "TrainConfig")   typed fields from untyped input (JSON, the
                                          command line): validates and normalises in place

Accepted: `int` fields take integers (numpy's too, never bool or float); `float` fields
take any real number (stored as float); `bool` fields take booleans; `str` fields take
strings; `X | None` also takes None; `tuple[T, ...]` takes a list or tuple of T.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing

import jax
import jax.numpy as jnp
import numpy as np


def check_config(cfg) -> None:
    """Raise a ValueError unless `cfg` is a `ModelConfig`."""
    from .config import ModelConfig  # config itself uses check_fields below

    if not isinstance(cfg, ModelConfig):
        raise ValueError(f"cfg must be a mechjax.ModelConfig, got {type(cfg).__name__}")


def check_token_ids(ids, cfg, name: str = "token ids") -> None:
    """Raise a ValueError naming `name` unless every id lies in [0, d_vocab)."""
    values = np.asarray(ids)
    if values.size and (values.min() < 0 or values.max() >= cfg.d_vocab):
        bad = values[(values < 0) | (values >= cfg.d_vocab)]
        raise ValueError(
            f"{name} must lie in [0, {cfg.d_vocab}) (d_vocab={cfg.d_vocab}); found "
            f"{np.unique(bad)[:10].tolist()}"
        )


def check_tokens(tokens, cfg) -> None:
    """Raise a ValueError for tokens the model cannot take (before compiled code runs)."""
    if not hasattr(tokens, "shape") or not hasattr(tokens, "dtype"):
        raise ValueError(
            f"tokens must be an integer array [batch, pos], got {type(tokens).__name__}"
        )
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(
            f"tokens must have an integer dtype, got {tokens.dtype}; cast with .astype(int)"
        )
    if tokens.ndim != 2:
        raise ValueError(
            f"tokens must have shape [batch, pos], got {tokens.ndim}-D shape {tuple(tokens.shape)}; "
            "for one sequence use tokens[None]"
        )
    if tokens.shape[1] < 1:
        raise ValueError("tokens has no positions")
    if cfg.positional == "learned" and tokens.shape[1] > cfg.n_ctx:
        raise ValueError(
            f"sequence length {tokens.shape[1]} exceeds the learned positional table "
            f"(n_ctx={cfg.n_ctx}); truncate the input to {cfg.n_ctx} tokens"
        )
    if not isinstance(tokens, jax.core.Tracer):
        check_token_ids(tokens, cfg)


_KIND = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def check_fields(config, where: str) -> None:
    """Check every field of the dataclass instance `config` against its annotation;
    store the normalised value (a numpy integer becomes an int, an int in a float field
    a float, a list in a tuple field a tuple). Raises ValueError naming the field."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        if not field.init:  # derived in __post_init__, not given
            continue
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
