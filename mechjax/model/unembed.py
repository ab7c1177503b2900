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
from .params import Params, unembedding


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


def unembed(params: Params, cfg: ModelConfig, normed: jax.Array) -> jax.Array:
    """Logits `[..., vocab]` of final-normed residuals `[..., d_model]`: W_U, b_U, and the
    final soft-cap when the model has one."""
    logits = jnp.einsum("...d,dv->...v", normed, unembedding(params))
    if cfg.use_unembed_bias:
        logits = logits + params["b_U"]
    return layers.softcap(logits, cfg.final_logit_softcap)


def output_head(params: Params, cfg: ModelConfig, resid: jax.Array, scale=None) -> jax.Array:
    """The model's output head on any residual `[..., d_model]` -> logits `[..., vocab]`:
    the final norm (its scale from `resid` itself unless `scale` is given), W_U, b_U and
    the final soft-cap."""
    return unembed(params, cfg, final_norm(params, cfg, resid, scale))


def logit_bias(params: Params, cfg: ModelConfig) -> jax.Array:
    """The part of the logits no write is responsible for: the final norm's bias through
    W_U, plus b_U. `[vocab]` (before any soft-cap)."""
    out = jnp.zeros((cfg.d_vocab,), jnp.dtype(cfg.dtype))
    if "ln_final_b" in params:
        out = out + params["ln_final_b"] @ unembedding(params)
    if cfg.use_unembed_bias:
        out = out + params["b_U"]
    return out
