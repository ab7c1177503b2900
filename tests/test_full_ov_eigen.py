"""Full-circuit eigenvalues through the embedding's Gram matrix (`full_ov_eigenvalues`,
`full_qk_eigenvalues`) against dense numpy float64 eig of the vocab x vocab circuits,
and against the FactoredMatrix route they replace (tied and untied embeddings, embedding
scale, multi-head / grouped-query / multi-query attention, vocab smaller than d_head,
half-precision weights). TransformerLens parity of `ov_eigenvalue_copying` is in
test_circuits.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SMALL_CONFIGS, random_model
from scipy.optimize import linear_sum_assignment

import mechjax as mj
from mechjax.circuits import eigen as circuit_eigen
from mechjax.circuits import weights as circuits

CASES = {
    # tied, scaled by sqrt(d_model), GQA (2 kv heads for 4 heads), 3 layers
    "tied_scaled_gqa": SMALL_CONFIGS["gemma2_gqa"],
    # untied, unscaled, multi-head
    "untied_mha": SMALL_CONFIGS["attn2_ln_bias"],
    # untied, scaled, GQA
    "untied_scaled_gqa": mj.presets.attn_only(
        2, d_model=24, n_heads=4, d_vocab=37, n_ctx=16, n_kv_heads=2, scale_embeddings=True
    ),
    # tied, unscaled, multi-query
    "tied_mqa": mj.presets.attn_only(
        1, d_model=24, n_heads=4, d_vocab=37, n_ctx=16, n_kv_heads=1, tied_embeddings=True
    ),
    # vocab (5) < d_head (6): B A has d_head - vocab extra zero eigenvalues
    "tiny_vocab": mj.presets.attn_only(
        1, d_model=24, n_heads=4, d_vocab=5, n_ctx=16, tied_embeddings=True
    ),
    # d_model >= 512: the symmetric Gram is computed in halves at the default split
    "wide_tied": mj.presets.attn_only(
        1, d_model=520, n_heads=2, d_head=8, d_vocab=300, n_ctx=8, tied_embeddings=True
    ),
}


def dense_full_circuits(params, cfg):
    """Per-head vocab x vocab full OV and QK circuits in float64, by explicit loops:
    `[layer][head] -> (W_E W_V W_O W_U, W_E W_Q W_K^T W_E^T)` with the scaled embedding."""
    p = jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), params)
    b = p["blocks"]
    W_E = p["W_E"] * cfg.embed_scale
    W_U = p["W_U"] if "W_U" in p else p["W_E"].T
    G = cfg.group_size
    return [
        [
            (
                W_E @ b["W_V"][l, h // G] @ b["W_O"][l, h] @ W_U,
                W_E @ b["W_Q"][l, h] @ b["W_K"][l, h // G].T @ W_E.T,
            )
            for h in range(cfg.n_heads)
        ]
        for l in range(cfg.n_layers)
    ]


def multiset_error(got, want) -> float:
    """Largest distance between paired elements of two equal-sized complex multisets,
    paired to minimise it (robust where sorting by real part would swap conjugates)."""
    cost = np.abs(np.asarray(got)[:, None] - np.asarray(want)[None, :])
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].max())


def nonzero_part(dense_eigenvalues: np.ndarray, d_head: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a vocab x vocab circuit's eigenvalues into the d_head of largest modulus and
    the rest (zero up to rounding: the circuit has rank <= d_head). With vocab < d_head,
    pad with the d_head - vocab zeros that B A [d_head, d_head] carries in addition."""
    order = np.argsort(-np.abs(dense_eigenvalues))
    kept, rest = dense_eigenvalues[order[:d_head]], dense_eigenvalues[order[d_head:]]
    return np.concatenate([kept, np.zeros(d_head - len(kept))]), rest


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    cfg = CASES[request.param]
    params = random_model(cfg, seed=sorted(CASES).index(request.param))
    return request.param, cfg, params, dense_full_circuits(params, cfg)


@pytest.mark.parametrize("kind", ["ov", "qk"])
def test_eigenvalues_match_dense_numpy(case, kind):
    name, cfg, params, dense = case
    fn = {"ov": circuit_eigen.full_ov_eigenvalues, "qk": circuit_eigen.full_qk_eigenvalues}[kind]
    got = np.asarray(fn(params, cfg))
    assert got.shape == (cfg.n_layers, cfg.n_heads, cfg.d_head)
    assert np.iscomplexobj(got)
    for l in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            circuit = dense[l][h][0 if kind == "ov" else 1]
            want, rest = nonzero_part(np.linalg.eigvals(circuit), cfg.d_head)
            scale = np.abs(want).max()
            # the vocab - d_head eigenvalues left out are zeros of the dense circuit
            assert rest.size == 0 or np.abs(rest).max() < 1e-9 * scale, (name, l, h)
            err = multiset_error(got[l, h], want)
            assert err < 1e-5 * scale, (name, kind, l, h, err, scale)


def test_copying_scores_match_dense_and_factored_route(case):
    name, cfg, params, dense = case

    def copying(m):
        lam = np.linalg.eigvals(m)
        return lam.sum().real / np.abs(lam).sum()

    ov = np.asarray(circuit_eigen.ov_eigenvalue_copying(params, cfg))
    qk = np.asarray(circuit_eigen.qk_eigenvalue_copying(params, cfg))
    ref_ov = np.array([[copying(dense[l][h][0]) for h in range(cfg.n_heads)]
                       for l in range(cfg.n_layers)])  # fmt: skip
    ref_qk = np.array([[copying(dense[l][h][1]) for h in range(cfg.n_heads)]
                       for l in range(cfg.n_layers)])  # fmt: skip
    np.testing.assert_allclose(ov, ref_ov, atol=2e-5, err_msg=name)
    np.testing.assert_allclose(qk, ref_qk, atol=2e-5, err_msg=name)
    # the FactoredMatrix route (eig of B A from the vocab-sized factors): the same numbers
    factored_ov = circuit_eigen.eigenvalue_copying(circuits.full_ov_circuit(params, cfg))
    factored_qk = circuit_eigen.eigenvalue_copying(circuits.full_qk_circuit(params, cfg))
    np.testing.assert_allclose(ov, factored_ov, atol=2e-5, err_msg=name)
    np.testing.assert_allclose(qk, factored_qk, atol=2e-5, err_msg=name)


def test_eigenvalues_equal_factored_route():
    cfg = CASES["tied_scaled_gqa"]
    params = random_model(cfg, seed=11)
    gram = np.asarray(circuit_eigen.full_ov_eigenvalues(params, cfg))
    factored = np.asarray(circuits.full_ov_circuit(params, cfg).eigenvalues)
    scale = np.abs(factored).max()
    for l in range(cfg.n_layers):
        for h in range(cfg.n_heads):
            assert multiset_error(gram[l, h], factored[l, h]) < 2e-5 * scale


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("vocab", [37, 48, 5])  # remainder chunk; whole chunks only; one short
def test_gram_chunks_and_halves_match_numpy(tied, vocab):
    """`vocab_gram` with a small chunk (the vocabulary loop and its remainder) and a small split
    (the symmetric halving down several levels) against numpy float64."""
    rng = np.random.default_rng(vocab)
    d_model = 23  # odd: unequal halves
    W_E = rng.standard_normal((vocab, d_model)).astype(np.float32)
    W_U = None if tied else rng.standard_normal((d_model, vocab)).astype(np.float32)
    want = (W_E.T if tied else W_U).astype(np.float64) @ W_E.astype(np.float64)
    got = circuit_eigen.vocab_gram(
        jnp.asarray(W_E), None if tied else jnp.asarray(W_U), chunk=8, split=4
    )
    assert got.shape == (d_model, d_model) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    if tied:
        np.testing.assert_array_equal(got, np.asarray(got).T)
    # the layout tiles the upper triangle exactly once
    cover = np.zeros((d_model, d_model), int)
    for r0, r1, c0, c1 in circuit_eigen.upper_gram_layout(0, d_model, 4):
        cover[r0:r1, c0:c1] += 1
    np.testing.assert_array_equal(np.triu(cover), np.triu(np.ones_like(cover)))


def test_half_precision_weights_are_upcast():
    cfg = CASES["untied_scaled_gqa"].replace(dtype="bfloat16")
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.bfloat16), random_model(cfg))
    got = np.asarray(circuit_eigen.full_ov_eigenvalues(params, cfg))
    assert got.dtype == np.complex64
    as_f32 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), params)
    want = np.asarray(circuit_eigen.full_ov_eigenvalues(as_f32, cfg.replace(dtype="float32")))
    np.testing.assert_array_equal(got, want)  # the same float32 computation
    np.testing.assert_allclose(
        circuit_eigen.qk_eigenvalue_copying(params, cfg),
        circuit_eigen.eigenvalue_copying(circuits.full_qk_circuit(as_f32, cfg)),
        atol=2e-5,
    )


def test_inside_jit_and_zero_layers():
    cfg = CASES["tied_mqa"]
    params = random_model(cfg, seed=4)
    jitted = jax.jit(lambda p: circuit_eigen.full_ov_eigenvalues(p, cfg))(params)
    np.testing.assert_array_equal(jitted, circuit_eigen.full_ov_eigenvalues(params, cfg))
    empty = SMALL_CONFIGS["attn0"]
    zero = random_model(empty)
    for fn in (circuit_eigen.full_ov_eigenvalues, circuit_eigen.full_qk_eigenvalues):
        assert fn(zero, empty).shape == (0, empty.n_heads, empty.d_head)
    assert circuit_eigen.ov_eigenvalue_copying(zero, empty).shape == (0, empty.n_heads)


def test_mismatched_params_raise():
    cfg = CASES["untied_mha"]
    params = random_model(cfg)
    wrong = dict(params, W_U=params["W_U"][:, :-1])
    with pytest.raises(ValueError, match=r"full_ov_eigenvalues: .*W_U has shape"):
        circuit_eigen.full_ov_eigenvalues(wrong, cfg)
    missing = dict(params, blocks={k: v for k, v in params["blocks"].items() if k != "W_K"})
    with pytest.raises(ValueError, match=r"full_qk_eigenvalues: .*missing blocks.W_K"):
        circuit_eigen.qk_eigenvalue_copying(missing, cfg)
    with pytest.raises(ValueError, match="W_E has shape"):
        circuit_eigen.full_ov_eigenvalues(params, cfg.replace(d_vocab=40))


def test_moved_names_still_importable_from_circuits():
    """The eigenvalue functions live in `mechjax.circuits.eigen`; user code that reaches
    them through `mj.circuits` or `mj.circuit_eigen` gets the very same functions."""
    import mechjax as mj

    for name in (
        "full_ov_eigenvalues",
        "full_qk_eigenvalues",
        "ov_eigenvalue_copying",
        "qk_eigenvalue_copying",
        "eigenvalue_copying",
    ):
        assert getattr(mj.circuits, name) is getattr(mj.circuit_eigen, name), name
