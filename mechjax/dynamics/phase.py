"""Detecting the induction-head phase change in a run's evaluations.

Olsson et al. 2022 ("In-context Learning and Induction Heads"): in models with two or
more layers the in-context-learning (ICL) score — loss at a late token minus loss at an
early token, negative when later tokens are predicted better — falls abruptly inside a
short window of training; more than 75% of the final ICL score forms there, induction
heads appear at the same time, and a one-layer model never makes the jump. Evaluations
are usually log-spaced in steps and noisy, so the window is looked for in ln(step).

The rule, exactly (defaults in brackets):

1. Use the evaluations with step > 0 and a finite ICL score; at least `min_evals` [6].
2. Smooth the ICL score as a function of x = ln(step) by local linear regression with
   Gaussian weights (`smooth_log_steps`): bandwidth `smooth` [0.1] in ln(step), widened
   at each point to the distance of its second-nearest neighbouring evaluation so that
   sparse stretches still average over three evaluations.
3. Rate of ICL formation on each interval between consecutive evaluations:
   `rate = -(icl_s[i+1] - icl_s[i]) / (x[i+1] - x[i])` (nats per e-fold of steps).
4. Around a peak (an interval whose rate is a positive local maximum), its window is the
   contiguous run of intervals whose rate stays at or above `window_frac` [0.2] of the
   peak's rate. A peak that is not the highest point of its own window belongs to a
   higher peak and is dropped. Of the remaining windows the one holding the largest ICL
   drop wins (a noise spike is steep but short; the phase change carries the ICL) —
   when best-induction scores are given, the largest drop among the windows in which an
   induction head forms (see 6), so an early-training transient does not mask a smaller
   induction bump. `start` and `end` are the first and last evaluation steps of the
   window; `steepest` is the geometric-mean step of the peak interval.
5. Measures: `drop = icl_s(start) - icl_s(end)`; `final = -icl_s(last)` (the final ICL,
   counted from 0 = no in-context learning); `fraction = drop / final` (Olsson's "share
   of the final ICL score that forms in the window"; early-training movements of the
   score, e.g. an untrained model's position effects washing out, do not count against
   it, and it can exceed 1); `concentration = fraction / (window width in ln(step) /
   span of all evaluations in ln(step))` (1 for a change spread evenly over log-time);
   `noise` = robust noise level of the raw ICL scores (`noise_level`: Gasser et al.
   1986 pseudo-residuals, independent of the smoothing).
6. A phase change is reported only when all of these hold, else `None`:
   - the peak rate is positive and `final > 0` (the run ends with in-context learning);
   - `drop >= min_drop` [0.1 nats] and `drop >= min_snr * noise` [3];
   - `fraction >= min_fraction` [0.5] (Olsson: over 75% forms in the window);
   - `concentration >= min_concentration` [2] (rejects a slow drift in log-time);
   - when best-induction scores are given (any finite), an induction head forms in the
     window: the first evaluation (step > 0) whose best induction score reaches
     `induction_threshold` [0.3] lies in `[start / e^lag, end * e^lag]`, `lag` =
     `induction_lag` [0.5] in ln(step) (rejects runs without induction heads, e.g.
     one-layer models whose ICL drifts, and ICL changes unrelated to induction heads).

`phase_change_candidate` returns the candidate window together with the list of failed
criteria (empty when accepted), which reports use to say why no phase change was found.

Limitation: without induction scores the rule sees only the ICL curve, and a sharp
early-training transient (an untrained model's position effects washing out in the
first tens of steps) or a random-walk-like wander can pass it. Pass the best induction
score whenever the model has attention layers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULTS = dict(
    smooth=0.1,
    window_frac=0.2,
    min_evals=6,
    min_drop=0.1,
    min_snr=3.0,
    min_fraction=0.5,
    min_concentration=2.0,
    induction_threshold=0.3,
    induction_lag=0.5,
)


@dataclasses.dataclass(frozen=True)
class PhaseChangeResult:
    """A detected phase-change window (steps are training steps).

    metric: the series the window was found on ("icl_score").
    start, steepest, end: window start, steepest point, window end.
    icl_before, icl_after: smoothed ICL score at `start` and at `end` (nats).
    fraction: ICL drop inside the window over the final ICL score (smoothed; Olsson's
        share of the final ICL that forms in the window).
    concentration: `fraction` divided by the window's share of the run's ln(step) span.
    peak_rate: steepest rate of ICL formation, `-d icl / d ln(step)` (nats per e-fold).
    complete: False when the window touches the first or last evaluation (the change may
        extend beyond what was evaluated).
    induction_before, induction_after: smoothed best induction score at start / end.
    induction_steepest: step of the steepest rise of the best induction score.
    """

    metric: str
    start: int
    steepest: int
    end: int
    icl_before: float
    icl_after: float
    fraction: float
    concentration: float
    peak_rate: float
    complete: bool
    induction_before: float | None = None
    induction_after: float | None = None
    induction_steepest: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def contains(self, step: float) -> bool:
        return self.start <= step <= self.end


def smooth_log_steps(
    steps: np.ndarray, values: np.ndarray, bandwidth: float = DEFAULTS["smooth"]
) -> np.ndarray:
    """Smooth `values [eval]` as a function of ln(step) (local linear, Gaussian weights).

    At each evaluation i the fit minimises `sum_j w_ij (values_j - a - b (x_j - x_i))^2`
    with `w_ij = exp(-(x_j - x_i)^2 / (2 h_i^2))`, `x = ln(steps)`, and returns `a`.
    `h_i = max(bandwidth, distance from x_i to its second-nearest other evaluation)`.
    `steps` must be positive and strictly increasing, with at least 3 entries.
    """
    x = np.log(np.asarray(steps, dtype=np.float64))
    y = np.asarray(values, dtype=np.float64)
    if len(x) < 3:
        raise ValueError(f"smoothing needs at least 3 evaluations, got {len(x)}")
    dx = x[None, :] - x[:, None]  # [i, j] = x_j - x_i
    dist = np.sort(np.abs(dx), axis=1)
    h = np.maximum(bandwidth, dist[:, 2])  # column 0 is the point itself
    w = np.exp(-0.5 * (dx / h[:, None]) ** 2)
    s0, s1, s2 = w.sum(1), (w * dx).sum(1), (w * dx**2).sum(1)
    t0, t1 = (w * y).sum(1), (w * dx * y).sum(1)
    return (s2 * t0 - s1 * t1) / (s0 * s2 - s1**2)


def detect_phase_change(
    steps: np.ndarray,
    icl: np.ndarray,
    induction: np.ndarray | None = None,
    **options,
) -> PhaseChangeResult | None:
    """The phase-change window of a run, or `None` when it has none (rule: module docstring).

    Args:
      steps: `[eval]` training steps, strictly increasing (step 0 is allowed and ignored).
      icl: `[eval]` ICL score per evaluation (nats, negative = in-context learning).
      induction: `[eval]` best induction score per evaluation, or None.
      options: override any of `DEFAULTS` (smooth, window_frac, min_evals, min_drop,
        min_snr, min_fraction, min_concentration, induction_threshold, induction_lag).
    """
    candidate, failed = phase_change_candidate(steps, icl, induction, **options)
    return candidate if not failed else None


def phase_change_candidate(
    steps: np.ndarray,
    icl: np.ndarray,
    induction: np.ndarray | None = None,
    **options,
) -> tuple[PhaseChangeResult | None, list[str]]:
    """The steepest-ICL window and the acceptance criteria it fails (empty: accepted).

    The candidate is `None` only when no window can be formed (too few evaluations, or
    the ICL score never falls).
    """
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown phase-change options {unknown}; known: {sorted(DEFAULTS)}")
    opt = {**DEFAULTS, **options}
    steps, icl, induction = _check_inputs(steps, icl, induction)

    keep = (steps > 0) & np.isfinite(icl)
    if keep.sum() < max(opt["min_evals"], 3):
        return None, [
            f"only {int(keep.sum())} evaluations with step > 0 and a finite ICL score "
            f"(need {max(opt['min_evals'], 3)})"
        ]
    s, y = steps[keep], icl[keep]
    x = np.log(s)
    smooth = smooth_log_steps(s, y, opt["smooth"])
    rate = -np.diff(smooth) / np.diff(x)  # [interval]
    if not rate.max() > 0:
        return None, ["the ICL score never decreases"]
    candidates = _candidate_windows(rate, smooth, opt["window_frac"])
    crossing = _first_crossing(steps, induction, opt["induction_threshold"])
    lag = np.exp(opt["induction_lag"])

    def induction_inside(lo: int, hi: int) -> bool:
        return crossing is not None and s[lo] / lag <= crossing <= s[hi + 1] * lag

    if induction is not None:  # the largest drop among windows where a head forms
        candidates.sort(key=lambda c: not induction_inside(c[1], c[2]))  # stable: keeps order
    peak, lo, hi = candidates[0]
    start, end = lo, hi + 1  # evaluation indices bounding the window

    drop = smooth[start] - smooth[end]
    final = -smooth[-1]
    fraction = drop / final if final > 0 else float("nan")
    width = (x[end] - x[start]) / (x[-1] - x[0])
    concentration = fraction / width

    failed = _icl_failures(drop, final, fraction, concentration, noise_level(x, y), opt)
    ind = _induction_summary(steps, induction, s[start], s[end], opt["smooth"])
    if induction is not None and crossing is None:
        failed.append(
            f"the best induction score never reaches {opt['induction_threshold']} (max "
            f"{np.nanmax(induction):.2f}): no induction head formed"
        )
    elif induction is not None and not induction_inside(lo, hi):
        failed.append(
            f"the best induction score first reaches {opt['induction_threshold']} at step "
            f"{crossing:,.0f}, outside the ICL window {s[start]:,.0f}-{s[end]:,.0f} "
            f"(widened by a factor {lag:.2f}): the ICL change is not the induction bump"
        )

    candidate = PhaseChangeResult(
        metric="icl_score",
        start=int(s[start]),
        steepest=int(round(float(np.sqrt(s[peak] * s[peak + 1])))),
        end=int(s[end]),
        icl_before=float(smooth[start]),
        icl_after=float(smooth[end]),
        fraction=float(fraction),
        concentration=float(concentration),
        peak_rate=float(rate[peak]),
        complete=bool(start > 0 and end < len(s) - 1),
        **(ind or {}),
    )
    return candidate, failed


def _icl_failures(drop, final, fraction, concentration, noise, opt) -> list[str]:
    """The ICL criteria a window fails (see `DEFAULTS`), as sentences."""
    failed = []
    if not final > 0:
        failed.append(
            f"the run ends without in-context learning (final smoothed ICL score "
            f"{-final:+.3f} nats, not negative)"
        )
    if drop < opt["min_drop"]:
        failed.append(f"ICL drop in the window {drop:.3f} < min_drop {opt['min_drop']}")
    if drop < opt["min_snr"] * noise:
        failed.append(f"ICL drop {drop:.3f} is under min_snr {opt['min_snr']} x noise {noise:.3f}")
    if final > 0 and not fraction >= opt["min_fraction"]:
        failed.append(f"only {fraction:.0%} of the final ICL score forms in the window")
    if final > 0 and not concentration >= opt["min_concentration"]:
        failed.append(
            f"the change is not concentrated (concentration {concentration:.2f} < "
            f"{opt['min_concentration']}): a slow drift, not a phase change"
        )
    return failed


def noise_level(x: np.ndarray, y: np.ndarray) -> float:
    """Robust standard deviation of the noise in `y [eval]` sampled at increasing `x`.

    Gasser, Sroka & Jennen-Steinmetz 1986 pseudo-residuals: each interior point minus the
    straight line through its two neighbours, `e_i = y_i - (a_i y_{i-1} + b_i y_{i+1})`,
    has variance `sigma^2 (1 + a_i^2 + b_i^2)` under white noise whatever the smooth
    trend (up to its curvature); normalise, then take 1.4826 x the median absolute value
    so that a few points on a steep transition do not inflate the estimate.
    """
    if len(x) < 3:
        return 0.0
    a = (x[2:] - x[1:-1]) / (x[2:] - x[:-2])  # weight of the left neighbour
    b = 1.0 - a
    e = (y[1:-1] - a * y[:-2] - b * y[2:]) / np.sqrt(1.0 + a**2 + b**2)
    return float(1.4826 * np.median(np.abs(e)))


def _check_inputs(steps, icl, induction):
    steps = np.asarray(steps, dtype=np.float64)
    icl = np.asarray(icl, dtype=np.float64)
    if steps.ndim != 1 or icl.shape != steps.shape:
        raise ValueError(
            f"steps and icl must be 1-D and of equal length [eval]; got {steps.shape} and "
            f"{icl.shape}"
        )
    if np.any(np.diff(steps) <= 0) or not np.isfinite(steps).all():
        raise ValueError("steps must be finite and strictly increasing (one per evaluation)")
    if induction is not None:
        induction = np.asarray(induction, dtype=np.float64)
        if induction.shape != steps.shape:
            raise ValueError(
                f"induction must be [eval] like steps {steps.shape}, got {induction.shape}; "
                "pass the best induction score per evaluation"
            )
        if not np.isfinite(induction).any():
            induction = None
    return steps, icl, induction


def _window(rate: np.ndarray, peak: int, frac: float) -> tuple[int, int]:
    """Contiguous intervals around `peak` with rate >= frac * rate[peak]: (first, last)."""
    floor = frac * rate[peak]
    lo = hi = peak
    while lo > 0 and rate[lo - 1] >= floor:
        lo -= 1
    while hi < len(rate) - 1 and rate[hi + 1] >= floor:
        hi += 1
    return lo, hi


def _candidate_windows(rate: np.ndarray, smooth: np.ndarray, frac: float) -> list:
    """`[(peak, first, last)]` interval indices of candidate windows, largest ICL drop first.

    Candidates are the positive local maxima of `rate` that are the highest point of their
    own window (a lower bump inside a higher peak's window is part of that peak)."""
    found = []
    for i in np.flatnonzero(rate > 0):
        if (i > 0 and rate[i - 1] > rate[i]) or (i < len(rate) - 1 and rate[i + 1] > rate[i]):
            continue  # not a local maximum
        lo, hi = _window(rate, i, frac)
        if rate[lo : hi + 1].max() > rate[i]:
            continue
        found.append((smooth[lo] - smooth[hi + 1], int(i), lo, hi))
    found.sort(key=lambda c: -c[0])
    return [c[1:] for c in found]


def _first_crossing(steps, induction, threshold) -> float | None:
    """First step > 0 whose best induction score is >= threshold (None: never)."""
    if induction is None:
        return None
    hits = np.flatnonzero((steps > 0) & (induction >= threshold))
    return float(steps[hits[0]]) if hits.size else None


def _induction_summary(steps, induction, start, end, bandwidth) -> dict | None:
    """Smoothed best induction score at start/end and the step of its steepest rise."""
    if induction is None:
        return None
    keep = (steps > 0) & np.isfinite(induction)
    if keep.sum() < 3:
        return None
    s = steps[keep]
    smooth = smooth_log_steps(s, induction[keep], bandwidth)
    x = np.log(s)
    i = int(np.argmax(np.diff(smooth) / np.diff(x)))
    return dict(
        induction_before=float(np.interp(np.log(start), x, smooth)),
        induction_after=float(np.interp(np.log(end), x, smooth)),
        induction_steepest=int(round(float(np.sqrt(s[i] * s[i + 1])))),
    )
