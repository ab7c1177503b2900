"""Per-token-loss PCA against an independent float64 eigendecomposition of the covariance,
and its invariances (centering, run order and grouping, sign convention, scaling)."""

from __future__ import annotations

import numpy as np
import pytest

from mechjax.dynamics.pca import per_token_loss_pca


def fake_runs(seed: int = 0, sizes=(7, 5, 9), n: int = 40) -> list[np.ndarray]:
    """Runs whose losses fall along a shared direction, with a run-specific pivot."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(2.0, 5.0, n)
    pivot = rng.normal(size=n)
    runs = []
    for i, size in enumerate(sizes):
        t = np.linspace(0.0, 1.0, size)[:, None]
        runs.append(
            base - 1.5 * t + (0.5 + i) * np.sin(3 * t) * pivot + 0.05 * rng.normal(size=(size, n))
        )
    return runs


def eig_reference(runs, k):
    """PCA by eigendecomposition of the covariance matrix, oriented by our convention."""
    stacked = np.concatenate(runs).astype(np.float64)
    mean = stacked.mean(axis=0)
    cov = (stacked - mean).T @ (stacked - mean) / (len(stacked) - 1)
    values, vectors = np.linalg.eigh(cov)  # ascending
    order = np.argsort(values)[::-1]
    values, vectors = values[order], vectors[:, order]
    comps = vectors[:, :k].T.copy()
    comps *= np.sign(comps.sum(axis=1, keepdims=True))  # loadings sum positive
    ratio = values[:k] / values.sum()
    return comps, values[:k], ratio, [(r - mean) @ comps.T for r in runs]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_matches_covariance_eigendecomposition(k):
    runs = fake_runs()
    result = per_token_loss_pca(runs, n_components=k)
    comps, variance, ratio, trajs = eig_reference(runs, k)
    np.testing.assert_allclose(result.components, comps, atol=1e-10)
    np.testing.assert_allclose(result.explained_variance, variance, rtol=1e-10)
    np.testing.assert_allclose(result.explained_variance_ratio, ratio, rtol=1e-10)
    assert len(result.trajectories) == len(runs)
    for got, want, run in zip(result.trajectories, trajs, runs):
        assert got.shape == (len(run), k)
        np.testing.assert_allclose(got, want, atol=1e-10)
    np.testing.assert_allclose(result.components @ result.components.T, np.eye(k), atol=1e-12)


def test_float32_input_is_computed_in_float64():
    runs = [r.astype(np.float32) for r in fake_runs(1)]
    result = per_token_loss_pca(runs)
    comps, *_ = eig_reference([r.astype(np.float64) for r in runs], 2)
    np.testing.assert_allclose(result.components, comps, atol=1e-10)
    assert result.trajectories[0].dtype == np.float64


def test_centring_makes_a_constant_shift_irrelevant():
    runs = fake_runs(2)
    shift = np.random.default_rng(3).normal(size=runs[0].shape[1]) * 10
    a = per_token_loss_pca(runs)
    b = per_token_loss_pca([r + shift for r in runs])
    np.testing.assert_allclose(b.components, a.components, atol=1e-9)
    for x, y in zip(a.trajectories, b.trajectories):
        np.testing.assert_allclose(x, y, atol=1e-9)
    np.testing.assert_allclose(b.mean, a.mean + shift, atol=1e-9)
    # the trajectories of all runs together are centered
    np.testing.assert_allclose(np.concatenate(a.trajectories).mean(0), 0, atol=1e-10)


def test_run_order_and_grouping_do_not_change_the_basis():
    runs = fake_runs(4)
    a = per_token_loss_pca(runs)
    b = per_token_loss_pca(runs[::-1])
    for x, y in zip(a.trajectories, b.trajectories[::-1]):
        np.testing.assert_allclose(x, y, atol=1e-10)
    merged = per_token_loss_pca([np.concatenate(runs)])
    np.testing.assert_allclose(merged.trajectories[0], np.concatenate(a.trajectories), atol=1e-10)


def test_sign_convention_is_deterministic():
    runs = fake_runs(5)
    a = per_token_loss_pca(runs, n_components=3)
    assert np.all(a.components.sum(axis=1) > 0)
    # negating the data flips every principal direction; the convention flips it back,
    # so the components stay and the coordinates change sign
    b = per_token_loss_pca([-r for r in runs], n_components=3)
    np.testing.assert_allclose(b.components, a.components, atol=1e-10)
    for x, y in zip(a.trajectories, b.trajectories):
        np.testing.assert_allclose(y, -x, atol=1e-10)


def test_sign_convention_falls_back_to_largest_loading():
    # rows differ only along (2, -1, -1), whose loadings sum to zero
    base = np.array([1.0, 1.0, 5.0])
    unit = np.array([2.0, -1.0, -1.0]) / 6**0.5
    losses = np.array([base + t * unit for t in (-1.0, 0.0, 0.5, 2.0)])
    result = per_token_loss_pca([losses], n_components=1)
    np.testing.assert_allclose(result.components[0], unit, atol=1e-12)
    flipped = per_token_loss_pca([losses[::-1]], n_components=1)
    np.testing.assert_allclose(flipped.components[0], unit, atol=1e-12)
    reordered = per_token_loss_pca([losses[:, [1, 0, 2]]], n_components=1)
    np.testing.assert_allclose(reordered.components[0], unit[[1, 0, 2]], atol=1e-12)
    assert reordered.components[0, 1] > 0


def test_scaling_scales_coordinates_not_ratios():
    runs = fake_runs(6)
    a = per_token_loss_pca(runs)
    b = per_token_loss_pca([3.0 * r for r in runs])
    np.testing.assert_allclose(b.explained_variance_ratio, a.explained_variance_ratio, rtol=1e-10)
    np.testing.assert_allclose(b.trajectories[1], 3.0 * a.trajectories[1], atol=1e-9)


def test_recovers_a_planted_direction_and_transform():
    rng = np.random.default_rng(7)
    direction = rng.normal(size=30)
    direction /= np.linalg.norm(direction)
    direction *= np.sign(direction.sum())
    t = np.linspace(-2, 2, 12)
    losses = 3.0 + t[:, None] * direction
    result = per_token_loss_pca([losses], n_components=1)
    np.testing.assert_allclose(result.components[0], direction, atol=1e-12)
    np.testing.assert_allclose(result.explained_variance_ratio, [1.0], atol=1e-12)
    np.testing.assert_allclose(result.trajectories[0][:, 0], t - t.mean(), atol=1e-12)
    np.testing.assert_allclose(result.transform(losses), result.trajectories[0], atol=1e-12)


def test_bad_input_names_the_problem():
    runs = fake_runs(8)
    with pytest.raises(ValueError, match="different numbers of examples"):
        per_token_loss_pca([runs[0], runs[1][:, :5]])
    with pytest.raises(ValueError, match="wrap a single run"):
        per_token_loss_pca(runs[0])
    with pytest.raises(ValueError, match="empty"):
        per_token_loss_pca([])
    bad = runs[0].copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"snapshots\[0\] contains NaN"):
        per_token_loss_pca([bad])
    with pytest.raises(ValueError, match="at most"):
        per_token_loss_pca([runs[0][:2]], n_components=2)
    with pytest.raises(ValueError, match="identical"):
        per_token_loss_pca([np.ones((4, 6))])
    with pytest.raises(ValueError, match=r"\[snapshot, example\]"):
        per_token_loss_pca([np.ones(5)])
    with pytest.raises(ValueError, match="transform expects"):
        per_token_loss_pca(runs).transform(np.ones((2, 3)))
