"""Shared fixtures: small configs covering every architectural switch, and params whose
norm weights and biases are randomised (identity-initialised weights would hide a
wrong `1 + w` or a dropped bias)."""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
# the suite runs without the on-disk compilation cache (the `mechjax` command turns it on
# by default): nothing is written under the user's home, and tests of the cache set
# their own folder
os.environ["MECHJAX_COMPILATION_CACHE"] = "0"

import jax
import numpy as np
import pytest

jax.config.update("jax_default_matmul_precision", "highest")

# property tests draw the same examples on every run, so CI is reproducible
import hypothesis  # noqa: E402

hypothesis.settings.register_profile("mechjax", derandomize=True, database=None)
hypothesis.settings.load_profile("mechjax")

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
        act_fn="gelu_tanh",
        gated_mlp=True,
        normalization="rmsnorm",
        norm_eps=1e-6,
        norm_weight_offset=1.0,
        positional="rope",
        scale_embeddings=True,
        tied_embeddings=True,
    )
    return {
        "attn0": mj.presets.attn_only(0, d_model=24, n_heads=4, d_vocab=37, n_ctx=16),
        "attn1_nonorm": mj.presets.attn_only(
            1, d_model=24, n_heads=4, d_vocab=37, n_ctx=16, normalization="none"
        ),
        "attn2_ln_bias": mj.presets.attn_only(
            2, d_model=24, n_heads=4, d_vocab=37, n_ctx=16, use_bias=True
        ),
        "attn3_nopos": mj.presets.attn_only(
            3, d_model=24, n_heads=4, d_vocab=37, n_ctx=16, positional="none"
        ),
        "mlp_gelu": mj.ModelConfig(
            **base,
            n_layers=2,
            d_mlp=32,
            act_fn="gelu",
            use_attn_bias=True,
            use_mlp_bias=True,
            use_unembed_bias=True,
        ),
        "mlp_relu": mj.ModelConfig(**base, n_layers=1, d_mlp=32, act_fn="relu"),
        "mlp_solu": mj.ModelConfig(**base, n_layers=2, d_mlp=32, act_fn="solu", use_mlp_bias=True),
        "gemma1_mqa": mj.ModelConfig(**base, n_layers=2, n_kv_heads=1, d_mlp=32, **gemma),
        "gemma2_gqa": mj.ModelConfig(
            **base,
            n_layers=3,
            n_kv_heads=2,
            d_mlp=32,
            query_pre_attn_scalar=8.0,
            attn_logit_softcap=5.0,
            final_logit_softcap=3.0,
            sliding_window=4,
            layer_types=("local", "global", "local"),
            post_attn_norm=True,
            post_mlp_norm=True,
            **gemma,
        ),
        "gemma3": mj.ModelConfig(
            **base,
            n_layers=3,
            n_kv_heads=2,
            d_mlp=32,
            query_pre_attn_scalar=8.0,
            sliding_window=4,
            layer_types=("local", "local", "global"),
            rope_base=1e6,
            rope_local_base=1e4,
            post_attn_norm=True,
            post_mlp_norm=True,
            qk_norm=True,
            **gemma,
        ),
    }


SMALL_CONFIGS = small_configs()


@pytest.fixture(params=sorted(SMALL_CONFIGS))
def any_cfg(request) -> mj.ModelConfig:
    return SMALL_CONFIGS[request.param]


def random_model(cfg: mj.ModelConfig, seed: int = 0, noise: float = 0.1):
    """Random params of `cfg` drawn in numpy: weight matrices ~ N(0, 1/fan_in),
    embeddings ~ N(0, 1) (N(0, 1/d_model) when scaled by sqrt(d_model)), norm weights at
    their identity plus N(0, noise^2), biases ~ N(0, noise^2).

    Numpy, not `init_params` + `randomize`: XLA's compile of the threefry sampling for
    every leaf took 25-30 s per config on the busy 2-core machine, numpy takes < 1 ms.
    """
    rng = np.random.default_rng(seed)

    def leaf(path, shape):
        name = path[-1].key
        z = rng.standard_normal(shape)
        if name.endswith("_w"):  # norm weights (stored as `w`, used as offset + w)
            offset = 0.0 if name == "ln_mlp_w" else cfg.norm_weight_offset
            value = 1.0 - offset + noise * z
        elif name.startswith("b_") or name.endswith("_b"):
            value = noise * z
        elif name in ("W_E", "W_pos"):
            value = z * (cfg.d_model**-0.5 if cfg.scale_embeddings else 1.0)
        else:
            value = z * shape[-2] ** -0.5  # fan-in: the axis x @ W contracts
        return jax.numpy.asarray(value, cfg.dtype)

    shapes = mj.param_shapes(cfg)
    return jax.tree_util.tree_map_with_path(leaf, shapes, is_leaf=lambda x: isinstance(x, tuple))


def random_tokens(cfg: mj.ModelConfig, batch: int = 2, n_pos: int = 10, seed: int = 0):
    return np.random.default_rng(seed).integers(0, cfg.d_vocab, size=(batch, n_pos))


# -- hypothesis: random small configs over every switch (added for the core test suite) ------


def model_configs(max_layers: int = 3):
    """A hypothesis strategy drawing small valid `ModelConfig`s over every architectural
    switch: 0..max_layers layers, GQA/MQA groupings, MLP or attention-only, every
    activation (gated or not), norm type and weight offset, positional scheme, biases,
    soft-caps, sliding windows with random layer types, post norms, q/k norms, embedding
    scaling and tying. Sizes stay tiny so each draw compiles in well under a second."""
    from hypothesis import strategies as st

    @st.composite
    def draw_config(draw):
        n_layers = draw(st.integers(0, max_layers))
        n_kv_heads = draw(st.sampled_from([1, 2]))
        n_heads = n_kv_heads * draw(st.sampled_from([1, 2, 3]))
        positional = draw(st.sampled_from(mj.config.POSITIONALS))
        d_head = draw(st.sampled_from([2, 4, 6] if positional == "rope" else [3, 4, 5]))
        d_mlp = draw(st.sampled_from([None, 8, 12]))
        act_fn = draw(st.sampled_from(mj.config.ACTIVATIONS))
        gated = d_mlp is not None and act_fn != "solu" and draw(st.booleans())
        normalization = draw(st.sampled_from(mj.config.NORMS))
        has_norm = normalization != "none"
        local = draw(st.booleans()) and n_layers > 0
        layer_types = None
        if local:
            layer_types = tuple(draw(st.sampled_from(["local", "global"])) for _ in range(n_layers))
        maybe = lambda values: draw(st.sampled_from([None, *values]))  # noqa: E731
        return mj.ModelConfig(
            d_vocab=draw(st.sampled_from([11, 23])),
            d_model=draw(st.sampled_from([8, 12])),
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            d_head=d_head,
            n_ctx=9,
            d_mlp=d_mlp,
            act_fn=act_fn,
            gated_mlp=gated,
            normalization=normalization,
            norm_eps=draw(st.sampled_from([1e-5, 1e-6])),
            norm_weight_offset=draw(st.sampled_from([0.0, 1.0])),
            final_norm=draw(st.booleans()),
            positional=positional,
            rope_base=draw(st.sampled_from([10_000.0, 100.0])),
            rope_local_base=maybe([10.0]),
            rope_scaling=draw(st.sampled_from([1.0, 2.0])),
            use_attn_bias=draw(st.booleans()),
            use_mlp_bias=draw(st.booleans()),
            use_unembed_bias=draw(st.booleans()),
            scale_embeddings=draw(st.booleans()),
            tied_embeddings=draw(st.booleans()),
            query_pre_attn_scalar=maybe([3.0]),
            attn_logit_softcap=maybe([2.0]),
            final_logit_softcap=maybe([3.0]),
            sliding_window=draw(st.integers(1, 4)) if local else maybe([3]),
            layer_types=layer_types,
            post_attn_norm=has_norm and draw(st.booleans()),
            post_mlp_norm=has_norm and draw(st.booleans()),
            qk_norm=has_norm and draw(st.booleans()),
        )

    return draw_config()
