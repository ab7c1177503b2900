"""Attribution read off one run: which components a prediction rests on, and where
attention carries information. (Integrated gradients, which runs the model at
interpolated inputs, is `mechjax.causal.integrated_gradients`.)

* Direct logit attribution tables, read off `mechjax.model.stream.logit_attribution` (each
  write through the frozen final norm and W_U, dotted with a logit direction; the
  components sum to the pre-soft-cap logit): per head `[layer, head]`, per MLP
  `[layer]`, per position.
* Attention rollout (Abnar & Zuidema 2020, "Quantifying Attention Flow in
  Transformers"): per layer `0.5 * mean_heads(A) + 0.5 * I` with rows renormalised,
  multiplied through the layers: `R_l = Ã_l @ R_(l-1)`, `R_0 = Ã_0`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..model.config import ModelConfig
from ..model.stream import Stream, logit_attribution

# -- direct logit attribution tables ----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DLAResult:
    """Direct logit attribution of every write, arranged by component kind.

    values [component, batch, pos] with `labels`, as `logit_attribution` returns them
    (the last, "bias", is the final-norm bias and b_U); then views of it:
    heads [layer, head, batch, pos]; attn_bias [layer, batch, pos]; mlps [layer, batch,
    pos] (None without MLPs); embed, pos_embed (None without learned positions), bias:
    [batch, pos]. `total` [batch, pos] is their sum, the (pre-soft-cap) logit (difference).
    """

    labels: list[str]
    values: jax.Array
    heads: jax.Array
    attn_bias: jax.Array
    mlps: jax.Array | None
    embed: jax.Array
    pos_embed: jax.Array | None
    bias: jax.Array

    @property
    def total(self) -> jax.Array:
        return self.values.sum(axis=0)


def _ids(token_ids, batch: int, name: str):
    ids = jnp.asarray(token_ids)
    if not jnp.issubdtype(ids.dtype, jnp.integer):
        raise ValueError(f"{name} must be integer token ids, got dtype {ids.dtype}")
    if ids.ndim == 1:
        if ids.shape[0] != batch:
            raise ValueError(f"{name} [batch] must have batch={batch} entries, got {ids.shape}")
        ids = ids[:, None]  # one id per example, at every position
    elif ids.ndim > 2:
        raise ValueError(f"{name} must be an int, [batch] or [batch, pos], got {ids.shape}")
    return ids


def dla(params, cfg: ModelConfig, stream: Stream, token_ids, minus_ids=None) -> DLAResult:
    """Direct logit attribution of every component to `token_ids` (int, `[batch]` or
    `[batch, pos]`), minus `minus_ids` (a logit difference) if given."""
    batch = stream["embed"].shape[0]
    token_ids = _ids(token_ids, batch, "token_ids")
    minus_ids = None if minus_ids is None else _ids(minus_ids, batch, "minus_ids")
    labels, values = logit_attribution(params, cfg, stream, token_ids, minus_ids)
    where = {label: i for i, label in enumerate(labels)}

    def take(names):
        return values[np.asarray([where[n] for n in names], int)]

    L, H = cfg.n_layers, cfg.n_heads
    heads = take([f"L{l}H{h}" for l in range(L) for h in range(H)])
    return DLAResult(
        labels=labels,
        values=values,
        heads=heads.reshape(L, H, *values.shape[1:]),
        attn_bias=take([f"L{l}attn_bias" for l in range(L)]),
        mlps=None if cfg.attn_only else take([f"L{l}mlp" for l in range(L)]),
        embed=values[where["embed"]],
        pos_embed=values[where["pos_embed"]] if "pos_embed" in where else None,
        bias=values[where["bias"]],
    )


def head_dla(params, cfg, stream, token_ids, minus_ids=None, *, pos: int = -1) -> jax.Array:
    """Per-head DLA `[layer, head]` at position `pos`, averaged over the batch."""
    return dla(params, cfg, stream, token_ids, minus_ids).heads[:, :, :, pos].mean(axis=-1)


def mlp_dla(params, cfg, stream, token_ids, minus_ids=None, *, pos: int = -1) -> jax.Array:
    """Per-MLP DLA `[layer]` at position `pos`, averaged over the batch."""
    if cfg.attn_only:
        raise ValueError("this model is attention-only: it has no MLPs to attribute")
    return dla(params, cfg, stream, token_ids, minus_ids).mlps[:, :, pos].mean(axis=-1)


def position_dla(params, cfg, stream, token_ids, minus_ids=None) -> tuple[list[str], jax.Array]:
    """Every component's DLA at every position, averaged over the batch:
    `(labels, [component, pos])`."""
    table = dla(params, cfg, stream, token_ids, minus_ids)
    return table.labels, table.values.mean(axis=1)


# -- attention rollout -----------------------------------------------------------------------


@jax.jit
def _rollout(pattern):
    mixed = 0.5 * pattern.astype(jnp.float32).mean(axis=2) + 0.5 * jnp.eye(pattern.shape[-1])
    mixed = mixed / mixed.sum(axis=-1, keepdims=True)  # [layer, batch, query, key]

    def step(rollout, layer_mix):
        rollout = layer_mix @ rollout
        return rollout, rollout

    start = jnp.broadcast_to(jnp.eye(pattern.shape[-1]), mixed.shape[1:])
    return jax.lax.scan(step, start, mixed)[1]


def attention_rollout(pattern_or_stream) -> jax.Array:
    """Attention rollout after each layer `[layer, batch, query_pos, key_pos]`.

    Input: attention patterns `[layer, batch, head, query_pos, key_pos]` or a `Stream`
    that captured "pattern" (the default capture does). Entry `l` is how much each
    query position draws on each input position through layers 0..l; rows sum to 1.
    """
    pattern = pattern_or_stream
    if isinstance(pattern, Stream):
        if "pattern" not in pattern:
            raise ValueError("the stream did not capture 'pattern'; use capture='writes'")
        pattern = pattern["pattern"]
    pattern = jnp.asarray(pattern)
    if pattern.ndim != 5 or pattern.shape[-1] != pattern.shape[-2] or pattern.shape[0] == 0:
        raise ValueError(
            "attention_rollout needs patterns [layer, batch, head, query_pos, key_pos] with "
            f"at least one layer, got shape {tuple(pattern.shape)}"
        )
    return _rollout(pattern)
