"""Deterministic randomness for datasets: one generator per (seed, step).

A training batch is drawn from `np.random.default_rng([seed, step])`, so any step can be
regenerated on its own (resuming at step 5,000 does not replay steps 0..4,999), and two
runs with the same seed see the same data. Evaluation batches come from a child stream
(`SeedSequence(..., spawn_key=(1,))`) that no training (seed, step) produces.
"""

from __future__ import annotations

import numbers

import numpy as np

_EVAL_SPAWN_KEY = (1,)


def _check_count(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def step_rng(seed_or_rng, step) -> np.random.Generator:
    """The generator for one training step.

    seed_or_rng: a non-negative int seed (the batch is then a function of (seed, step)),
        or a `np.random.Generator`, which is used as is (the caller owns reproducibility).
    step: the training step, a non-negative int.
    """
    step = _check_count(step, "step", 0)
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    seed = _check_count(seed_or_rng, "seed", 0)
    return np.random.default_rng([seed, step])


def eval_rng(index: int) -> np.random.Generator:
    """The generator for evaluation batch `index`, disjoint from every training stream."""
    index = _check_count(index, "index", 0)
    return np.random.default_rng(np.random.SeedSequence([0, index], spawn_key=_EVAL_SPAWN_KEY))


def check_batch_size(batch_size) -> int:
    return _check_count(batch_size, "batch_size", 1)


def check_n_batches(n) -> int:
    return _check_count(n, "n (the number of batches)", 1)
