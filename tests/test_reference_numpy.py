"""An independent float64 numpy forward pass, compared with `mj.forward`.

Written from the published definitions, using nothing from mechjax but the config's
fields and the parameter names of `params.py`'s docstring:

* pre-norm transformer blocks, `x + attn(norm(x))`, `x + mlp(norm(x))` (GPT-2; Elhage et
  al. 2021); LayerNorm `(x - mean) / sqrt(var + eps) * w + b`, RMSNorm
  `x / sqrt(mean(x^2) + eps) * w`, Gemma's RMSNorm multiplying by `(1 + w)`;
* grouped-query attention (Ainslie et al. 2023; HF `repeat_kv`): query head `h` reads
  key/value head `h // (n_heads / n_kv_heads)`;
* rotary embeddings (Su et al. 2021) in the split-halves layout of HF/Gemma:
  `x * cos + rotate_half(x) * sin`, frequencies `base^(-2i/d_head)`; Gemma 3 local
  layers use their own base, global layers divide positions by the linear scaling;
* sliding-window attention (Gemma 2): query q sees keys k with `0 <= q - k < window`;
* soft-capping (Gemma 2): `cap * tanh(x / cap)` on attention logits and final logits;
* Gemma 2/3 post-attention and post-MLP norms, Gemma 3 q/k RMSNorms over `d_head`;
* embeddings times sqrt(d_model) (Gemma), tied embeddings `W_U = W_E.T`;
* SoLU: `x * softmax(x)` followed by a LayerNorm (Elhage et al. 2022, "Softmax Linear
  Units"); GeGLU / gated MLP: `act(x W_gate) * (x W_in)` (Shazeer 2020).

Loops over heads and positions are deliberate: a reader can check each line against the
definitions without reasoning about einsum subscripts.
"""

from __future__ import annotations

import math

import hypothesis
import jax
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, model_configs, random_model, random_tokens
from hypothesis import strategies as st

import mechjax as mj

# float32 forward (matmul precision "highest", set in conftest) vs float64 reference:
# the observed error is ~2-6e-7 of the logits' scale; 1e-5 leaves room for rounding
# while every wrong convention tried below misses by more than 0.3.
TOL = 1e-5


# -- the reference ----------------------------------------------------------------------------


def _norm(x, w, b, cfg, *, center=None, offset=None):
    """LayerNorm / RMSNorm over the last axis, float64."""
    center = cfg.normalization == "layernorm" if center is None else center
    offset = cfg.norm_weight_offset if offset is None else offset
    if center:
        x = x - x.mean(-1, keepdims=True)
    y = x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps) * (offset + w)
    return y if b is None else y + b


def _act(name, x):
    if name == "gelu":
        return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    if name == "gelu_tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "solu":
        e = np.exp(x - x.max(-1, keepdims=True))
        return x * e / e.sum(-1, keepdims=True)
    raise AssertionError(name)


def _cap(x, cap):
    return x if cap is None else cap * np.tanh(x / cap)


def _rope(x, positions, base, factor, *, interleaved=False):
    """Rotate x [pos, d_head]: pairs (i, i + d/2) (split halves) by angle pos/factor * theta_i."""
    d = x.shape[-1]
    half = d // 2
    theta = base ** (-2.0 * np.arange(half) / d)
    ang = (positions / factor)[:, None] * theta[None, :]
    cos, sin = np.cos(ang), np.sin(ang)
    if interleaved:  # GPT-NeoX/GPT-J's other layout: pairs (2i, 2i + 1); used to show sensitivity
        x1, x2 = x[:, 0::2], x[:, 1::2]
        out = np.empty_like(x)
        out[:, 0::2], out[:, 1::2] = x1 * cos - x2 * sin, x2 * cos + x1 * sin
        return out
    x1, x2 = x[:, :half], x[:, half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def reference_forward(params, tokens, cfg, wrong=frozenset()):
    """logits [batch, pos, vocab] in float64. `wrong` switches in deliberately wrong
    conventions, to show the comparison can tell them apart."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    blocks = p["blocks"]
    has_norm = cfg.normalization != "none"
    offset = 0.0 if "no_offset" in wrong else cfg.norm_weight_offset
    G = cfg.n_heads // cfg.n_kv_heads
    scale = (cfg.query_pre_attn_scalar or cfg.d_head) ** -0.5
    types = cfg.layer_types or ("global",) * cfg.n_layers
    out = []
    for seq in np.asarray(tokens):
        P = len(seq)
        pos = np.arange(P, dtype=np.float64)
        x = p["W_E"][seq] * (math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0)
        if cfg.positional == "learned":
            x = x + p["W_pos"][:P]
        for layer in range(cfg.n_layers):
            lp = {name: value[layer] for name, value in blocks.items()}
            local = types[layer] == "local"
            h = _norm(x, lp["ln1_w"], lp.get("ln1_b"), cfg, offset=offset) if has_norm else x
            attn = np.zeros_like(x)
            for head in range(cfg.n_heads):
                kv = head % cfg.n_kv_heads if "group_mod" in wrong else head // G
                q = h @ lp["W_Q"][head]
                k = h @ lp["W_K"][kv]
                v = h @ lp["W_V"][kv]
                if cfg.use_attn_bias:
                    q, k, v = q + lp["b_Q"][head], k + lp["b_K"][kv], v + lp["b_V"][kv]
                if cfg.qk_norm:
                    q = _norm(q, lp["q_norm_w"], None, cfg, offset=offset)
                    k = _norm(k, lp["k_norm_w"], None, cfg, offset=offset)
                if cfg.positional == "rope":
                    if local:
                        base, factor = cfg.rope_local_base or cfg.rope_base, 1.0
                    else:
                        base, factor = cfg.rope_base, cfg.rope_scaling
                    inter = "rope_interleaved" in wrong
                    q = _rope(q, pos, base, factor, interleaved=inter)
                    k = _rope(k, pos, base, factor, interleaved=inter)
                scores = _cap((q @ k.T) * scale, cfg.attn_logit_softcap)
                pattern = np.zeros((P, P))
                for qi in range(P):
                    if local:
                        width = cfg.sliding_window + (1 if "window_plus_one" in wrong else 0)
                        keys = [ki for ki in range(qi + 1) if qi - ki < width]
                    else:
                        keys = list(range(qi + 1))
                    s = scores[qi, keys]
                    e = np.exp(s - s.max())
                    pattern[qi, keys] = e / e.sum()
                attn += pattern @ v @ lp["W_O"][head]
            if cfg.use_attn_bias:
                attn = attn + lp["b_O"]
            if cfg.post_attn_norm:
                attn = _norm(attn, lp["ln1_post_w"], lp.get("ln1_post_b"), cfg, offset=offset)
            x = x + attn
            if cfg.d_mlp is None:
                continue
            h = _norm(x, lp["ln2_w"], lp.get("ln2_b"), cfg, offset=offset) if has_norm else x
            pre = h @ lp["W_in"] + (lp["b_in"] if cfg.use_mlp_bias else 0.0)
            if cfg.gated_mlp:
                post = _act(cfg.act_fn, h @ lp["W_gate"]) * pre
            else:
                post = _act(cfg.act_fn, pre)
            if cfg.act_fn == "solu":  # SoLU's own LayerNorm: plain w, no Gemma offset
                post = _norm(post, lp["ln_mlp_w"], lp["ln_mlp_b"], cfg, center=True, offset=0.0)
            mlp = post @ lp["W_out"] + (lp["b_out"] if cfg.use_mlp_bias else 0.0)
            if cfg.post_mlp_norm:
                mlp = _norm(mlp, lp["ln2_post_w"], lp.get("ln2_post_b"), cfg, offset=offset)
            x = x + mlp
        if has_norm and cfg.final_norm:
            x = _norm(x, p["ln_final_w"], p.get("ln_final_b"), cfg, offset=offset)
        W_U = p["W_E"].T if cfg.tied_embeddings else p["W_U"]
        logits = x @ W_U + (p["b_U"] if cfg.use_unembed_bias else 0.0)
        cap = None if "no_final_cap" in wrong else cfg.final_logit_softcap
        out.append(_cap(logits, cap))
    return np.stack(out)


def _error(cfg, params, tokens, wrong=frozenset()):
    """Max |mechjax - reference| relative to the logits' scale (at least 1)."""
    got = np.asarray(mj.forward(params, tokens, cfg), np.float64)
    want = reference_forward(params, tokens, cfg, wrong)
    assert got.shape == want.shape == (*np.shape(tokens), cfg.d_vocab)
    return np.abs(got - want).max() / max(1.0, np.abs(want).max())


# -- comparisons ----------------------------------------------------------------------------


def test_matches_reference_on_small_configs(any_cfg):
    params = random_model(any_cfg, seed=3)
    tokens = random_tokens(any_cfg, batch=2, n_pos=any_cfg.n_ctx, seed=4)
    assert _error(any_cfg, params, tokens) <= TOL


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(cfg=model_configs(), seed=st.integers(0, 2**16))
def test_matches_reference_on_random_configs(cfg, seed):
    params = random_model(cfg, seed=seed)
    tokens = random_tokens(cfg, batch=2, n_pos=cfg.n_ctx, seed=seed)
    assert _error(cfg, params, tokens) <= TOL


@pytest.mark.parametrize("local_base", [7.0, None])
def test_rope_scaling_and_per_layer_bases(local_base):
    """Global layers with linear position scaling next to local layers with their own
    base (Gemma 3 4B+), or with the global base but still unscaled, at positions long
    enough for the bases to matter."""
    cfg = SMALL_CONFIGS["gemma3"].replace(
        n_ctx=32, rope_scaling=4.0, rope_base=50.0, rope_local_base=local_base, sliding_window=6
    )
    params = random_model(cfg, seed=5)
    tokens = random_tokens(cfg, batch=1, n_pos=32, seed=6)
    assert _error(cfg, params, tokens) <= TOL


@pytest.mark.parametrize(
    "config_name, wrong",
    [
        ("gemma2_gqa", "group_mod"),  # query head h -> kv head h % n_kv instead of h // G
        ("gemma3", "rope_interleaved"),  # RoPE pairs (2i, 2i+1) instead of split halves
        ("gemma2_gqa", "window_plus_one"),  # sliding window one key too wide
        ("gemma1_mqa", "no_offset"),  # norm weight w instead of (1 + w)
        ("gemma2_gqa", "no_final_cap"),  # final soft-cap dropped
    ],
)
def test_reference_detects_wrong_conventions(config_name, wrong):
    """Guards the comparison itself: each plausible wrong convention misses by far more
    than the tolerance, so the agreement above is not an accident of small numbers."""
    cfg = SMALL_CONFIGS[config_name]
    params = random_model(cfg, seed=3)
    tokens = random_tokens(cfg, batch=2, n_pos=cfg.n_ctx, seed=4)
    assert _error(cfg, params, tokens, frozenset({wrong})) > 1e-2
