"""The forward pass's structural properties and the presets' published sizes.

Numerical agreement with an independent implementation is in `test_reference_numpy.py`;
here: causality, sliding-window receptive fields, batch independence, RoPE's relative
positions, jit/no-jit agreement, initialisation, and parameter counts of the Gemma
presets against the arithmetic of the released HF configs.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model, random_tokens

import mechjax as mj

# Agreement with the reference on every config (test_reference_numpy.py) already implies
# causality and batch independence; these direct checks run on a few representative
# configs to keep the number of compilations (the cost of this suite) down.
REPRESENTATIVE = ["attn2_ln_bias", "mlp_solu", "gemma2_gqa"]


@pytest.mark.parametrize("config_name", REPRESENTATIVE)
def test_causal_and_batch_independent(config_name):
    """Changing the token at position t changes no logit before t but does change t's;
    each example of a batch gives the logits it gives alone; run_with_stream gives the
    same logits as forward."""
    cfg = SMALL_CONFIGS[config_name]
    params = random_model(cfg)
    tokens = random_tokens(cfg, batch=2, n_pos=8)
    together = np.asarray(mj.forward(params, tokens, cfg))
    assert together.shape == (2, 8, cfg.d_vocab) and together.dtype == np.float32
    logits, _ = mj.run_with_stream(params, tokens, cfg)
    np.testing.assert_allclose(logits, together, rtol=0, atol=1e-5)
    for b in range(2):
        alone = np.asarray(mj.forward(params, tokens[b : b + 1], cfg))
        np.testing.assert_allclose(alone[0], together[b], rtol=0, atol=1e-5)
    changed = tokens[:1].copy()
    changed[0, 5] = (changed[0, 5] + 1) % cfg.d_vocab
    after = np.asarray(mj.forward(params, changed, cfg))
    np.testing.assert_allclose(after[0, :5], together[0, :5], rtol=0, atol=1e-5)
    assert np.abs(after[0, 5] - together[0, 5]).max() > 1e-3


@pytest.mark.parametrize("n_layers, window", [(1, 3), (2, 3), (1, 1)])
def test_sliding_window_receptive_field(n_layers, window):
    """All-local attention-only model without positional info: the logit at q depends on
    tokens q - n_layers*(window-1) .. q and on nothing earlier (0 <= q - k < window)."""
    cfg = mj.presets.attn_only(
        n_layers, d_model=16, n_heads=2, d_vocab=13, n_ctx=16, positional="none"
    ).replace(sliding_window=window, layer_types=("local",) * n_layers)
    params = random_model(cfg, seed=1)
    tokens = random_tokens(cfg, batch=1, n_pos=12, seed=2)
    base = np.asarray(mj.forward(params, tokens, cfg))[0, -1]
    reach = n_layers * (window - 1)  # how far back the last position can see
    q = tokens.shape[1] - 1

    def last_logits_after_changing(pos):
        changed = tokens.copy()
        changed[0, pos] = (changed[0, pos] + 5) % cfg.d_vocab
        return np.asarray(mj.forward(params, changed, cfg))[0, -1]

    np.testing.assert_allclose(last_logits_after_changing(q - reach - 1), base, atol=1e-6)
    assert np.abs(last_logits_after_changing(q - reach) - base).max() > 1e-4


@pytest.mark.parametrize("config_name", ["gemma1_mqa", "gemma3"])
def test_rope_scores_depend_on_relative_position(config_name):
    """Layer 0 of a RoPE model without learned positions: the score of (token a at i,
    token b at j) depends only on i - j, so shifting the sequence right by s shifts the
    score matrix along its diagonal (Su et al. 2021, RoFormer, eq. 16)."""
    cfg = SMALL_CONFIGS[config_name]
    params = random_model(cfg, seed=4)
    tokens = random_tokens(cfg, batch=1, n_pos=8, seed=5)
    shift = 5
    shifted = np.concatenate([np.full((1, shift), 3), tokens], axis=1)
    _, s0 = mj.run_with_stream(params, tokens, cfg, capture=["scores"])
    _, s1 = mj.run_with_stream(params, shifted, cfg, capture=["scores"])
    a = np.asarray(s0["scores"][0, 0])  # [head, query_pos, key_pos]
    b = np.asarray(s1["scores"][0, 0])[:, shift:, shift:]
    allowed = np.isfinite(a)
    assert allowed.sum() > 0 and (np.isfinite(b) == allowed).all()
    np.testing.assert_allclose(b[allowed], a[allowed], rtol=0, atol=1e-4)
    # guard against RoPE being a no-op: the prefix repeats one token, so without
    # positions every score among its entries would be equal; with RoPE they differ
    prefix = np.asarray(s1["scores"][0, 0])[:, shift - 1, :shift]  # [head, key_pos]
    assert np.abs(prefix - prefix[:, -1:]).max() > 1e-3


def test_jit_and_no_jit_agree():
    """The compiled pass and the op-by-op one (jax.disable_jit) give the same logits and
    captures, edits included (a 1-layer model: op-by-op execution is slow)."""
    cfg = SMALL_CONFIGS["mlp_relu"]
    params = random_model(cfg)
    tokens = random_tokens(cfg, batch=2, n_pos=6)
    edits = [mj.edits.zero_ablate("head_out", layer=0, head=2), mj.edits.scale("k", 0.5, head=1)]
    capture = ["resid_mid", "pattern", "mlp_post"]
    logits, stream = mj.run_with_stream(params, tokens, cfg, capture=capture, edits=edits)
    with jax.disable_jit():
        logits_e, stream_e = mj.run_with_stream(params, tokens, cfg, capture=capture, edits=edits)
    np.testing.assert_allclose(logits_e, logits, rtol=0, atol=1e-5)
    for name in capture:
        np.testing.assert_allclose(stream_e[name], stream[name], rtol=0, atol=1e-5)


def test_forward_inside_user_jit():
    """forward composes with an outer jit, where tokens are traced."""
    cfg = SMALL_CONFIGS["gemma3"]
    params = random_model(cfg)
    tokens = random_tokens(cfg, batch=2, n_pos=8)
    eager = mj.forward(params, tokens, cfg)
    jitted = jax.jit(lambda p, t: mj.forward(p, t, cfg))(params, tokens)
    np.testing.assert_allclose(jitted, eager, rtol=0, atol=1e-5)


# -- initialisation ---------------------------------------------------------------------------


def test_init_params_shapes_and_statistics():
    """Shapes follow param_shapes; weight matrices ~ N(0, 1/fan_in); embeddings N(0, 1/d)
    when scaled by sqrt(d_model); norm weights at identity (0 with the `1 + w` offset,
    but 1 for SoLU's own LayerNorm, which has no offset); biases 0."""
    cfg = mj.ModelConfig(
        d_vocab=64, d_model=32, n_layers=1, n_heads=2, d_head=16, n_ctx=8, d_mlp=64,
        act_fn="solu", normalization="rmsnorm", norm_weight_offset=1.0, positional="none",
        scale_embeddings=True, tied_embeddings=True, use_mlp_bias=True,
    )  # fmt: skip
    # an RBG key: XLA compiles its sampler in a fraction of threefry's time
    params = jax.jit(mj.init_params, static_argnums=1)(jax.random.key(0, impl="rbg"), cfg)
    is_shape = lambda x: isinstance(x, tuple)  # noqa: E731
    shapes = jax.tree_util.tree_map(np.shape, params)
    assert shapes == jax.tree_util.tree_map(tuple, mj.param_shapes(cfg), is_leaf=is_shape)
    sizes = jax.tree_util.tree_leaves(mj.param_shapes(cfg), is_leaf=is_shape)
    assert mj.count_params(params) == sum(int(np.prod(s)) for s in sizes)
    blocks = params["blocks"]
    for name, fan_in in [("W_Q", 32), ("W_O", 16), ("W_in", 32), ("W_out", 64)]:
        assert abs(np.std(blocks[name]) * fan_in**0.5 - 1) < 0.1, name
    assert abs(np.std(params["W_E"]) * 32**0.5 - 1) < 0.1
    np.testing.assert_array_equal(blocks["ln1_w"], 0.0)
    np.testing.assert_array_equal(params["ln_final_w"], 0.0)
    np.testing.assert_array_equal(blocks["ln_mlp_w"], 1.0)
    np.testing.assert_array_equal(blocks["b_in"], 0.0)


# -- presets: published sizes -----------------------------------------------------------------

# Fields of the released HF `config.json` files (google/gemma-2b, google/gemma-2-2b,
# google/gemma-2-9b, google/gemma-3-1b-pt) and the published parameter totals (the
# safetensors index's total_size / bytes per parameter, as shown on the model cards).
HF_CONFIGS = {
    "gemma_2b": dict(V=256_000, D=2048, L=18, H=8, K=1, E=256, M=16_384, gemma=1,
                     total=2_506_172_416),
    "gemma2_2b": dict(V=256_000, D=2304, L=26, H=8, K=4, E=256, M=9216, gemma=2,
                      total=2_614_341_888),
    "gemma2_9b": dict(V=256_000, D=3584, L=42, H=16, K=8, E=256, M=14_336, gemma=2,
                      total=9_241_705_984),
    "gemma3_1b": dict(V=262_144, D=1152, L=26, H=4, K=1, E=256, M=6912, gemma=3,
                      total=999_885_952),
}  # fmt: skip


def _hf_count(V, D, L, H, K, E, M, gemma, total):
    """Parameter count from an HF Gemma config: tied embedding, per layer q/k/v/o
    projections, gate/up/down MLP, RMSNorm weights (2 per layer in Gemma 1, 4 with Gemma
    2/3's post norms, plus q/k norms over head_dim in Gemma 3), final norm."""
    attn = H * E * D + 2 * K * E * D + H * E * D
    mlp = 3 * D * M
    norms = (2 if gemma == 1 else 4) * D + (2 * E if gemma == 3 else 0)
    return V * D + L * (attn + mlp + norms) + D


@pytest.mark.parametrize("name", sorted(HF_CONFIGS))
def test_preset_sizes(name):
    hf = HF_CONFIGS[name]
    assert _hf_count(**hf) == hf["total"]  # the arithmetic reproduces the published total
    cfg = mj.presets.PRESETS[name]()
    shapes = jax.eval_shape(functools.partial(mj.init_params, cfg=cfg), jax.random.key(0))
    assert mj.count_params(shapes) == hf["total"]
    assert (cfg.d_vocab, cfg.d_model, cfg.n_layers) == (hf["V"], hf["D"], hf["L"])
    assert (cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_mlp) == (
        hf["H"], hf["K"], hf["E"], hf["M"]
    )  # fmt: skip


def test_preset_architecture_switches():
    """Layer patterns and caps of the HF configs: Gemma 2 alternates sliding (even layers)
    and full attention, caps 50 / 30, window 4096; Gemma 3 1B has 5 local : 1 global,
    window 512, bases 10k (local) / 1M (global), q/k norms."""
    g2 = mj.presets.gemma2_9b()
    assert g2.layer_types[:4] == ("local", "global", "local", "global")
    assert (g2.attn_logit_softcap, g2.final_logit_softcap, g2.sliding_window) == (50, 30, 4096)
    assert g2.query_pre_attn_scalar == 256 and g2.post_attn_norm and g2.post_mlp_norm
    g3 = mj.presets.gemma3_1b()
    assert g3.layer_types[:6] == ("local",) * 5 + ("global",)
    assert g3.layer_types.count("global") == 4  # layers 5, 11, 17, 23
    assert (g3.sliding_window, g3.rope_local_base, g3.rope_base) == (512, 1e4, 1e6)
    assert g3.qk_norm and g3.final_logit_softcap is None and g3.attn_logit_softcap is None
    for cfg in (mj.presets.gemma_2b(), g2, g3):
        assert cfg.tied_embeddings and cfg.scale_embeddings and cfg.norm_weight_offset == 1.0
        assert cfg.act_fn == "gelu_tanh" and cfg.gated_mlp and cfg.normalization == "rmsnorm"
