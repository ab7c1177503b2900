"""The output head, one path for everything that turns a residual into logits: the
forward pass, the lenses, direct logit attribution and the head detectors.

    final norm   N(r) = center(r) * s(r) * (offset + w) + b    (LayerNorm or RMSNorm;
                 `s(r)` the data-dependent scale, `layers.norm_scale`)
    logits       softcap(N(r) @ W_U + b_U)

With the scale frozen at a run's value (`ln_final_scale` in the stream), N is linear in
r plus the constant b, which is what makes the stream's writes attributable to logits:
`final_norm_linear` is that linear part and `logit_bias` the constant (b through W_U,
plus b_U).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from . import layers
from .config import ModelConfig
from .params import Params, unembedding, widen


def final_norm_scale(resid: jax.Array, cfg: ModelConfig) -> jax.Array:
    """The final norm's scale of `resid [..., d_model]`: `[..., 1]` (float32)."""
    return layers.Norm(cfg).scale(resid)


def final_norm(params: Params, cfg: ModelConfig, resid: jax.Array, scale=None) -> jax.Array:
    """The final norm of `resid [..., d_model]` (identity for models without one), with
    `scale [..., 1]` frozen when given, else computed from `resid` itself."""
    if not cfg.has_final_norm:
        return resid
    norm = layers.Norm(cfg)
    scale = norm.scale(resid) if scale is None else scale
    return norm(resid, scale, params["ln_final_w"], params.get("ln_final_b"))


def final_norm_linear(params: Params, cfg: ModelConfig, x: jax.Array, scale) -> jax.Array:
    """The final norm's linear part at a frozen `scale` (no bias): x [..., d_model]."""
    if not cfg.has_final_norm:
        return x
    return layers.Norm(cfg).linear(x, scale, params["ln_final_w"])


VOCAB_CHUNK = 32768  # unembedding columns widened at a time (16-bit weights, wider activations)


def unembed(params: Params, cfg: ModelConfig, normed: jax.Array) -> jax.Array:
    """Logits `[..., vocab]` of final-normed residuals `[..., d_model]`: W_U, b_U, and the
    final soft-cap when the model has one."""
    table = params["W_U"] if "W_U" in params else params["W_E"]
    if table.dtype == normed.dtype:
        logits = jnp.einsum("...d,dv->...v", normed, unembedding(params))
    else:  # 16-bit weights (or their bits, params.weight_bits) in wider activations
        logits = _widened_in_chunks(normed, table, "W_U" in params, cfg)
    if cfg.use_unembed_bias:
        logits = logits + widen(params["b_U"], cfg)
    return layers.softcap(logits, cfg.final_logit_softcap)


def _widened_in_chunks(normed: jax.Array, table: jax.Array, untied: bool, cfg) -> jax.Array:
    """`normed @ W_U` with the 16-bit unembedding widened `VOCAB_CHUNK` tokens at a time
    (a loop, so one chunk's copy exists at once): widening all of a 256k-token
    unembedding would hold a 2.4 GiB float32 copy of it. `table` is W_U `[d_model,
    vocab]` when `untied`, else W_E `[vocab, d_model]` (its rows are read, never its
    transpose: that would copy it). The last chunk ends at the last token (it may
    overlap the one before)."""
    axis = 1 if untied else 0
    V = table.shape[axis]
    n = -(-V // VOCAB_CHUNK)
    width = -(-V // n)
    starts = jnp.minimum(jnp.arange(n) * width, V - width)
    spec = "...d,dv->...v" if untied else "...d,vd->...v"

    def chunk(start):
        w = widen(jax.lax.dynamic_slice_in_dim(table, start, width, axis=axis), cfg)
        return jnp.einsum(spec, normed, w)

    if n == 1:
        return chunk(0)
    out = jax.lax.map(chunk, starts)  # [n, ..., width]
    head = jnp.moveaxis(out[:-1], 0, -2).reshape(*normed.shape[:-1], (n - 1) * width)
    return jnp.concatenate([head, out[-1][..., n * width - V :]], axis=-1)


def output_head(params: Params, cfg: ModelConfig, resid: jax.Array, scale=None) -> jax.Array:
    """The model's output head on any residual `[..., d_model]` -> logits `[..., vocab]`:
    the final norm (its scale from `resid` itself unless `scale` is given), W_U, b_U and
    the final soft-cap."""
    return unembed(params, cfg, final_norm(params, cfg, resid, scale))


def logit_bias(params: Params, cfg: ModelConfig) -> jax.Array:
    """The part of the logits no write is responsible for: the final norm's bias through
    W_U, plus b_U. `[vocab]` (before any soft-cap)."""
    out = jnp.zeros((cfg.d_vocab,), jnp.dtype(cfg.activation_dtype))
    if "ln_final_b" in params:
        out = out + params["ln_final_b"] @ unembedding(params)
    if cfg.use_unembed_bias:
        out = out + params["b_U"]
    return out
