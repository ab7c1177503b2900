"""Phase-change detection on synthetic evaluation curves.

A sigmoid in ln(step) is the idealised Olsson et al. phase change: for
`icl = -A sigmoid(k (ln step - ln s0))` the ICL score crosses 10% / 90% of its final
value at `s0 * 9**(-1/k)` and `s0 * 9**(1/k)`. The detector must find a window covering
that range (up to one evaluation interval of slack, as evaluations are discrete), not
much wider, and must report nothing for flat, slowly drifting, noisy or induction-free runs.
"""

from __future__ import annotations

import numpy as np
import pytest

from mechjax.dynamics.phase import (
    DEFAULTS,
    detect_phase_change,
    noise_level,
    phase_change_candidate,
    smooth_log_steps,
)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def eval_steps(spacing: str, last: int = 5000) -> np.ndarray:
    if spacing == "log":
        return np.unique(np.round(np.geomspace(1, last, 60)).astype(int))
    return np.arange(0, last + 1, 50)  # linear, with a step-0 evaluation


def sigmoid_run(spacing, k, noise, s0=1800.0, drop=2.0, seed=0, last=5000):
    steps = eval_steps(spacing, last)
    x = np.log(np.maximum(steps, 1))
    rng = np.random.default_rng(seed)
    icl = -0.05 - drop * sigmoid(k * (x - np.log(s0))) + noise * rng.standard_normal(len(steps))
    induction = 0.03 + 0.7 * sigmoid(k * (x - np.log(s0))) + 0.01 * rng.standard_normal(len(steps))
    return steps, icl, induction


@pytest.mark.parametrize("spacing", ["log", "linear"])
@pytest.mark.parametrize("k,noise", [(4, 0.0), (8, 0.05), (20, 0.2), (8, 0.3)])
def test_sigmoid_in_log_step_is_found(spacing, k, noise):
    s0 = 1800.0
    steps, icl, induction = sigmoid_run(spacing, k, noise, s0=s0, seed=k)
    phase = detect_phase_change(steps, icl, induction)
    assert phase is not None
    positive = steps[steps > 0]
    gap = np.exp(np.max(np.diff(np.log(positive[positive > 100]))))  # one interval, as a factor
    p10, p90 = s0 * 9 ** (-1 / k), s0 * 9 ** (1 / k)
    p01, p99 = s0 * 99 ** (-1 / k), s0 * 99 ** (1 / k)
    assert phase.start <= p10 * gap and phase.end >= p90 / gap, (phase, p10, p90)
    # not much wider: the 1%-99% range widened by two smoothing bandwidths and one interval
    slack = gap * np.exp(2 * max(DEFAULTS["smooth"], np.log(gap)))
    assert phase.start >= p01 / slack and phase.end <= p99 * slack, (phase, p01, p99)
    assert s0 / gap**2 <= phase.steepest <= s0 * gap**2
    assert phase.start <= phase.steepest <= phase.end
    assert phase.fraction >= 0.75 and phase.complete
    assert phase.icl_before > phase.icl_after
    assert phase.metric == "icl_score"
    assert phase.induction_before < 0.3 < phase.induction_after
    assert s0 / gap**2 <= phase.induction_steepest <= s0 * gap**2


def test_window_statistics_on_a_clean_sigmoid():
    """On a densely sampled noise-free sigmoid with little smoothing the window is where
    sigmoid'(z) >= 0.2 * peak, i.e. sigmoid in [0.053, 0.947]: ~89% of the change."""
    steps = np.unique(np.round(np.geomspace(10, 1e5, 2000)).astype(int))
    k, s0, drop = 3.0, 3000.0, 1.0
    icl = -drop * sigmoid(k * (np.log(steps) - np.log(s0)))
    phase = detect_phase_change(steps, icl, smooth=1e-3)
    z = np.log((1 + np.sqrt(1 - 4 * 0.05)) / (1 - np.sqrt(1 - 4 * 0.05)))  # s(1-s) = 0.05
    np.testing.assert_allclose(
        np.log([phase.start, phase.end]), np.log(s0) + np.array([-z, z]) / k, atol=0.01
    )
    np.testing.assert_allclose(phase.steepest, s0, rtol=0.01)
    np.testing.assert_allclose(phase.peak_rate, drop * k / 4, rtol=1e-3)
    final = sigmoid(k * np.log(steps[-1] / s0))  # final ICL score / -drop
    inside = sigmoid(z) - sigmoid(-z)
    np.testing.assert_allclose(phase.fraction, inside / final, rtol=0.01)


def test_flat_noise_gives_none():
    steps = eval_steps("linear")
    rng = np.random.default_rng(1)
    icl = -0.1 + 0.08 * rng.standard_normal(len(steps))
    assert detect_phase_change(steps, icl) is None
    assert detect_phase_change(steps, icl, np.full(len(steps), 0.03)) is None


@pytest.mark.parametrize("noise", [0.0, 0.02, 0.05])
def test_slow_drift_in_log_time_gives_none(noise):
    """A one-layer model: ICL drifts steadily with ln(step), by 0.4 nats over the run."""
    steps = eval_steps("log")
    x = np.log(steps)
    rng = np.random.default_rng(2)
    icl = -0.4 * x / x[-1] + noise * rng.standard_normal(len(steps))
    candidate, failed = phase_change_candidate(steps, icl)
    assert failed, candidate
    assert detect_phase_change(steps, icl) is None


def test_no_induction_head_gives_none_with_reason():
    steps, icl, _ = sigmoid_run("linear", 8, 0.05)
    chance = 0.04 + 0.01 * np.random.default_rng(3).standard_normal(len(steps))
    assert detect_phase_change(steps, icl) is not None  # the ICL curve alone would pass
    assert detect_phase_change(steps, icl, chance) is None
    _, failed = phase_change_candidate(steps, icl, chance)
    assert any("induction" in reason for reason in failed)
    # induction given only as NaN (e.g. a 0-layer model) is the same as not given
    assert detect_phase_change(steps, icl, np.full(len(steps), np.nan)) is not None


def test_induction_threshold_applies_from_the_window_start():
    steps, icl, induction = sigmoid_run("linear", 8, 0.0)
    early_only = np.where(steps < 1000, 0.9, 0.05)  # a head that peaked long before, then died
    assert detect_phase_change(steps, icl, early_only) is None
    assert detect_phase_change(steps, icl, induction, induction_threshold=0.8) is None
    assert detect_phase_change(steps, icl, induction, induction_threshold=0.6) is not None


def test_induction_picks_the_bump_over_an_early_transient():
    """Early training moves the ICL score too (here by 0.8 nats around step 10); the
    induction bump (0.5 nats at step ~1800) is the window where the head forms."""
    steps = eval_steps("log")
    x = np.log(steps)
    early = -0.8 * sigmoid(6 * (x - np.log(10)))
    bump = sigmoid(8 * (x - np.log(1800)))
    icl = 0.8 + early - 0.5 * bump
    induction = 0.03 + 0.7 * bump
    phase = detect_phase_change(steps, icl, induction)
    assert phase is not None and phase.start < 1800 < phase.end and phase.start > 300
    assert detect_phase_change(steps, icl).contains(10)  # ICL alone: the larger drop
    # the head forms long after the only ICL change: not an induction bump
    late_head = 0.03 + 0.7 * sigmoid(8 * (x - np.log(4500)))
    steps2, icl2, _ = sigmoid_run("log", 8, 0.0, s0=200.0)
    _, failed = phase_change_candidate(steps2, icl2, late_head)
    assert any("outside the ICL window" in reason for reason in failed)


def test_small_drop_and_rising_icl_give_none():
    steps, icl, induction = sigmoid_run("log", 8, 0.0, drop=0.05)
    _, failed = phase_change_candidate(steps, icl, induction)
    assert any("min_drop" in reason for reason in failed)
    steps, icl, induction = sigmoid_run("log", 8, 0.0)
    assert detect_phase_change(steps, -icl - 2.1, induction) is None  # ICL getting worse


def test_change_at_the_end_of_training_is_marked_incomplete():
    steps, icl, induction = sigmoid_run("log", 6, 0.0, s0=4000.0, last=4200)
    phase = detect_phase_change(steps, icl, induction, min_fraction=0.3)
    assert phase is not None and not phase.complete and phase.end == steps[-1]


def test_step_zero_and_nan_evaluations_are_ignored():
    steps, icl, induction = sigmoid_run("linear", 8, 0.0)
    a = detect_phase_change(steps, icl, induction)
    holes = icl.copy()
    holes[0] = 50.0  # step 0 (not on a log axis): must not matter
    holes[7] = np.nan
    b = detect_phase_change(steps, holes, induction)
    assert a is not None and b is not None
    assert abs(np.log(b.start / a.start)) < 0.05 and abs(np.log(b.end / a.end)) < 0.05


def test_smoother_matches_weighted_least_squares_reference():
    rng = np.random.default_rng(4)
    steps = np.unique(rng.integers(1, 10_000, 40))
    values = rng.normal(size=len(steps))
    got = smooth_log_steps(steps, values, bandwidth=0.2)
    x = np.log(steps)
    for i in range(len(x)):
        dx = x - x[i]
        h = max(0.2, np.sort(np.abs(dx))[2])
        weights = np.exp(-0.5 * (dx / h) ** 2)
        slope, intercept = np.polyfit(dx, values, 1, w=np.sqrt(weights))  # polyfit squares w
        np.testing.assert_allclose(got[i], intercept, rtol=1e-9, atol=1e-12)
    # local linear regression reproduces straight lines in ln(step) exactly
    np.testing.assert_allclose(smooth_log_steps(steps, 3 - 2 * x), 3 - 2 * x, atol=1e-9)


def test_noise_level_recovers_the_noise_std_despite_a_trend():
    rng = np.random.default_rng(5)
    x = np.sort(rng.uniform(0, 9, 4000))
    trend = -2.0 * sigmoid(3 * (x - 5)) + 0.1 * x
    for sigma in (0.02, 0.3):
        got = noise_level(x, trend + sigma * rng.standard_normal(len(x)))
        np.testing.assert_allclose(got, sigma, rtol=0.06)
    assert noise_level(x, 1.0 - 0.5 * x) < 1e-12  # a straight line has no noise


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="strictly increasing"):
        detect_phase_change([1, 3, 2, 4, 5, 6], np.zeros(6))
    with pytest.raises(ValueError, match="equal length"):
        detect_phase_change([1, 2, 3], np.zeros(4))
    with pytest.raises(ValueError, match="induction must be"):
        detect_phase_change([1, 2, 3], np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="unknown phase-change options"):
        detect_phase_change([1, 2, 3], np.zeros(3), window=0.3)
    candidate, failed = phase_change_candidate([0, 1, 2, 3], [0.0, -1.0, -2.0, -3.0])
    assert candidate is None and "evaluations" in failed[0]
    assert set(DEFAULTS) >= {"smooth", "window_frac", "induction_threshold", "min_drop"}
