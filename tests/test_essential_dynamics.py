"""Essential dynamics: PCA of outputs across checkpoints, turning points, LLC critical
points and proposed stage boundaries, on trajectories whose corners are known."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import mechjax as mj
from mechjax.dynamics.essential import (
    essential_dynamics,
    llc_critical_points,
    model_outputs,
    propose_stages,
    turning_angles,
)

STEPS = np.unique(np.geomspace(1, 10_000, 36).round())


def _corner_path(corners=(100, 1000), n_features=50, seed=0):
    """Outputs that move along one direction, then (after each corner) along another,
    linearly in ln(step), embedded in n_features dimensions with a little noise."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(n_features, 3)))[0].T  # 3 orthonormal directions
    x = np.log(STEPS)
    edges = [0.0, *np.log(corners), x[-1]]
    coords = np.zeros((len(x), 3))
    for leg in range(3):
        coords[:, leg] = np.clip(x - edges[leg], 0, edges[leg + 1] - edges[leg])
    return coords @ basis + 1e-3 * rng.normal(size=(len(x), n_features))


def _near(step, target, factor=1.5):
    return target / factor <= step <= target * factor


def test_turning_points_are_the_corners():
    ed = essential_dynamics(STEPS, _corner_path())
    assert len(ed.turning_points) == 2, ed.turning_points
    assert _near(ed.turning_points[0], 100) and _near(ed.turning_points[1], 1000)
    assert ed.explained_variance_ratio[:3].sum() > 0.99  # three legs, three components
    assert ed.trajectory.shape == (len(STEPS), 3)


def test_a_straight_path_has_no_turning_point():
    x = np.log(STEPS)[:, None]
    ed = essential_dynamics(STEPS, x * np.linspace(1, 2, 20)[None] + 0.001 * np.sin(7 * x))
    assert ed.turning_points == []


def test_stages_combine_the_trajectory_and_the_llc():
    llc = 5 * np.exp(-(((np.log(STEPS) - np.log(1000)) / 1.2) ** 2))  # rises, peaks at 1000
    ed = essential_dynamics(STEPS, _corner_path(), llc=(STEPS, llc))
    assert len(ed.llc_critical_points) == 1 and _near(ed.llc_critical_points[0], 1000)
    evidence = {b["evidence"] for b in ed.stage_boundaries}
    assert evidence == {"trajectory", "both"}
    both = [b["step"] for b in ed.stage_boundaries if b["evidence"] == "both"]
    assert _near(both[0], 1000)
    # an LLC turn far from any corner stands alone
    assert propose_stages([100], [5000], 0.35) == [
        {"step": 100, "evidence": "trajectory"},
        {"step": 5000, "evidence": "llc"},
    ]


def test_angles_and_refusals():
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    np.testing.assert_allclose(turning_angles(square)[1:3], [90, 90])
    assert np.isnan(turning_angles(square)[0])
    assert llc_critical_points([1, 2, 3], [1, 2, 1]) == []  # too few to smooth
    with pytest.raises(ValueError, match="one row per step"):
        essential_dynamics(STEPS, np.zeros((3, 4)))
    with pytest.raises(ValueError, match="positive, increasing"):
        essential_dynamics([1, 1, 2, 3], np.zeros((4, 4)))


def test_model_outputs_are_log_probabilities_per_checkpoint():
    cfg = mj.presets.attn_only(1, d_model=16, n_heads=2, d_vocab=11, n_ctx=12)
    params = [mj.init_params(jax.random.key(s), cfg) for s in range(3)]
    tokens = np.asarray(jax.random.randint(jax.random.key(9), (2, 12), 0, 11))
    out = model_outputs(params, cfg, tokens, positions=4)
    assert out.shape == (3, 2 * 4 * 11)
    probs = np.exp(out.reshape(3, 2, 4, 11)).sum(-1)
    np.testing.assert_allclose(probs, 1.0, rtol=1e-5)
    logits = np.asarray(mj.forward(params[1], tokens, cfg))[:, [0, 4, 7, 11]]
    expected = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(out[1].reshape(2, 4, 11), expected, atol=1e-5)
