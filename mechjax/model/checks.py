"""Validation at the boundary, in one place: inputs get a one-line error naming the
problem and the fix before compiled code runs (inside jit JAX would clamp an
out-of-range token id silently).

    check_config(cfg)                     a ModelConfig, not something else
    check_tokens(tokens, cfg)             integer [batch, pos] the model can take
    check_token_ids(ids, cfg, name)       ids inside the vocabulary
    check_mask(mask, tokens)              a padding mask [batch, pos] for these tokens
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


def check_mask(mask, tokens):
    """Validate a padding mask `[batch, pos]` (True / 1 = a real token) for `tokens` and
    return it as a numpy bool array (None stays None). Each row's real tokens must be one
    run, not empty: left padding (`0 0 1 1 1`) or right padding (`1 1 1 0 0`)."""
    if mask is None:
        return None
    if isinstance(mask, jax.core.Tracer):
        raise ValueError(
            "mask must be a concrete array, not a traced value; pass it into the jitted "
            "function from outside"
        )
    values = np.asarray(mask)
    if values.shape != tuple(tokens.shape):
        raise ValueError(
            f"mask has shape {values.shape} but tokens have shape {tuple(tokens.shape)}; "
            "give one entry per token (True for real tokens, False for padding)"
        )
    if values.dtype != np.bool_:
        if not np.issubdtype(values.dtype, np.integer) or not np.isin(values, (0, 1)).all():
            raise ValueError(
                f"mask must be boolean (or 0/1 integers), got dtype {values.dtype}; "
                "True marks real tokens"
            )
        values = values.astype(bool)
    n_real = values.sum(axis=1)
    if (n_real == 0).any():
        rows = np.flatnonzero(n_real == 0)[:10].tolist()
        raise ValueError(f"mask rows {rows} have no real token; drop those prompts")
    # one run per row: the number of False -> True steps (counting a True first entry) is 1
    starts = values[:, 0].astype(int) + (values[:, 1:] & ~values[:, :-1]).sum(axis=1)
    if (starts != 1).any():
        rows = np.flatnonzero(starts != 1)[:10].tolist()
        raise ValueError(
            f"mask rows {rows} have padding between real tokens; pad on the left or the right only"
        )
    return values


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
