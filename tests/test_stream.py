"""The residual stream's exact decomposition and direct logit attribution.

Claims checked (DESIGN.md "the stream is exact"; METHODS.md "direct logit attribution"):
the captured writes sum to `final_resid` (Gemma 2/3 post-norms included: a norm is
linear once its scale is frozen); each attention block's head writes plus its bias write
equal `attn_out`; `accumulated` reproduces `resid_pre`/`resid_post` layer by layer and
ends at `final_resid`; the attribution's components sum to the pre-soft-cap logits (for
one token, and for a logit difference). `capture="all"` gives every site with its
documented axes, stacked over layers.
"""

from __future__ import annotations

import hypothesis
import jax
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, model_configs, random_model, random_tokens
from hypothesis import strategies as st

import mechjax as mj

B, P = 2, 7


def _close(got, want, rel=1e-5):
    """float32 agreement, relative to the larger of 1 and the reference's scale."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    err = np.abs(got - want).max() if want.size else 0.0
    assert err <= rel * max(1.0, np.abs(want).max()), err


def _axis_sizes(cfg):
    return dict(
        batch=B, pos=P, query_pos=P, key_pos=P, one=1, d_model=cfg.d_model,
        head=cfg.n_heads, kv_head=cfg.n_kv_heads, d_head=cfg.d_head, d_mlp=cfg.d_mlp,
    )  # fmt: skip


def check_stream(cfg, params, tokens):
    """Capture everything and check shapes and every exact identity of the stream."""
    logits, stream = mj.run_with_stream(params, tokens, cfg, capture="all")
    L = cfg.n_layers

    # every site of this model (and the write parts, if it has layers), stacked per layer
    expected = set(mj.sites.available_sites(cfg)) | (set(mj.sites.WRITE_PARTS) if L else set())
    assert set(stream.keys()) == expected
    sizes = _axis_sizes(cfg)
    for name in expected:
        per_layer, axes = {**mj.sites.SITES, **mj.sites.WRITE_PARTS}[name]
        shape = ((L,) if per_layer else ()) + tuple(sizes[a] for a in axes)
        assert stream[name].shape == shape, name

    # the writes sum to the final residual
    _close(stream.residual(cfg), stream["final_resid"])
    labels, parts = stream.components(cfg)
    n_mlp = 0 if cfg.attn_only else 1
    n_pos_embed = int(cfg.positional == "learned")
    assert len(labels) == parts.shape[0] == 1 + n_pos_embed + L * (cfg.n_heads + 1 + n_mlp)

    # layer by layer: heads + bias = attn_out; accumulated = resid_pre / resid_post
    acc_labels, acc = stream.accumulated(cfg)
    assert acc_labels == ["embed"] + [f"L{layer}" for layer in range(L)]
    assert acc.shape == (L + 1, B, P, cfg.d_model)
    _close(acc[-1], stream["final_resid"])
    for layer in range(L):
        heads = stream["head_writes"][layer].sum(axis=2) + stream["attn_bias_writes"][layer]
        _close(heads, stream["attn_out"][layer])
        _close(acc[layer], stream["resid_pre"][layer])
        _close(acc[layer + 1], stream["resid_post"][layer])
    return logits, stream


def _attribution(cfg, stream, params, ids, minus):
    """The three forms of logit_attribution in one jitted call (op-by-op, every
    primitive would compile separately): full vocab, one token, a logit difference."""

    def run(s, p):
        return tuple(mj.logit_attribution(p, cfg, s, *a)[1] for a in ((), (ids,), (ids, minus)))

    return [np.asarray(x, np.float64) for x in jax.jit(run)(stream, params)]


def check_attribution(cfg, stream, params, logits, precap_logits=None):
    """Components sum to the pre-cap logits: compared with `precap_logits` when given,
    else through the cap (cap * tanh(sum / cap) == logits). The token and logit-difference
    forms are the same numbers, gathered."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.d_vocab, size=(B, P))
    minus = rng.integers(0, cfg.d_vocab, size=(B, P))
    full, per_token, diff = _attribution(cfg, stream, params, ids, minus)
    assert full.shape == (len(stream.components(cfg)[0]) + 1, B, P, cfg.d_vocab)
    total = full.sum(axis=0)
    cap = cfg.final_logit_softcap
    if precap_logits is not None:
        _close(total, precap_logits)
    if cap is None:
        _close(total, logits)
    else:
        _close(cap * np.tanh(total / cap), logits)

    b, p = np.meshgrid(np.arange(B), np.arange(P), indexing="ij")
    _close(per_token, full[:, b, p, ids])
    _close(diff, full[:, b, p, ids] - full[:, b, p, minus])
    _close(diff.sum(axis=0), total[b, p, ids] - total[b, p, minus])


def test_stream_and_attribution_on_small_configs(any_cfg):
    params = random_model(any_cfg, seed=1)
    tokens = random_tokens(any_cfg, batch=B, n_pos=P, seed=2)
    logits, stream = check_stream(any_cfg, params, tokens)
    precap = None
    if any_cfg.final_logit_softcap is not None:
        # same params, cap removed: the exact pre-cap logits
        precap = mj.forward(params, tokens, any_cfg.replace(final_logit_softcap=None))
        cap = any_cfg.final_logit_softcap
        # and inverting the cap where it is well-conditioned
        inside = np.abs(np.asarray(logits)) < 0.9 * cap
        assert inside.mean() > 0.5
        inverted = cap * np.arctanh(np.asarray(logits, np.float64)[inside] / cap)
        _close(inverted, np.asarray(precap)[inside], rel=2e-5)
    check_attribution(any_cfg, stream, params, logits, precap)


@hypothesis.settings(max_examples=15, deadline=None)
@hypothesis.given(cfg=model_configs(), seed=st.integers(0, 2**16))
def test_stream_and_attribution_on_random_configs(cfg, seed):
    params = random_model(cfg, seed=seed)
    tokens = random_tokens(cfg, batch=B, n_pos=P, seed=seed)
    logits, stream = check_stream(cfg, params, tokens)
    check_attribution(cfg, stream, params, logits)


def test_attribution_labels_and_a_direct_path():
    """Labels name every write, and on a 0-layer model the attribution is the direct
    path: embed -> final norm (frozen scale) -> W_U (Elhage et al. 2021)."""
    cfg = SMALL_CONFIGS["attn0"]
    params = random_model(cfg, seed=3)
    tokens = random_tokens(cfg, batch=B, n_pos=P, seed=4)
    _, stream = mj.run_with_stream(params, tokens, cfg)
    labels, contrib = mj.logit_attribution(params, cfg, stream)
    assert labels == ["embed", "pos_embed", "bias"]
    x = np.asarray(params["W_E"], np.float64)[tokens]
    x = x - x.mean(-1, keepdims=True)
    scale = np.asarray(stream["ln_final_scale"], np.float64)
    want = (x * scale * np.asarray(params["ln_final_w"])) @ np.asarray(params["W_U"])
    _close(contrib[0], want)

    cfg2 = SMALL_CONFIGS["attn2_ln_bias"]
    params2 = random_model(cfg2)
    _, stream2 = mj.run_with_stream(params2, tokens, cfg2)
    labels2, contrib2 = mj.logit_attribution(params2, cfg2, stream2, token_ids=0)
    per_layer = [[f"L{layer}H{h}" for h in range(4)] + [f"L{layer}attn_bias"] for layer in (0, 1)]
    assert labels2 == ["embed", "pos_embed", *per_layer[0], *per_layer[1], "bias"]
    assert contrib2.shape == (len(labels2), B, P)


def test_capture_presets_and_missing_names():
    cfg = SMALL_CONFIGS["mlp_gelu"]
    params = random_model(cfg)
    tokens = random_tokens(cfg, batch=B, n_pos=P)
    _, stream = mj.run_with_stream(params, tokens, cfg)  # default: "writes"
    assert set(stream.keys()) == set(mj.sites.WRITES)
    _, only = mj.run_with_stream(params, tokens, cfg, capture="pattern")
    assert set(only.keys()) == {"pattern"}
    with pytest.raises(KeyError, match="was not captured"):
        only["resid_pre"]
    with pytest.raises(KeyError, match="the decomposition needs"):
        only.residual(cfg)
    assert "pattern" in only and "embed" not in only
    # a Stream is a pytree: it passes through jit and tree_map
    doubled = jax.jit(lambda s: jax.tree_util.tree_map(lambda x: 2 * x, s))(only)
    np.testing.assert_allclose(doubled["pattern"], 2 * only["pattern"])
    # patterns are distributions over keys
    np.testing.assert_allclose(only["pattern"].sum(-1), 1.0, atol=1e-6)
