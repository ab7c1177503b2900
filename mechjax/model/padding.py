"""Batches of prompts of different lengths: padding and the mask that undoes it.

A ragged batch is padded to one length, on the left or the right, and described by a
mask `[batch, pos]` (True at real tokens, one run per row). Everything that runs the
model takes `mask=`: attention never reads a padding key, each real token's position
(learned or rotary) counts real tokens only, and edits never land on padding, so each
prompt's logits and activations at its real positions equal those of the prompt run
alone. What padding positions compute is meaningless and finite.

Positions in edits, sweeps and captures are columns of the padded array. Left padding
puts every prompt's last token in the last column (what metrics and generation read);
right padding keeps a prompt's first token in column 0.

    tokens, mask = pad_sequences([[5, 3, 9], [7, 2]], pad_id=0, padding_side="left")
    token_positions(mask)     [[0, 1, 2], [0, 0, 1]]
    last_token_index(mask)    [2, 2]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

PADDING_SIDES = ("left", "right")


def pad_sequences(
    sequences: Sequence[Sequence[int]], pad_id: int, padding_side: str = "left"
) -> tuple[np.ndarray, np.ndarray]:
    """Pad id sequences of different lengths to one: `(tokens [batch, pos] int32, mask
    [batch, pos] bool)`. The mask comes from the lengths, never from comparing with
    `pad_id` (GPT-2 pads with its end-of-text token, which is also its BOS)."""
    if padding_side not in PADDING_SIDES:
        raise ValueError(
            f"padding_side={padding_side!r} is unknown; pad on the 'left' or the 'right'"
        )
    rows = [np.asarray(s, np.int64).reshape(-1) for s in sequences]
    if not rows:
        raise ValueError("pad_sequences needs at least one sequence")
    width = max(1, max(len(r) for r in rows))  # an empty sequence is all padding
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        tokens[i, cols] = row
        mask[i, cols] = True
    return tokens, mask


def token_positions(mask: jax.Array) -> jax.Array:
    """Each column's position within its prompt, `[batch, pos]` int32: the number of
    real tokens before it (padding columns get a clamped, unused value)."""
    return jnp.maximum(jnp.cumsum(jnp.asarray(mask, jnp.int32), axis=1) - 1, 0)


def last_token_index(mask) -> np.ndarray:
    """The column of each prompt's last real token, `[batch]` (numpy int)."""
    mask = np.asarray(mask, bool)
    return mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)


# Lengths a sweep pads its prompts up to, so that prompts of a new length inside a bucket
# reuse the compiled program: at most 1.5x the real length (less work wasted than with
# powers of two), a handful of programs up to any context.
BUCKET_LENGTHS = tuple(sorted({b for p in range(4, 20) for b in (2**p, 3 * 2 ** (p - 1))}))


def bucket_length(n_pos: int, n_ctx: int) -> int:
    """The bucket `n_pos` pads up to: the smallest of `BUCKET_LENGTHS` (16, 24, 32, 48,
    64, 96, ...) that holds it, capped at the model's context `n_ctx`."""
    fits = [b for b in BUCKET_LENGTHS if b >= n_pos]
    return max(n_pos, min(fits[0] if fits else n_pos, n_ctx))


def pad_columns(tokens, mask, length: int, padding_side: str, pad_id: int = 0):
    """Add padding columns to `tokens [batch, pos]` (and its `mask`, all True when
    None) on `padding_side` up to `length` columns: `(tokens, mask)` as numpy."""
    tokens = np.asarray(tokens)
    mask = np.ones(tokens.shape, bool) if mask is None else np.asarray(mask, bool)
    n_new = length - tokens.shape[1]
    widths = ((0, 0), (n_new, 0) if padding_side == "left" else (0, n_new))
    return (
        np.pad(tokens, widths, constant_values=pad_id),
        np.pad(mask, widths, constant_values=False),
    )
