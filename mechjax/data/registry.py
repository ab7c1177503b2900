"""Datasets by name, for the command line and training recipes.

    make_dataset("repeated", n_ctx=64)       RepeatedSegments ("tiled" repeats)
    make_dataset("trigger-bigrams")          TriggerBigrams (Bietti et al. 2023)
    make_dataset("markov", n_states=3)       RandomMarkov (Edelman et al. 2024)
    make_dataset("arithmetic", n_ctx=64)     single-digit arithmetic (layer removal, seed 000)
    make_dataset("stdlib", n_ctx=256)        this Python's standard library source
    make_dataset("text:PATH")                a text file or folder

Every dataset has `vocab_size`, `bos_id`, `n_ctx`, `batch(seed, step, batch_size)`
(tokens [batch, n_ctx] int32, a function of (seed, step) only), `eval_batches(n,
batch_size)` (tokens [n, batch, n_ctx] int32), `token_str(id)` and `describe()`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Protocol

import numpy as np

from .arithmetic import Arithmetic
from .mixture import RepeatMixture
from .synthetic import RandomMarkov, RepeatedSegments, TriggerBigrams
from .text import TextCorpus, stdlib_corpus

_SYNTHETIC = {
    "repeated": RepeatedSegments,
    "trigger-bigrams": TriggerBigrams,
    "markov": RandomMarkov,
    "arithmetic": Arithmetic,
}
DATASET_NAMES = (*_SYNTHETIC, "stdlib", "stdlib+repeats", "text:PATH")
_MIXTURE_OPTIONS = ("fraction", "min_len", "max_len", "segments")


class Dataset(Protocol):
    """What a training loop needs from a dataset."""

    vocab_size: int
    bos_id: int
    n_ctx: int

    def batch(self, seed, step, batch_size) -> np.ndarray: ...

    def eval_batches(self, n, batch_size) -> np.ndarray: ...

    def token_str(self, token_id: int) -> str: ...

    def describe(self) -> str: ...


def make_dataset(name: str, **options) -> Dataset:
    """The dataset called `name` (one of `DATASET_NAMES`), built with `options`."""
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {type(name).__name__}")
    _check_options(name, options, dataset_options(name))
    if name in _SYNTHETIC:
        return _SYNTHETIC[name](**options)
    if name == "stdlib+repeats":
        mix = {k: options.pop(k) for k in _MIXTURE_OPTIONS if k in options}
        return RepeatMixture(stdlib_corpus(**options), **mix)
    if name == "stdlib":
        return stdlib_corpus(**options)
    path = name[len("text:") :]
    if not path:
        raise ValueError('"text:" needs a path, e.g. "text:data/books" or "text:notes.txt"')
    return TextCorpus.from_paths(path, **options)


def dataset_options(name: str) -> list[str]:
    """The options `make_dataset(name, ...)` accepts."""
    if name in _SYNTHETIC:
        return [f.name for f in dataclasses.fields(_SYNTHETIC[name]) if f.init]
    if name == "stdlib+repeats":
        return [*_parameters(stdlib_corpus), *_MIXTURE_OPTIONS]
    if name == "stdlib":
        return _parameters(stdlib_corpus)
    if name.startswith("text:"):
        return [p for p in _parameters(TextCorpus.from_paths) if p != "paths"]
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")


def _parameters(fn) -> list[str]:
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    ]


def _check_options(name: str, options: dict, allowed: list[str]) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"dataset {name!r} has no option(s) {', '.join(unknown)}; valid options: "
            f"{', '.join(allowed)}"
        )
