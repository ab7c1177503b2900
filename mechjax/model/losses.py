"""Next-token losses: the one definition used by training, tracking and analysis."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .config import ModelConfig
from .transformer import run


def token_losses_from_logits(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Cross-entropy of predicting token i+1 at position i: `[batch, pos - 1]` (nats).

    Entry j is the loss on token j + 1, i.e. on "token index" j + 1 of the context.
    """
    logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


def token_losses(params, tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
    """`[batch, pos - 1]` per-token losses of a model (traced; no input validation)."""
    logits, _ = run(params, tokens, cfg)
    return token_losses_from_logits(logits, tokens)


def mean_loss(params, tokens: jax.Array, cfg: ModelConfig) -> jax.Array:
    return token_losses(params, tokens, cfg).mean()
