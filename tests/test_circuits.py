"""Circuits against dense numpy float64 (explicit per-head loops, grouped-query attention
included), TransformerLens on the same weights (QK/OV, eigenvalues, composition scores,
folded LayerNorm), and the model's own forward pass (folding keeps logits, RoPE
positional scores equal the captured attention scores)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model, random_tokens, randomize
from scipy.optimize import linear_sum_assignment

import mechjax as mj
from mechjax.circuits import eigen as circuit_eigen
from mechjax.circuits import weights as circuits

# -- numpy float64 references ---------------------------------------------------------------------


def np_params(params):
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)


def dense_circuits(params, cfg):
    """W_QK, W_OV [layer, head, d_model, d_model] by per-head loops (head h uses kv h // G)."""
    p = np_params(params)["blocks"]
    L, H, D, G = cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.group_size
    qk, ov = np.zeros((L, H, D, D)), np.zeros((L, H, D, D))
    for l in range(L):
        for h in range(H):
            qk[l, h] = p["W_Q"][l, h] @ p["W_K"][l, h // G].T
            ov[l, h] = p["W_V"][l, h // G] @ p["W_O"][l, h]
    return qk, ov


def dense_composition(params, cfg, kind):
    qk, ov = dense_circuits(params, cfg)
    L, H = cfg.n_layers, cfg.n_heads
    out = np.zeros((L, H, L, H))
    for l1 in range(L):
        for h1 in range(H):
            for l2 in range(l1 + 1, L):
                for h2 in range(H):
                    right = {"Q": qk[l2, h2], "K": qk[l2, h2].T, "V": ov[l2, h2]}[kind]
                    out[l1, h1, l2, h2] = np.linalg.norm(ov[l1, h1] @ right) / (
                        np.linalg.norm(ov[l1, h1]) * np.linalg.norm(right)
                    )
    return out


def eigen_copying(m):
    lam = np.linalg.eigvals(m)
    return lam.sum().real / np.abs(lam).sum()


def match_multisets(got, want):
    cost = np.abs(np.asarray(got)[:, None] - np.asarray(want)[None, :])
    rows, cols = linear_sum_assignment(cost)
    return cost[rows, cols].max()


GQA = mj.presets.attn_only(
    2, d_model=24, n_heads=4, d_vocab=37, n_ctx=16, n_kv_heads=2, scale_embeddings=True
)


@pytest.fixture(scope="module")
def gqa_model():
    return GQA, random_model(GQA, seed=3)


# -- circuits vs dense numpy ---------------------------------------------------------------------


def test_circuits_match_dense_numpy_gqa(gqa_model):
    cfg, params = gqa_model
    qk, ov = dense_circuits(params, cfg)
    p = np_params(params)
    W_E = p["W_E"] * np.sqrt(cfg.d_model)  # the model scales its embeddings
    W_U, W_pos = p["W_U"], p["W_pos"]
    tol = dict(rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(circuits.qk_circuit(params, cfg).AB, qk, **tol)
    np.testing.assert_allclose(circuits.ov_circuit(params, cfg).AB, ov, **tol)
    full_qk = circuits.full_qk_circuit(params, cfg)
    assert full_qk.shape == (2, 4, 37, 37) and full_qk.inner_dim == cfg.d_head
    np.testing.assert_allclose(full_qk.AB, W_E @ qk @ W_E.T, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(
        circuits.full_ov_circuit(params, cfg).AB, W_E @ ov @ W_U, rtol=1e-4, atol=1e-4
    )
    np.testing.assert_allclose(circuits.direct_path(params, cfg).AB, W_E @ W_U, **tol)
    pos = circuits.positional_qk_circuit(params, cfg)
    np.testing.assert_allclose(pos.AB, W_pos @ qk @ W_pos.T, rtol=1e-4, atol=1e-4)


def test_eigen_copying_scores_match_dense(gqa_model):
    cfg, params = gqa_model
    qk, ov = dense_circuits(params, cfg)
    p = np_params(params)
    W_E = p["W_E"] * np.sqrt(cfg.d_model)
    ref_ov = np.array(
        [[eigen_copying(W_E @ ov[l, h] @ p["W_U"]) for h in range(4)] for l in range(2)]
    )
    ref_qk = np.array([[eigen_copying(W_E @ qk[l, h] @ W_E.T) for h in range(4)] for l in range(2)])
    np.testing.assert_allclose(circuit_eigen.ov_eigenvalue_copying(params, cfg), ref_ov, atol=2e-5)
    np.testing.assert_allclose(circuit_eigen.qk_eigenvalue_copying(params, cfg), ref_qk, atol=2e-5)
    # closed forms: the identity copies (+1), its negative anti-copies (-1), a rotation 0
    eye = circuits.FactoredMatrix(jnp.eye(5)[:, :3], jnp.eye(5)[:3])
    np.testing.assert_allclose(circuit_eigen.eigenvalue_copying(eye), 1.0)
    np.testing.assert_allclose(circuit_eigen.eigenvalue_copying(eye @ -jnp.eye(5)), -1.0)
    rot = circuits.FactoredMatrix(jnp.eye(2), jnp.array([[0.0, -1.0], [1.0, 0.0]]))
    # eigenvalues +-i of float32 unit-scale matrices: zero to a few ulp of 1
    np.testing.assert_allclose(circuit_eigen.eigenvalue_copying(rot), 0.0, atol=1e-6)
    zero = circuits.FactoredMatrix(jnp.zeros((3, 2)), jnp.zeros((2, 3)))
    np.testing.assert_allclose(circuit_eigen.eigenvalue_copying(zero), 0.0)


@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_composition_scores_match_dense_numpy_gqa(kind):
    cfg = GQA.replace(n_layers=3, n_heads=6, n_kv_heads=3, d_head=5)
    params = random_model(cfg, seed=5)
    scores = circuits.composition_scores(params, cfg, kind)
    assert scores.shape == (3, 6, 3, 6)
    np.testing.assert_allclose(scores, dense_composition(params, cfg, kind), rtol=1e-5, atol=1e-6)


def test_composition_baseline():
    cfg = GQA
    params = random_model(cfg, seed=1)
    raw = circuits.composition_scores(params, cfg, "K")
    n = 1000
    based = circuits.composition_scores(params, cfg, "K", baseline=True, seed=3, n_samples=n)
    base = circuits.random_composition_baseline(cfg, seed=3, n_samples=n)
    later = np.arange(2)[:, None, None, None] < np.arange(2)[None, None, :, None]
    np.testing.assert_allclose(based, np.where(later, raw - base, 0.0), atol=1e-6)
    # the baseline is the mean score of random Gaussian factors: numpy Monte Carlo
    rng = np.random.default_rng(100)  # independent draws
    D, E = cfg.d_model, cfg.d_head
    X = rng.normal(size=(n, D, E)) @ rng.normal(size=(n, E, D))
    Y = rng.normal(size=(n, D, E)) @ rng.normal(size=(n, E, D))
    ratio = np.linalg.norm(X @ Y, axis=(1, 2)) / (
        np.linalg.norm(X, axis=(1, 2)) * np.linalg.norm(Y, axis=(1, 2))
    )
    # both are means of n draws: their difference has standard deviation ~ std * sqrt(2 / n)
    assert abs(float(base) - ratio.mean()) < 5 * ratio.std() * np.sqrt(2 / n)


# -- RoPE positional circuit -------------------------------------------------------------------------


def np_rope_matrix(offset: float, d_head: int, base: float) -> np.ndarray:
    """M with rope(x) = x @ M: pairs (i, i + d_head/2) rotate by offset * base^(-2i/d_head)."""
    half = d_head // 2
    M = np.zeros((d_head, d_head))
    for i in range(half):
        angle = offset * base ** (-2 * i / d_head)
        c, s = np.cos(angle), np.sin(angle)
        M[i, i], M[i + half, i + half] = c, c
        M[i, i + half], M[i + half, i] = s, -s
    return M


def test_rope_expected_positional_scores_closed_form():
    cfg = SMALL_CONFIGS["gemma3"]  # local layers with their own RoPE base, GQA
    params = random_model(cfg, seed=2)
    got = circuits.positional_qk_circuit(params, cfg, n_offsets=12)
    assert got.shape == (cfg.n_layers, cfg.n_heads, 12)
    p = np_params(params)["blocks"]
    ref = np.zeros(got.shape)
    for l, kind in enumerate(cfg.resolved_layer_types):
        base = cfg.rope_local_base if kind == "local" else cfg.rope_base
        for h in range(cfg.n_heads):
            W_Q, W_K = p["W_Q"][l, h], p["W_K"][l, h // cfg.group_size]
            for off in range(12):
                M = np_rope_matrix(off, cfg.d_head, base)
                ref[l, h, off] = np.trace(W_Q @ M @ W_K.T) / cfg.d_model
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_rope_positional_scores_equal_model_scores():
    """A sequence of one repeated token gives every position the same normed vector x, so
    layer 0's scores are attn_scale * score(x, x, offset) at offset q - k."""
    cfg = SMALL_CONFIGS["gemma1_mqa"]  # RoPE, RMSNorm (1 + w), scaled embeddings, MQA
    params = random_model(cfg, seed=4)
    P, token = 10, 7
    _, stream = mj.run_with_stream(params, np.full((1, P), token), cfg, capture=["scores"])
    scores = np.asarray(stream["scores"][0, 0])  # [head, q, k]
    p = np_params(params)
    x = p["W_E"][token] * np.sqrt(cfg.d_model)
    x = x / np.sqrt(np.mean(x**2) + cfg.norm_eps) * (1.0 + p["blocks"]["ln1_w"][0])
    offsets = np.asarray(circuits.positional_qk_circuit(params, cfg, query=x, key=x, n_offsets=P))
    for q in range(P):
        for k in range(q + 1):
            np.testing.assert_allclose(
                scores[:, q, k], cfg.attn_scale * offsets[0, :, q - k], rtol=2e-5, atol=2e-5
            )


def test_positional_errors(gqa_model):
    cfg, params = gqa_model
    with pytest.raises(ValueError, match="RoPE models only"):
        circuits.positional_qk_circuit(params, cfg, n_offsets=3)
    nopos = SMALL_CONFIGS["attn3_nopos"]
    with pytest.raises(ValueError, match="no positional"):
        circuits.positional_qk_circuit(random_model(nopos), nopos)
    rope = SMALL_CONFIGS["gemma1_mqa"]
    rope_params = random_model(rope)
    with pytest.raises(ValueError, match="both query and key"):
        circuits.positional_qk_circuit(rope_params, rope, query=np.ones(rope.d_model))
    with pytest.raises(ValueError, match="d_model"):
        circuits.positional_qk_circuit(rope_params, rope, query=np.ones(3), key=np.ones(3))
    with pytest.raises(ValueError, match="kind"):
        circuits.composition_scores(params, cfg, "O")


# -- folding norms ---------------------------------------------------------------------------------------


GATED_LN = mj.ModelConfig(
    d_vocab=37,
    d_model=24,
    n_layers=1,
    n_heads=4,
    d_head=6,
    n_ctx=16,
    d_mlp=32,
    act_fn="gelu_tanh",
    gated_mlp=True,
    use_mlp_bias=True,
)  # LayerNorm before a gated MLP: ln2 cannot be folded (no gate bias) and stays
FOLD_CASES = {
    name: SMALL_CONFIGS[name] for name in ("attn2_ln_bias", "attn3_nopos", "mlp_solu", "gemma2_gqa")
} | {"gated_layernorm": GATED_LN}


@pytest.mark.parametrize("name", sorted(FOLD_CASES))
def test_fold_norms_keeps_the_function(name):
    cfg = FOLD_CASES[name]
    params = random_model(cfg, seed=6)
    folded, cfg2 = circuits.fold_norms(params, cfg)
    mj.check_params(folded, cfg2)
    tokens = random_tokens(cfg, batch=2, n_pos=9)
    np.testing.assert_allclose(
        mj.forward(folded, tokens, cfg2), mj.forward(params, tokens, cfg), rtol=2e-4, atol=2e-4
    )
    if cfg.normalization != "none" and cfg.n_layers:
        # the pre-attention norm is now the identity and its weights live in W_Q
        np.testing.assert_array_equal(folded["blocks"]["ln1_w"], 1.0 - cfg.norm_weight_offset)
        assert not np.allclose(folded["blocks"]["W_Q"], params["blocks"]["W_Q"])


@pytest.mark.parametrize("name", ["attn2_ln_bias", "mlp_gelu", "attn1_nonorm"])
def test_fold_norms_matches_transformer_lens(name):
    pytest.importorskip("transformer_lens")
    from transformer_lens import HookedTransformer

    from mechjax.io.transformer_lens import to_transformer_lens

    cfg = SMALL_CONFIGS[name]
    params = random_model(cfg, seed=7)
    state_dict, tl_cfg = to_transformer_lens(params, cfg)
    model = HookedTransformer(tl_cfg)
    model.load_and_process_state_dict(
        state_dict,
        fold_ln=True,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    folded, cfg2 = circuits.fold_norms(params, cfg)
    b = folded["blocks"]
    pairs = {
        "W_Q": (model.W_Q, b["W_Q"]),
        "W_K": (model.W_K, b["W_K"]),
        "W_V": (model.W_V, b["W_V"]),
        "W_U": (model.W_U, folded["W_U"]),
    }
    if cfg2.use_attn_bias:
        pairs.update(
            b_Q=(model.b_Q, b["b_Q"]), b_K=(model.b_K, b["b_K"]), b_V=(model.b_V, b["b_V"])
        )
    if cfg2.use_unembed_bias:
        pairs["b_U"] = (model.b_U, folded["b_U"])
    if not cfg.attn_only:
        pairs.update(W_in=(model.W_in, b["W_in"]), b_in=(model.b_in, b["b_in"]))
    for key, (theirs, ours) in pairs.items():
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=key)


def test_fold_norms_untie_and_create_biases():
    cfg = SMALL_CONFIGS["gemma2_gqa"]  # tied embeddings, RMSNorm with (1 + w), post-norms
    params = random_model(cfg, seed=8)
    folded, cfg2 = circuits.fold_norms(params, cfg)
    assert cfg.tied_embeddings and not cfg2.tied_embeddings
    # RMSNorm: no centering, no bias; the final norm's (1 + w) multiplies the rows of W_E^T
    W_U = np.asarray(params["W_E"]).T * (1.0 + np.asarray(params["ln_final_w"]))[:, None]
    np.testing.assert_allclose(folded["W_U"], W_U, rtol=1e-6)
    # post-norms are not folded
    np.testing.assert_array_equal(folded["blocks"]["ln1_post_w"], params["blocks"]["ln1_post_w"])
    ln = SMALL_CONFIGS["attn3_nopos"]  # LayerNorm without biases in the config
    folded, ln2 = circuits.fold_norms(random_model(ln, seed=9), ln)
    assert ln2.use_attn_bias and ln2.use_unembed_bias and not ln.use_attn_bias
    # centering folded in: every reading column has zero mean over d_model
    np.testing.assert_allclose(np.asarray(folded["blocks"]["W_Q"]).mean(-2), 0.0, atol=1e-6)


# -- against TransformerLens --------------------------------------------------------------------------


@pytest.fixture(scope="module", params=["mha", "gqa"])
def tl_pair(request):
    pytest.importorskip("transformer_lens")
    from mechjax.io.transformer_lens import to_hooked_transformer

    kv = 2 if request.param == "gqa" else None
    cfg = mj.presets.attn_only(3, d_model=32, n_heads=4, d_vocab=41, n_ctx=16, n_kv_heads=kv)
    params = randomize(mj.init_params(jax.random.key(11), cfg), 12)
    return cfg, params, to_hooked_transformer(params, cfg)


def test_qk_ov_and_eigenvalues_match_transformer_lens(tl_pair):
    cfg, params, model = tl_pair
    np.testing.assert_allclose(
        circuits.qk_circuit(params, cfg).AB,
        model.QK.AB.detach().numpy(),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        circuits.ov_circuit(params, cfg).AB,
        model.OV.AB.detach().numpy(),
        rtol=1e-5,
        atol=1e-5,
    )
    ours = np.asarray(circuits.ov_circuit(params, cfg).eigenvalues)
    theirs = model.OV.eigenvalues.detach().numpy()
    for l in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            assert match_multisets(ours[l, h], theirs[l, h]) < 1e-4
    full = model.W_E @ model.OV @ model.W_U  # TL's FactoredMatrix
    lam = full.eigenvalues.detach().numpy()
    tl_copying = lam.sum(-1).real / np.abs(lam).sum(-1)
    np.testing.assert_allclose(
        circuit_eigen.ov_eigenvalue_copying(params, cfg), tl_copying, atol=2e-5
    )


@pytest.mark.parametrize("kind", ["Q", "K", "V"])
def test_composition_scores_match_transformer_lens(tl_pair, kind):
    cfg, params, model = tl_pair
    theirs = model.all_composition_scores(kind).detach().numpy()
    np.testing.assert_allclose(
        circuits.composition_scores(params, cfg, kind), theirs, rtol=1e-5, atol=1e-6
    )


def test_zero_layer_model():
    cfg = SMALL_CONFIGS["attn0"]
    params = random_model(cfg)
    assert circuits.composition_scores(params, cfg).shape == (0, 4, 0, 4)
    direct = circuits.direct_path(params, cfg)
    np.testing.assert_allclose(
        direct.AB,
        np.asarray(params["W_E"]) @ np.asarray(params["W_U"]),
        rtol=1e-5,
        atol=1e-6,
    )
