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
    if name == "solu":
        return x * jax.nn.softmax(x, axis=-1)
    raise ValueError(f"unknown activation {name!r}")


def softcap(x: jax.Array, cap: float | None) -> jax.Array:
    """Gemma 2 soft-capping: cap * tanh(x / cap) (identity when cap is None)."""
    return x if cap is None else cap * jnp.tanh(x / cap)


def rope_tables(cfg: ModelConfig, n_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables `[layer, pos, d_head]` for rotary embeddings (float32).

    Split-halves convention (HF/Gemma): frequencies `base^(-2i/d_head)` for
    i < d_head/2, repeated for both halves. Local layers use `rope_local_base` when set;
    global layers divide positions by `rope_scaling` (linear scaling).
    """
    half = cfg.d_head // 2
    exponents = np.arange(0, cfg.d_head, 2).astype(np.float32)[:half] / np.float32(cfg.d_head)
    positions = np.arange(n_pos, dtype=np.float64)
    cos, sin = [], []
    for layer_type in cfg.resolved_layer_types:
        if layer_type == "local":  # local layers are never position-scaled (HF Gemma 3)
            base, factor = cfg.rope_local_base or cfg.rope_base, 1.0
        else:
            base, factor = cfg.rope_base, cfg.rope_scaling
        # float32 inverse frequencies as the reference computes them, then angles
        inv_freq = (np.float32(1.0) / (np.float32(base) ** exponents)) / np.float32(factor)
        angles = positions.astype(np.float32)[:, None] * inv_freq[None, :]
        angles = np.concatenate([angles, angles], axis=-1)
        cos.append(np.cos(angles))
        sin.append(np.sin(angles))
    shape = (cfg.n_layers, n_pos, cfg.d_head)
    return (np.asarray(cos, np.float32).reshape(shape), np.asarray(sin, np.float32).reshape(shape))


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate `x [batch, pos, head, d_head]` with tables `[pos, d_head]`."""
    dtype = x.dtype
    x = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x * cos[:, None, :] + rotated * sin[:, None, :]).astype(dtype)
