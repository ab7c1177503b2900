"""Shared fixtures: small configs covering every architectural switch, and params whose
norm weights and biases are randomised (identity-initialised weights would hide a
wrong `1 + w` or a dropped bias)."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax
import numpy as np
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

import mechjax as mj  # noqa: E402


def randomize(params, seed: int = 0, scale: float = 0.1):
    """Add noise to every leaf (norm weights and biases included)."""
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(treedef, noisy)


def small_configs() -> dict[str, mj.ModelConfig]:
    """One small config per family of switches."""
    base = dict(d_vocab=37, d_model=24, n_heads=4, d_head=6, n_ctx=16)
    gemma = dict(
        act_fn="gelu_tanh", gated_mlp=True, normalization="rmsnorm", norm_eps=1e-6,
        norm_weight_offset=1.0, positional="rope", scale_embeddings=True, tied_embeddings=True,
    )
    return {
        "attn0": mj.presets.attn_only(0, d_model=24, n_heads=4, d_vocab=37, n_ctx=16),
        "attn1_nonorm": mj.presets.attn_only(1, d_model=24, n_heads=4, d_vocab=37, n_ctx=16, normalization="none"),
        "attn2_ln_bias": mj.presets.attn_only(2, d_model=24, n_heads=4, d_vocab=37, n_ctx=16, use_bias=True),
        "attn3_nopos": mj.presets.attn_only(3, d_model=24, n_heads=4, d_vocab=37, n_ctx=16, positional="none"),
        "mlp_gelu": mj.ModelConfig(**base, n_layers=2, d_mlp=32, act_fn="gelu", use_attn_bias=True, use_mlp_bias=True, use_unembed_bias=True),
        "mlp_relu": mj.ModelConfig(**base, n_layers=1, d_mlp=32, act_fn="relu"),
        "mlp_solu": mj.ModelConfig(**base, n_layers=2, d_mlp=32, act_fn="solu", use_mlp_bias=True),
        "gemma1_mqa": mj.ModelConfig(**base, n_layers=2, n_kv_heads=1, d_mlp=32, **gemma),
        "gemma2_gqa": mj.ModelConfig(
            **base, n_layers=3, n_kv_heads=2, d_mlp=32, query_pre_attn_scalar=8.0,
            attn_logit_softcap=5.0, final_logit_softcap=3.0, sliding_window=4,
            layer_types=("local", "global", "local"), post_attn_norm=True, post_mlp_norm=True, **gemma,
        ),
        "gemma3": mj.ModelConfig(
            **base, n_layers=3, n_kv_heads=2, d_mlp=32, query_pre_attn_scalar=8.0, sliding_window=4,
            layer_types=("local", "local", "global"), rope_base=1e6, rope_local_base=1e4,
            post_attn_norm=True, post_mlp_norm=True, qk_norm=True, **gemma,
        ),
    }


SMALL_CONFIGS = small_configs()


@pytest.fixture(params=sorted(SMALL_CONFIGS))
def any_cfg(request) -> mj.ModelConfig:
    return SMALL_CONFIGS[request.param]


def random_model(cfg: mj.ModelConfig, seed: int = 0):
    return randomize(mj.init_params(jax.random.key(seed), cfg), seed + 1)


def random_tokens(cfg: mj.ModelConfig, batch: int = 2, n_pos: int = 10, seed: int = 0):
    return np.random.default_rng(seed).integers(0, cfg.d_vocab, size=(batch, n_pos))
