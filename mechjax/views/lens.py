"""Figures of the logit and tuned lens (seed 001's Figures 6-7): the top token per layer
and position, coloured by its probability."""

from __future__ import annotations

import jax
import numpy as np

from ..activations.lens import top_tokens
from .figures import new_figure


def plot_logit_lens(
    lens_logits: jax.Array,
    tokens=None,
    *,
    batch_index: int = 0,
    decode=None,
    title: str = "logit lens",
):
    """A grid of the top token per (layer, position), coloured by its probability.

    lens_logits: `[layer + 1, batch, pos, vocab]` (from `logit_lens` or
    `apply_tuned_lens`). tokens: the input `[batch, pos]`, for the position labels.
    decode: token id -> str (default: the id). Returns a matplotlib `Figure`.
    """
    if lens_logits.ndim != 4 or not 0 <= batch_index < lens_logits.shape[1]:
        raise ValueError(
            f"lens_logits must be [layer + 1, batch, pos, vocab] and batch_index in range; "
            f"got shape {tuple(lens_logits.shape)}, batch_index {batch_index}"
        )
    decode = decode or str
    ids, probs = top_tokens(lens_logits[:, batch_index], 1)
    ids, probs = np.asarray(ids[..., 0]), np.asarray(probs[..., 0])  # [layer + 1, pos]
    n_rows, n_pos = ids.shape
    fig, ax = new_figure(1.0 + 0.8 * n_pos, 1.0 + 0.45 * n_rows)
    image = ax.imshow(probs, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
    for row in range(n_rows):
        for col in range(n_pos):
            text_color = "white" if probs[row, col] > 0.6 else "black"
            ax.text(
                col,
                row,
                decode(int(ids[row, col])),
                ha="center",
                va="center",
                fontsize=8,
                color=text_color,
            )
    ax.set_yticks(range(n_rows), ["embed"] + [f"L{i}" for i in range(n_rows - 1)])
    if tokens is not None:
        row_tokens = np.asarray(tokens)[batch_index]
        ax.set_xticks(range(n_pos), [decode(int(t)) for t in row_tokens], rotation=90)
    ax.set_xlabel("position (input token)")
    ax.set_ylabel("residual after")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="top-token probability")
    return fig
