"""Calibrating the LLC sampler as a sweep: an (ε, nβ, γ) grid evaluated in one compiled
call (`dynamics.llc.estimate_settings`), each setting judged stable or not, and a rule
that picks one (`choose_setting`). `views.training.plot_calibration` draws it.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from .llc import (
    DEFAULT_SGLD,
    DRIFT_FRACTION,
    LOW_ACCEPTANCE,
    LLCResult,
    LossFn,
    SGLDConfig,
    estimate_settings,
    mean_acceptance,
    trace_health,
)

PLATEAU_TOLERANCE = 0.2  # neighbouring step sizes whose estimates differ by less: one plateau


@dataclasses.dataclass
class Calibration:
    """An (ε, nβ, γ) grid evaluated in one call. Arrays are `[step_size, nbeta,
    localization]`: llc_mean, llc_se, acceptance (mean), stable (finite, not exploding,
    not drifting, estimate > 0, acceptance ≥ LOW_ACCEPTANCE). `chosen`: the setting
    the rule picks (`choose_setting`), or None when no setting is stable; `results`
    every setting's LLCResult keyed by `(step_size, nbeta, localization)`."""

    step_sizes: np.ndarray
    nbetas: np.ndarray
    localizations: np.ndarray
    llc_mean: np.ndarray
    llc_se: np.ndarray
    acceptance: np.ndarray
    stable: np.ndarray
    chosen: tuple[float, float, float] | None
    results: dict

    def table(self) -> str:
        rows = ["| ε | nβ | γ | LLC | se | acceptance | stable |", "|---|---|---|---|---|---|---|"]
        for i, eps in enumerate(self.step_sizes):
            for j, nbeta in enumerate(self.nbetas):
                for k, gamma in enumerate(self.localizations):
                    mark = " (chosen)" if self.chosen == (eps, nbeta, gamma) else ""
                    rows.append(
                        f"| {eps:g} | {nbeta:.3g} | {gamma:g} | {self.llc_mean[i, j, k]:.3f} | "
                        f"{self.llc_se[i, j, k]:.3f} | {self.acceptance[i, j, k]:.2f} | "
                        f"{'yes' if self.stable[i, j, k] else 'no'}{mark} |"
                    )
        return "\n".join(rows)


def calibrate(
    loss_fn: LossFn,
    params,
    data,
    key: jax.Array,
    step_sizes,
    nbetas=None,
    localizations=None,
    config: SGLDConfig = DEFAULT_SGLD,
    *,
    mask=None,
) -> Calibration:
    """Evaluate every (ε, nβ, γ) of the grid (nβ and γ default to `config`'s) with
    `config`'s chains and draws, all in one compiled call, and pick a setting by
    `choose_setting`. The same chain keys serve every setting, so settings differ by
    their hyperparameters only."""
    eps = np.asarray(sorted(float(e) for e in step_sizes), np.float64)
    nbetas = np.asarray([config.resolved_nbeta] if nbetas is None else nbetas, np.float64)
    gammas = np.asarray([config.localization] if localizations is None else localizations)
    if not (eps > 0).all() or not (nbetas > 0).all() or not (gammas >= 0).all():
        raise ValueError("calibrate: step sizes and nbetas must be positive, localizations >= 0")
    grid = np.stack(np.meshgrid(eps, nbetas, gammas, indexing="ij"), -1).reshape(-1, 3)
    shape = (len(eps), len(nbetas), len(gammas))
    results, means, ses, accept, stable = {}, [], [], [], []
    for (e, b, c), result in zip(grid, estimate_settings(
        loss_fn, params, data, key, grid, config, mask=mask
    )):  # fmt: skip
        results[(float(e), float(b), float(c))] = result
        means.append(result.llc_mean)
        ses.append(result.llc_se)
        accept.append(mean_acceptance(result))
        stable.append(is_stable(result))
    llc_mean, stable = np.reshape(means, shape), np.reshape(stable, shape)
    chosen = choose_setting(eps, nbetas, gammas, llc_mean, stable)
    return Calibration(
        eps, nbetas, gammas, llc_mean, np.reshape(ses, shape), np.reshape(accept, shape),
        stable, chosen, results,
    )  # fmt: skip


def is_stable(result: LLCResult) -> bool:
    """Finite, not exploding, not drifting, a positive estimate and acceptance at least
    LOW_ACCEPTANCE: a setting whose chains sampled the local posterior."""
    draws = slice(result.config.n_burnin, None)
    health = trace_health(result.loss_trace[:, draws] - result.reference_trace[:, draws])
    acceptance = mean_acceptance(result)
    return bool(
        health["finite"].all()
        and not health["exploded"].any()
        and abs(health["drift"]) <= DRIFT_FRACTION
        and result.llc_mean > 0
        and not acceptance < LOW_ACCEPTANCE
    )


def choose_setting(step_sizes, nbetas, localizations, llc_mean, stable):
    """The rule: for each (nβ, γ), walk the step sizes upwards and split the stable ones
    into plateaus (runs of consecutive stable ε whose estimates differ by less than
    PLATEAU_TOLERANCE, relatively); take the longest plateau over all (nβ, γ) (ties: the
    one with the larger ε, which mixes faster) and, within it, its middle step size —
    away from both the too-small end (chains stuck near w*) and the too-large one
    (traces exploding). Returns `(ε, nβ, γ)` or None."""
    best, best_key = None, None
    for j, nbeta in enumerate(nbetas):
        for k, gamma in enumerate(localizations):
            run: list[int] = []
            runs = []
            for i in range(len(step_sizes)):
                if not stable[i, j, k]:
                    runs.append(run)
                    run = []
                    continue
                if run:
                    prev, now = llc_mean[run[-1], j, k], llc_mean[i, j, k]
                    if abs(now - prev) > PLATEAU_TOLERANCE * max(abs(prev), abs(now)):
                        runs.append(run)
                        run = []
                run.append(i)
            runs.append(run)
            for r in runs:
                if not r:
                    continue
                key = (len(r), step_sizes[r[-1]])
                if best_key is None or key > best_key:
                    best_key = key
                    best = (float(step_sizes[r[len(r) // 2]]), float(nbeta), float(gamma))
    return best
