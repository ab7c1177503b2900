"""DLA tables, integrated gradients and attention rollout.

References: the model's logits (DLA sums to them); a numpy float64 DLA of each head
from the captured head writes; the closed form of IG for a model linear in its input
(0 layers, no final norm); completeness on a nonlinear model; a numpy rollout loop.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model, random_tokens

import mechjax as mj
from mechjax.activations.attribution import (
    attention_rollout,
    dla,
    head_dla,
    mlp_dla,
    position_dla,
)
from mechjax.causal.integrated_gradients import integrated_gradients, quadrature

ANSWERS = (3, 5)


@pytest.mark.parametrize("name", ["mlp_gelu", "attn2_ln_bias", "gemma1_mqa"])
def test_dla_tables_sum_to_the_logits(name):
    cfg = SMALL_CONFIGS[name]
    params = random_model(cfg)
    tokens = random_tokens(cfg, 2, 6)
    logits, stream = mj.run_with_stream(params, tokens, cfg)
    answer, wrong = np.array([3, 7]), np.array([5, 1])  # one pair per example
    table = dla(params, cfg, stream, answer, wrong)
    logits = np.asarray(logits, np.float64)
    expected = logits[np.arange(2), :, answer] - logits[np.arange(2), :, wrong]  # [batch, pos]
    np.testing.assert_allclose(table.total, expected, rtol=1e-4, atol=1e-4)
    parts = table.heads.sum((0, 1)) + table.attn_bias.sum(0) + table.embed + table.bias
    parts = parts + (0 if table.mlps is None else table.mlps.sum(0))
    parts = parts + (0 if table.pos_embed is None else table.pos_embed)
    np.testing.assert_allclose(parts, expected, rtol=1e-4, atol=1e-4)

    # per head, independently: each head's write through the frozen final norm and W_U
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    writes = np.asarray(stream["head_writes"], np.float64)  # [layer, batch, pos, head, d]
    scale = np.asarray(stream["ln_final_scale"], np.float64)[None, :, :, None]
    centered = (
        writes - writes.mean(-1, keepdims=True) if cfg.normalization == "layernorm" else writes
    )
    normed = centered * scale * (cfg.norm_weight_offset + p["ln_final_w"])
    W_U = p["W_U"] if "W_U" in p else p["W_E"].T
    direction = W_U[:, answer] - W_U[:, wrong]  # [d_model, batch]
    per_head = np.einsum("lbphd,db->lhbp", normed, direction)
    np.testing.assert_allclose(table.heads, per_head, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(head_dla(params, cfg, stream, answer, wrong),
                               per_head[..., -1].mean(-1), rtol=1e-4, atol=1e-5)  # fmt: skip
    if not cfg.attn_only:
        np.testing.assert_allclose(mlp_dla(params, cfg, stream, answer, wrong),
                                   table.mlps[..., -1].mean(-1), rtol=1e-6)  # fmt: skip
    labels, by_pos = position_dla(params, cfg, stream, answer, wrong)
    assert by_pos.shape == (len(labels), 6) and labels[-1] == "bias"


# a model linear in its input embeddings: logits = (embed + pos) @ W_U + b_U
LINEAR = mj.presets.attn_only(0, d_model=24, n_heads=4, d_vocab=37, n_ctx=16,
                              normalization="none", use_bias=True)  # fmt: skip


@pytest.mark.parametrize("method", ["trapezoid", "riemann_left", "riemann_middle"])
def test_integrated_gradients_is_exact_for_a_linear_model(method):
    params = random_model(LINEAR)
    tokens = random_tokens(LINEAR, 2, 5)
    result = integrated_gradients(params, LINEAR, tokens, answers=ANSWERS, steps=4, method=method)
    # closed form: d f / d embed = (W_U[:, a] - W_U[:, b]) / batch at the last position
    W_U, W_E = np.asarray(params["W_U"], np.float64), np.asarray(params["W_E"], np.float64)
    expected = np.zeros((2, 5, 24))
    expected[:, -1] = W_E[tokens[:, -1]] * (W_U[:, ANSWERS[0]] - W_U[:, ANSWERS[1]]) / 2
    np.testing.assert_allclose(result.attributions, expected, rtol=1e-5, atol=1e-6)
    logits = np.asarray(mj.forward(params, tokens, LINEAR), np.float64)
    f_x = np.mean(logits[:, -1, ANSWERS[0]] - logits[:, -1, ANSWERS[1]])
    assert result.f_input == pytest.approx(f_x, abs=1e-5)
    assert abs(result.completeness_gap) < 1e-5 * max(1.0, abs(f_x))
    np.testing.assert_allclose(result.per_token, expected.sum(-1), rtol=1e-5, atol=1e-6)


def test_integrated_gradients_completeness_on_a_nonlinear_model():
    cfg = SMALL_CONFIGS["mlp_gelu"]
    params = random_model(cfg)
    tokens = random_tokens(cfg, 2, 5)
    fine = integrated_gradients(params, cfg, tokens, answers=ANSWERS, steps=128, chunk_size=43)
    coarse = integrated_gradients(params, cfg, tokens, answers=ANSWERS, steps=2, chunk_size=43)
    change = fine.f_input - fine.f_baseline
    assert abs(change) > 0.1
    # trapezoid error falls as 1/steps^2: strict with 128 steps, visible with 2
    assert abs(fine.completeness_gap) < 2e-4 * abs(change)
    assert abs(coarse.completeness_gap) > 10 * abs(fine.completeness_gap)
    # the baseline's metric: the model on zero token embeddings (positions kept)
    zero = mj.edits.scale("embed", 0.0)
    logits = np.asarray(mj.forward(params, tokens, cfg, edits=[zero]), np.float64)
    f_base = np.mean(logits[:, -1, ANSWERS[0]] - logits[:, -1, ANSWERS[1]])
    assert fine.f_baseline == pytest.approx(f_base, abs=1e-5)


def test_quadrature_weights_integrate_polynomials():
    for method, exact_degree in [("trapezoid", 1), ("riemann_middle", 1), ("riemann_left", 0)]:
        alphas, weights = quadrature(8, method)
        for degree in range(exact_degree + 1):
            assert np.sum(weights * alphas**degree) == pytest.approx(1 / (degree + 1), abs=1e-12)


def test_attention_rollout_matches_numpy():
    cfg = SMALL_CONFIGS["gemma2_gqa"]  # grouped-query heads, local layers
    params = random_model(cfg)
    _, stream = mj.run_with_stream(params, random_tokens(cfg, 2, 6), cfg)
    rollout = attention_rollout(stream)
    pattern = np.asarray(stream["pattern"], np.float64)
    eye = np.eye(6)
    expected, acc = [], eye
    for layer in range(cfg.n_layers):
        a = 0.5 * pattern[layer].mean(axis=1) + 0.5 * eye
        a = a / a.sum(-1, keepdims=True)
        acc = a @ acc
        expected.append(acc)
    np.testing.assert_allclose(rollout, np.stack(expected), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rollout).sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(attention_rollout(stream["pattern"]), rollout)


def test_bad_input():
    cfg = SMALL_CONFIGS["mlp_gelu"]
    params = random_model(cfg)
    tokens = random_tokens(cfg, 2, 5)
    with pytest.raises(ValueError, match="baseline"):
        integrated_gradients(params, cfg, tokens, answers=ANSWERS, baseline=np.zeros((3, 24)))
    with pytest.raises(ValueError, match="steps"):
        integrated_gradients(params, cfg, tokens, answers=ANSWERS, steps=0)
    with pytest.raises(ValueError, match="method"):
        integrated_gradients(params, cfg, tokens, answers=ANSWERS, method="simpson")
    with pytest.raises(ValueError, match="answers="):
        integrated_gradients(params, cfg, tokens)
    with pytest.raises(ValueError, match="layer, batch, head"):
        attention_rollout(np.zeros((2, 4, 6, 6)))
    _, stream = mj.run_with_stream(params, tokens, cfg, capture=["embed"])
    with pytest.raises(ValueError, match="pattern"):
        attention_rollout(stream)
    _, stream = mj.run_with_stream(params, tokens, cfg)
    with pytest.raises(ValueError, match="batch=2"):
        dla(params, cfg, stream, [1, 2, 3])
    with pytest.raises(ValueError, match="no MLPs"):
        attn = SMALL_CONFIGS["attn2_ln_bias"]
        mlp_dla(random_model(attn), attn, stream, 1)
