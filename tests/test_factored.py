"""FactoredMatrix against dense numpy float64: every operation, property-tested over
random shapes, ranks and leading axes (the algebra in float64 via `jax.enable_x64`, tight
tolerances), plus float32 spot checks and hand-made rank-deficient / complex cases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

from mechjax.circuits.factored import FactoredMatrix

SETTINGS = settings(max_examples=20, deadline=None)


@st.composite
def factors(draw, square=False):
    """(A [*lead, m, r], B [*lead, r, n]) float64, possibly rank-deficient (A = A1 A2 with a
    smaller inner dimension), with leading axes that may need broadcasting."""
    # few distinct sizes: every new shape costs jax a compile of each operation
    lead = draw(st.sampled_from([(), (2,), (2, 3)]))
    m = draw(st.sampled_from([1, 3, 6]))
    n = m if square else draw(st.sampled_from([1, 4, 6]))
    r = draw(st.sampled_from([1, 2, 5]))
    deficient = draw(st.integers(0, r)) if draw(st.booleans()) else None
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    if deficient is not None:
        A = rng.normal(size=lead + (m, deficient)) @ rng.normal(size=lead + (deficient, r))
    else:
        A = rng.normal(size=lead + (m, r))
    b_lead = lead[:-1] + (1,) if lead and draw(st.booleans()) else lead  # broadcast B
    B = rng.normal(size=b_lead + (r, n))
    return A, B


def match_multisets(got, want):
    """Max distance between two equal-size multisets of complex numbers, optimally paired."""
    cost = np.abs(np.asarray(got)[:, None] - np.asarray(want)[None, :])
    rows, cols = linear_sum_assignment(cost)
    return cost[rows, cols].max(initial=0.0)


def scale(A, B):
    return max(1.0, float(np.linalg.norm(A) * np.linalg.norm(B)))


# -- float64 properties ----------------------------------------------------------------------


@SETTINGS
@given(factors())
def test_dense_views(ab):
    A, B = ab
    with jax.enable_x64(True):
        fm = FactoredMatrix(jnp.asarray(A), jnp.asarray(B))
        dense = A @ B
        assert fm.shape == dense.shape
        assert fm.ndim == dense.ndim
        np.testing.assert_allclose(fm.AB, dense, atol=1e-12 * scale(A, B))
        np.testing.assert_allclose(fm.T.AB, np.swapaxes(dense, -1, -2), atol=1e-12)
        np.testing.assert_allclose(
            fm.norm(), np.linalg.norm(dense, axis=(-2, -1)), rtol=1e-9, atol=1e-7 * scale(A, B)
        )
        if dense.ndim > 2:
            np.testing.assert_allclose(fm[0].AB, dense[0], atol=1e-12 * scale(A, B))


@SETTINGS
@given(factors(), st.sampled_from([1, 3]), st.integers(0, 2**31 - 1))
def test_products(ab, p, seed):
    A, B = ab
    rng = np.random.default_rng(seed)
    m, n = A.shape[-2], B.shape[-1]
    with jax.enable_x64(True):
        fm = FactoredMatrix(jnp.asarray(A), jnp.asarray(B))
        dense = A @ B
        tol = 1e-11 * scale(A, B)
        X = rng.normal(size=(n, p))
        out = fm @ X
        assert isinstance(out, FactoredMatrix) and out.inner_dim == fm.inner_dim
        np.testing.assert_allclose(out.AB, dense @ X, atol=tol * np.abs(X).sum())
        Y = rng.normal(size=(p, m))
        out = Y @ fm  # numpy on the left defers to __rmatmul__
        assert isinstance(out, FactoredMatrix)
        np.testing.assert_allclose(out.AB, Y @ dense, atol=tol * np.abs(Y).sum())
        out = jnp.asarray(Y) @ fm
        np.testing.assert_allclose(out.AB, Y @ dense, atol=tol * np.abs(Y).sum())
        v, w = rng.normal(size=n), rng.normal(size=m)
        np.testing.assert_allclose(fm @ v, dense @ v, atol=tol * np.abs(v).sum())
        np.testing.assert_allclose(w @ fm, w @ dense, atol=tol * np.abs(w).sum())
        # factored @ factored stays factored through the smaller inner dimension
        r2 = int(rng.choice([2, 5]))
        C, D = rng.normal(size=(n, r2)), rng.normal(size=(r2, p))
        out = fm @ FactoredMatrix(jnp.asarray(C), jnp.asarray(D))
        assert out.inner_dim == min(fm.inner_dim, r2)
        np.testing.assert_allclose(out.AB, dense @ C @ D, atol=tol * scale(C, D) * np.sqrt(n))


@SETTINGS
@given(factors(square=True))
def test_eigenvalues(ab):
    A, B = ab
    with jax.enable_x64(True):
        eig = np.asarray(FactoredMatrix(jnp.asarray(A), jnp.asarray(B)).eigenvalues)
    dense = np.linalg.eigvals(A @ B)
    m, r = A.shape[-2], A.shape[-1]
    assert eig.shape == np.broadcast_shapes(A.shape[:-2], B.shape[:-2]) + (r,)
    eig, dense = eig.reshape(-1, r), dense.reshape(-1, m)
    tol = 1e-8 * scale(A, B)
    for got, want in zip(eig, dense):
        # A@B has the r eigenvalues of B@A plus m - r zeros (or B@A has r - m extra zeros)
        if r <= m:
            got = np.concatenate([got, np.zeros(m - r)])
        else:
            want = np.concatenate([want, np.zeros(r - m)])
        assert match_multisets(got, want) < tol


@SETTINGS
@given(factors())
def test_svd_and_singular_values(ab):
    A, B = ab
    with jax.enable_x64(True):
        fm = FactoredMatrix(jnp.asarray(A), jnp.asarray(B))
        U, S, Vh = (np.asarray(x) for x in fm.svd())
        S2 = np.asarray(fm.S)
    dense = A @ B
    m, r, n = A.shape[-2], A.shape[-1], B.shape[-1]
    k = min(m, r, n)
    lead = dense.shape[:-2]
    assert U.shape == lead + (m, k) and S.shape == lead + (k,) and Vh.shape == lead + (k, n)
    tol = 1e-10 * scale(A, B)
    np.testing.assert_allclose((U * S[..., None, :]) @ Vh, dense, atol=tol)
    want = np.linalg.svd(dense, compute_uv=False)[..., :k]
    np.testing.assert_allclose(S, want, atol=tol)
    np.testing.assert_allclose(S2, want, atol=tol)
    assert (np.diff(S, axis=-1) <= tol).all()  # descending
    eye = np.eye(k)
    np.testing.assert_allclose(
        np.swapaxes(U, -1, -2) @ U, np.broadcast_to(eye, lead + (k, k)), atol=1e-10
    )
    np.testing.assert_allclose(
        Vh @ np.swapaxes(Vh, -1, -2), np.broadcast_to(eye, lead + (k, k)), atol=1e-10
    )


@SETTINGS
@given(factors(), st.integers(0, 2**31 - 1))
def test_collapses_keep_product_norms(ab, seed):
    A, B = ab
    rng = np.random.default_rng(seed)
    m, n = A.shape[-2], B.shape[-1]
    with jax.enable_x64(True):
        fm = FactoredMatrix(jnp.asarray(A), jnp.asarray(B))
        left, right = np.asarray(fm.collapse_l()), np.asarray(fm.collapse_r())
    dense = A @ B
    X, Y = rng.normal(size=(n, 3)), rng.normal(size=(4, m))
    tol = 1e-10 * scale(A, B) * 10
    np.testing.assert_allclose(
        np.linalg.norm(left @ X, axis=(-2, -1)), np.linalg.norm(dense @ X, axis=(-2, -1)), atol=tol
    )
    np.testing.assert_allclose(
        np.linalg.norm(Y @ right, axis=(-2, -1)), np.linalg.norm(Y @ dense, axis=(-2, -1)), atol=tol
    )
    assert left.shape[-2] == min(m, A.shape[-1]) and right.shape[-1] == min(n, B.shape[-2])


# -- hand-made cases, float32 -----------------------------------------------------------------


def test_rank_deficient_and_complex_eigenvalues_float32():
    # A@B [4, 4] of rank 2: a rotation by 90 degrees (eigenvalues +-i) scaled by 2 in the
    # plane of e0, e1, padded by zeros; factored with r = 3 (one redundant direction)
    rot = 2 * np.array([[0.0, -1.0], [1.0, 0.0]])
    A = np.zeros((4, 3), np.float32)
    A[:2, :2] = np.eye(2)
    B = np.zeros((3, 4), np.float32)
    B[:2, :2] = rot
    fm = FactoredMatrix(jnp.asarray(A), jnp.asarray(B))
    eig = np.asarray(fm.eigenvalues)
    assert eig.dtype == np.complex64
    assert match_multisets(eig, [2j, -2j, 0]) < 1e-6
    np.testing.assert_allclose(fm.S, [2, 2, 0], atol=1e-6)
    np.testing.assert_allclose(fm.norm(), np.sqrt(8), rtol=1e-6)
    # r > m: B@A [5, 5] carries 2 extra zero eigenvalues
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(3, 5)), rng.normal(size=(5, 3))
    eig = np.asarray(
        FactoredMatrix(jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32)).eigenvalues
    )
    want = np.concatenate([np.linalg.eigvals(A @ B), [0, 0]])
    assert match_multisets(eig, want) < 1e-4 * scale(A, B)


def test_float32_against_float64():
    rng = np.random.default_rng(1)
    A, B = rng.normal(size=(2, 3, 30, 4)), rng.normal(size=(2, 3, 4, 30))
    fm = FactoredMatrix(jnp.asarray(A, jnp.float32), jnp.asarray(B, jnp.float32))
    dense = A @ B
    np.testing.assert_allclose(fm.norm(), np.linalg.norm(dense, axis=(-2, -1)), rtol=1e-5)
    np.testing.assert_allclose(fm.S, np.linalg.svd(dense, compute_uv=False)[..., :4], rtol=1e-5)
    eig = np.asarray(fm.eigenvalues).reshape(-1, 4)
    want = np.linalg.eigvals(dense).reshape(-1, 30)
    for got, ref in zip(eig, want):
        assert match_multisets(np.concatenate([got, np.zeros(26)]), ref) < 1e-4 * np.abs(ref).max()


def test_pytree_jit_and_vmap():
    rng = np.random.default_rng(2)
    fm = FactoredMatrix(
        jnp.asarray(rng.normal(size=(3, 5, 2))), jnp.asarray(rng.normal(size=(3, 2, 5)))
    )
    dense = np.asarray(fm.AB)
    np.testing.assert_allclose(
        jax.jit(lambda f: f.norm())(fm), np.linalg.norm(dense, axis=(1, 2)), rtol=1e-5
    )
    per = jax.vmap(lambda f: f.S)(fm)
    np.testing.assert_allclose(per, np.linalg.svd(dense, compute_uv=False)[:, :2], rtol=1e-5)
    doubled = jax.tree_util.tree_map(lambda x: 2 * x, fm)
    assert isinstance(doubled, FactoredMatrix)
    np.testing.assert_allclose(doubled.AB, 4 * dense, rtol=1e-5)


def test_bad_factors():
    with pytest.raises(ValueError, match="inner dimensions"):
        FactoredMatrix(jnp.ones((3, 2)), jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="at least 2-D"):
        FactoredMatrix(jnp.ones(3), jnp.ones((3, 3)))
    with pytest.raises(ValueError, match="broadcast"):
        FactoredMatrix(jnp.ones((2, 3, 2)), jnp.ones((4, 2, 3)))
    with pytest.raises(ValueError, match="square"):
        _ = FactoredMatrix(jnp.ones((3, 2)), jnp.ones((2, 4))).eigenvalues
    with pytest.raises(ValueError, match="leading axes"):
        FactoredMatrix(jnp.ones((3, 2)), jnp.ones((2, 4)))[0]
