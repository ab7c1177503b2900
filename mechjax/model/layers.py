"""The numerical pieces of a block: norms, rotary embeddings, activations, soft-capping.

Each is a small pure function; `model.py` wires them together.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig


def norm_scale(x: jax.Array, *, center: bool, eps: float) -> jax.Array:
    """The norm's data-dependent multiplier, `[..., 1]`, computed in float32.

    LayerNorm (`center=True`): 1/sqrt(var(x) + eps); RMSNorm: 1/sqrt(mean(x^2) + eps).
    Freezing this value makes the norm a linear map (plus its bias), which is what lets
    the residual stream be decomposed exactly through norms.
    """
    x = x.astype(jnp.float32)
    if center:
        x = x - x.mean(-1, keepdims=True)
    return jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)


def apply_norm_linear(x, scale, w, *, center: bool, offset: float = 0.0):
    """The norm's linear part with its scale frozen: `center(x) * scale * (offset + w)`.

    Computed in float32 and cast back, as Gemma's reference does.
    """
    dtype = x.dtype
    x = x.astype(jnp.float32)
    if center:
        x = x - x.mean(-1, keepdims=True)
    return (x * scale * (offset + w.astype(jnp.float32))).astype(dtype)


class Norm:
    """The model's norm (LayerNorm or RMSNorm, as the config says) as three operations."""

    def __init__(self, cfg: ModelConfig):
        self.center = cfg.normalization == "layernorm"
        self.eps = cfg.norm_eps
        self.offset = cfg.norm_weight_offset

    def scale(self, x):
        return norm_scale(x, center=self.center, eps=self.eps)

    def linear(self, x, scale, w):
        return apply_norm_linear(x, scale, w, center=self.center, offset=self.offset)

    def __call__(self, x, scale, w, b=None):
        y = self.linear(x, scale, w)
        return y if b is None else y + b.astype(y.dtype)


def activation(name: str, x: jax.Array) -> jax.Array:
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    if name == "gelu_tanh":
        return jax.nn.gelu(x, approximate=True)
    if name == "relu":
        return jax.nn.relu(x)
    if name == "silu":
        return jax.nn.silu(x)
    if name == "solu":
        return x * jax.nn.softmax(x, axis=-1)
    raise ValueError(f"unknown activation {name!r}")


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """Gemma 2 soft-capping: cap * tanh(x / cap) (identity when cap is None)."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def rope_inverse_frequencies(cfg: ModelConfig, base: float, factor: float) -> np.ndarray:
    """The rotary inverse frequencies `[rope_dim / 2]` (float32, as the references
    compute them): `base^(-2i/rope_dim)`, then scaled by `factor` (1: none) as the config's
    `rope_scaling_type` says.

    linear: every frequency divided by `factor` (positions divided by it).
    llama3 (HF's "llama3" rope type, Llama 3.1+): with `n0 = rope_original_n_ctx`,
    wavelengths `2 pi / f` above `n0 / low_freq_factor` are divided by `factor`, those
    below `n0 / high_freq_factor` kept, and those between interpolated with
    `s = (n0 / wavelength - low) / (high - low)`: `f ((1 - s) / factor + s)`.
    """
    dim = cfg.rope_dim
    exponents = np.arange(0, dim, 2).astype(np.float32)[: dim // 2] / np.float32(dim)
    inv_freq = np.float32(1.0) / (np.float32(base) ** exponents)
    if factor == 1.0:
        return inv_freq
    if cfg.rope_scaling_type == "linear":
        return inv_freq / np.float32(factor)
    low, high, n0 = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor, cfg.rope_original_n_ctx
    wavelength = 2 * np.pi / inv_freq.astype(np.float64)
    smooth = (n0 / wavelength - low) / (high - low)
    scaled = np.where(wavelength > n0 / low, inv_freq / factor, inv_freq)
    medium = (wavelength >= n0 / high) & (wavelength <= n0 / low)
    scaled = np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return scaled.astype(np.float32)


def rope_tables(cfg: ModelConfig, n_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables `[layer, pos, rope_dim]` for rotary embeddings (float32).

    Split-halves convention (HF/Gemma/Llama/GPT-NeoX): frequencies from
    `rope_inverse_frequencies`, repeated for both halves of the rotated dims. Local
    layers use `rope_local_base` when set and are never scaled (HF Gemma 3); global
    layers are scaled by `rope_scaling`.
    """
    positions = np.arange(n_pos, dtype=np.float32)
    cos, sin = [], []
    for layer_type in cfg.resolved_layer_types:
        if layer_type == "local":
            base, factor = cfg.rope_local_base or cfg.rope_base, 1.0
        else:
            base, factor = cfg.rope_base, cfg.rope_scaling
        angles = positions[:, None] * rope_inverse_frequencies(cfg, base, factor)[None, :]
        angles = np.concatenate([angles, angles], axis=-1)
        cos.append(np.cos(angles))
        sin.append(np.sin(angles))
    shape = (cfg.n_layers, n_pos, cfg.rope_dim)
    return (np.asarray(cos, np.float32).reshape(shape), np.asarray(sin, np.float32).reshape(shape))


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate `x [batch, pos, head, d_head]` with tables `[pos, rope_dim]` (or `[batch,
    pos, rope_dim]` when each sequence has its own positions). Only the first
    `rope_dim` dims of each head rotate (GPT-NeoX's partial rotary); the rest pass."""
    dtype = x.dtype
    x = x.astype(jnp.float32)
    dim = cos.shape[-1]
    rot, rest = x[..., :dim], x[..., dim:]
    half = dim // 2
    rotated = jnp.concatenate([-rot[..., half:], rot[..., :half]], axis=-1)
    cos, sin = cos[..., None, :], sin[..., None, :]
    out = rot * cos + rotated * sin
    if rest.shape[-1]:
        out = jnp.concatenate([out, rest], axis=-1)
    return out.astype(dtype)
