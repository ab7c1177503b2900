"""Predicting tokens with the model: the greedy next token of many prompts.

greedy_next_tokens(params, tokens, cfg, *, edits=(), batch_size=256) -> ids [prompt]
"""

from __future__ import annotations

import numpy as np

from .transformer import forward


def greedy_next_tokens(params, tokens, cfg, *, edits=(), batch_size: int = 256) -> np.ndarray:
    """The most likely next token after each prompt: `ids [prompt]` (numpy), from
    `tokens [prompt, pos]`, run `batch_size` prompts at a time (the logits of a large
    vocabulary are big). `edits` apply to every run, as in `forward`."""
    tokens = np.asarray(tokens)
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if tokens.ndim != 2 or len(tokens) == 0:
        raise ValueError(
            f"tokens must be a non-empty [prompt, pos] array, got shape {tokens.shape}"
        )
    batches = [tokens[i : i + batch_size] for i in range(0, len(tokens), batch_size)]
    return np.concatenate(
        [np.asarray(forward(params, b, cfg, edits=edits)[:, -1].argmax(-1)) for b in batches]
    )
