"""The local learning coefficient (LLC), estimated by localised SGLD, many chains in one
compiled call.

Lau et al. 2023 ("Quantifying degeneracy in singular models via the learning
coefficient"): around a parameter w* the tempered local posterior
`p(w) ∝ exp(-nβ L_n(w) - (γ/2) |w - w*|²)` is sampled by stochastic-gradient Langevin
dynamics, and

    λ̂(w*) = nβ (E_w[L_n(w)] − L_n(w*))

with the SGLD update (devinterp's, Welling & Teh 2011 without a schedule)

    Δw = −(ε/2) (nβ ∇L_batch(w) + γ (w − w*)) + N(0, ε)

where ε is the step size, nβ the inverse temperature (default `m / ln m` for batch size
m, devinterp's `default_nbeta`), γ the localisation and `L_batch` the mean loss of a
minibatch drawn at each step. A chain is one `lax.scan`; chains are `vmap`ped, and so
are the hyperparameters of a calibration grid (`estimate_settings`, `dynamics.calibration`) and the weight masks of a
refined LLC (`estimate_llc(..., mask=)`, `refined_llc`): one program for all of them.

`L_n(w*)` is read on the same minibatch as each draw (`paired=True`, the default): each
draw contributes `L_batch(w_t) − L_batch(w*)`, which has the same expectation as
devinterp's difference of two separate means but far less variance, and is exactly 0
when no weight may move. `paired=False` instead uses the mean of `n_init_batches` fixed
batches at w* (devinterp's way; one forward pass per step cheaper).

Diagnostics kept per chain: the loss trace, the paired reference losses, and a
MALA-style acceptance estimate of each SGLD move: the Metropolis-Hastings probability
of accepting it as a Langevin proposal for the potential `U = nβ L_batch + (γ/2)|w −
w*|²`, with both ends evaluated on the step's own minibatch (on consecutive minibatches,
the batch-to-batch change of `nβ L` swamps the test once nβ is large). `LLCResult.warnings` names the failure modes the
references describe: a negative estimate (ε too small for the chain to leave w*, or
w* not a local minimum), non-finite or exploding traces (ε too large or γ too small),
traces still drifting in the second half of the draws, low acceptance.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

LossFn = Callable[[Any, Any], jax.Array]  # (params, batch) -> scalar mean loss

# warnings' thresholds (documented in LLCResult.warnings)
LOW_ACCEPTANCE = 0.5  # mean MALA acceptance below this: steps too large for the landscape
DRIFT_FRACTION = 0.5  # 2nd-half trend over this share of the mean excess loss: not settled
EXPLODE_FACTOR = 20.0  # a draw's excess loss above this many times the median excess


def default_nbeta(batch_size: int) -> float:
    """`m / ln m`, devinterp's default inverse temperature for batch size m (≥ 2)."""
    if batch_size < 2:
        raise ValueError(f"the default nβ = m / ln m needs batch_size >= 2, got {batch_size}")
    return batch_size / math.log(batch_size)


@dataclasses.dataclass(frozen=True)
class SGLDConfig:
    """How the local posterior is sampled.

    step_size: ε. nbeta: the inverse temperature nβ (None: `m / ln m`). localization: γ.
    n_chains independent chains of n_burnin + n_draws steps each, minibatches of
    batch_size examples (drawn with replacement). paired: read L(w*) on each draw's
    batch (see the module docstring); n_init_batches: batches for L(w*) otherwise.
    mala: estimate each move's Metropolis-Hastings acceptance (one more gradient per
    step, on the same minibatch; off: acceptance is NaN).
    """

    step_size: float = 1e-3
    nbeta: float | None = None
    localization: float = 100.0
    n_chains: int = 4
    n_burnin: int = 0
    n_draws: int = 200
    batch_size: int = 32
    paired: bool = True
    n_init_batches: int = 16
    mala: bool = True

    def __post_init__(self):
        problems = []
        for name in ("n_chains", "n_draws", "batch_size", "n_init_batches"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.n_burnin < 0:
            problems.append(f"n_burnin must be >= 0 (got {self.n_burnin})")
        if not self.step_size > 0:
            problems.append(f"step_size must be positive (got {self.step_size})")
        if self.nbeta is not None and not self.nbeta > 0:
            problems.append(f"nbeta must be positive or None for m / ln m (got {self.nbeta})")
        if not self.localization >= 0:
            problems.append(f"localization must be >= 0 (got {self.localization})")
        if self.nbeta is None and self.batch_size < 2:
            problems.append("the default nbeta = m / ln m needs batch_size >= 2")
        if problems:
            raise ValueError("SGLDConfig: " + "; ".join(problems))

    @property
    def resolved_nbeta(self) -> float:
        return default_nbeta(self.batch_size) if self.nbeta is None else float(self.nbeta)

    @property
    def n_steps(self) -> int:
        return self.n_burnin + self.n_draws


DEFAULT_SGLD = SGLDConfig()


@dataclasses.dataclass
class LLCResult:
    """One LLC estimate.

    llc_mean, llc_std, llc_se: over chains (se = std / sqrt(chains)); llc_per_chain
    `[chain]`; loss_trace `[chain, step]` (every step, burn-in included: the minibatch
    loss at the chain's current weights); reference_trace `[chain, step]` the same
    batches' loss at w* (paired), or init_loss repeated; init_loss: the mean reference
    loss; acceptance `[chain, step]` the MALA acceptance estimate of each move;
    warnings: one line per failure mode found (see `diagnose`)."""

    llc_mean: float
    llc_std: float
    llc_se: float
    llc_per_chain: np.ndarray
    loss_trace: np.ndarray
    reference_trace: np.ndarray
    init_loss: float
    acceptance: np.ndarray
    config: SGLDConfig
    warnings: list[str]

    def summary(self) -> str:
        text = (
            f"LLC {self.llc_mean:.3f} ± {self.llc_se:.3f} (se over {self.config.n_chains} "
            f"chains; ε={self.config.step_size:g}, nβ={self.config.resolved_nbeta:.3g}, "
            f"γ={self.config.localization:g}, {self.config.n_draws} draws); mean acceptance "
            f"{mean_acceptance(self):.2f}"
        )
        return "\n".join([text, *(f"warning: {w}" for w in self.warnings)])


# -- the sampler (traceable) -------------------------------------------------------------------------


def sgld_update(w, drift, noise, step_size, mask):
    """One SGLD move: `w − (ε/2) drift + sqrt(ε) noise`, the noise only on the moving
    weights (`mask`, 1 where a weight moves). `drift` is `∇U = mask · (nβ ∇L_batch(w) +
    γ (w − w*))`, the gradient of the potential (`sgld_chain`'s `potential`)."""
    return jax.tree.map(
        lambda x, g, z, m: x - 0.5 * step_size * g + jnp.sqrt(step_size) * z * m,
        w, drift, noise, mask,
    )  # fmt: skip


def _tree_dot(a, b) -> jax.Array:
    return sum(jnp.vdot(x, y).real for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _draw_batch(data, key, batch_size: int):
    n = len(jax.tree.leaves(data)[0])
    index = jax.random.randint(key, (batch_size,), 0, n)
    return jax.tree.map(lambda x: x[index], data)


def sgld_chain(
    loss_fn: LossFn,
    params,
    data,
    key: jax.Array,
    hyper: dict,
    mask,
    *,
    n_steps: int,
    batch_size: int,
    paired: bool,
    mala: bool = True,
):
    """One localised SGLD chain from w* = `params` (traceable; vmap it over keys,
    hyperparameters or masks). `hyper`: `{"step_size", "nbeta", "localization"}`
    (scalars, possibly traced); `mask`: a pytree like params of 0/1 (or None: every
    weight moves). Returns `{"loss": [step], "reference": [step], "acceptance":
    [step]}` (acceptance NaN without `mala`)."""
    eps, nbeta, gamma = hyper["step_size"], hyper["nbeta"], hyper["localization"]
    star = params
    mask = jax.tree.map(jnp.ones_like, params) if mask is None else mask

    def potential(w, batch):
        """U(w) = nβ L_batch(w) + (γ/2) |w − w*|² (over the moving weights), its
        gradient, and L_batch(w)."""

        def u(w):
            loss = loss_fn(w, batch)
            offset = jax.tree.map(lambda a, b, m: (a - b) * m, w, star, mask)
            return nbeta * loss + 0.5 * gamma * _tree_dot(offset, offset), loss

        (value, loss), grad = jax.value_and_grad(u, has_aux=True)(w)
        return value, jax.tree.map(lambda g, m: g * m, grad, mask), loss

    def log_proposal(to, frm, grad_frm):
        """log q(to | frm) of the Langevin proposal, up to a constant."""
        diff = jax.tree.map(lambda t, f, g: t - f + 0.5 * eps * g, to, frm, grad_frm)
        return -_tree_dot(diff, diff) / (2 * eps)

    def step(w, step_key):
        batch_key, noise_key = jax.random.split(step_key)
        batch = _draw_batch(data, batch_key, batch_size)
        value, grad, loss = potential(w, batch)
        reference = loss_fn(star, batch) if paired else jnp.zeros_like(loss)
        leaves, treedef = jax.tree.flatten(w)
        noise_keys = jax.random.split(noise_key, len(leaves))
        noise = jax.tree.unflatten(
            treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(noise_keys, leaves)]
        )
        w_next = sgld_update(w, grad, noise, eps, mask)
        if mala:  # the Metropolis-Hastings test of this move, on this step's minibatch
            value_next, grad_next, _ = potential(w_next, batch)
            log_ratio = (
                value
                - value_next
                + log_proposal(w, w_next, grad_next)
                - log_proposal(w_next, w, grad)
            )
            acceptance = jnp.exp(jnp.minimum(log_ratio, 0.0))
        else:
            acceptance = jnp.full_like(loss, jnp.nan)
        return w_next, (loss, reference, acceptance)

    keys = jax.random.split(key, n_steps)
    _, (loss, reference, acceptance) = jax.lax.scan(step, params, keys)
    return {"loss": loss, "reference": reference, "acceptance": acceptance}


def _init_loss(loss_fn, params, data, key, config: SGLDConfig) -> jax.Array:
    keys = jax.random.split(key, config.n_init_batches)
    losses = jax.lax.map(lambda k: loss_fn(params, _draw_batch(data, k, config.batch_size)), keys)
    return losses.mean()


# -- estimates ---------------------------------------------------------------------------------------


def _run(loss_fn, params, data, key, config: SGLDConfig, hypers: dict, masks, mask_axis: bool):
    """Chains for every setting: hypers' leaves `[setting]`, masks with a leading
    `[mask]` axis when `mask_axis`; returns traces `[setting, mask?, chain, ...]` and
    the fixed-batch init loss."""

    def chains(hyper, mask, keys):
        run_one = lambda k: sgld_chain(  # noqa: E731
            loss_fn, params, data, k, hyper, mask, n_steps=config.n_steps,
            batch_size=config.batch_size, paired=config.paired, mala=config.mala,
        )  # fmt: skip
        return jax.vmap(run_one)(keys)

    chain_keys = jax.random.split(key, config.n_chains + 1)
    init_key, chain_keys = chain_keys[0], chain_keys[1:]
    per_setting = (
        jax.vmap(lambda h, m: chains(h, m, chain_keys), in_axes=(None, 0))
        if mask_axis
        else (lambda h, m: chains(h, m, chain_keys))
    )
    traces = jax.vmap(per_setting, in_axes=(0, None))(hypers, masks)
    init = _init_loss(loss_fn, params, data, init_key, config)
    return traces, init


def estimate_llc(
    loss_fn: LossFn,
    params,
    data,
    key: jax.Array,
    config: SGLDConfig = DEFAULT_SGLD,
    *,
    mask=None,
) -> LLCResult:
    """The LLC at `params` (w*) of the loss `loss_fn(params, batch) -> scalar mean`
    over `data` (a pytree of arrays with a leading example axis, e.g. tokens `[n, pos]`),
    reproducible from `key`. `mask`: a pytree like params of 0/1 arrays (broadcastable
    to each leaf) selecting the weights SGLD may move: the refined LLC of that subset
    (Wang et al. 2024); None: all of them."""
    _check_data(data, config)
    hypers = _hypers([config.step_size], [config.resolved_nbeta], [config.localization])
    mask = _broadcast_mask(mask, params)
    traces, init = _compiled(loss_fn, config, False)(params, data, key, hypers, mask)
    return _result(jax.tree.map(lambda x: np.asarray(x)[0], traces), float(init), config)


def estimate_llcs(
    loss_fn: LossFn,
    params_stack,
    data,
    key: jax.Array,
    config: SGLDConfig = DEFAULT_SGLD,
    *,
    mask=None,
) -> list[LLCResult]:
    """`estimate_llc` at several parameters at once (`params_stack`: leaves with a
    leading `[point]` axis, e.g. a run's checkpoints), vmapped into one compiled call;
    every point gets the same chain keys and minibatches."""
    _check_data(data, config)
    n_points = len(jax.tree.leaves(params_stack)[0])
    hypers = _hypers([config.step_size], [config.resolved_nbeta], [config.localization])
    mask = _broadcast_mask(mask, _index(params_stack, 0))
    run = _compiled_over_points(loss_fn, config)
    traces, init = run(params_stack, data, key, hypers, mask)
    traces = jax.tree.map(lambda x: np.asarray(x)[:, 0], traces)  # [point, chain, ...]
    init = np.asarray(init)
    return [_result(_index(traces, i), float(init[i]), config) for i in range(n_points)]


@functools.lru_cache(maxsize=16)
def _compiled_over_points(loss_fn, config: SGLDConfig):
    def run(params, data, key, hypers, masks):
        return _run(loss_fn, params, data, key, config, hypers, masks, False)

    return jax.jit(jax.vmap(run, in_axes=(0, None, None, None, None)))


def estimate_settings(
    loss_fn: LossFn,
    params,
    data,
    key: jax.Array,
    settings,
    config: SGLDConfig = DEFAULT_SGLD,
    *,
    mask=None,
) -> list[LLCResult]:
    """`estimate_llc` for every `(step_size, nbeta, localization)` of `settings` (the
    rest of the sampler as `config`), vmapped into one compiled call with the same
    chain keys, so the estimates differ by their hyperparameters only."""
    _check_data(data, config)
    grid = np.asarray(settings, np.float64).reshape(-1, 3)
    hypers = _hypers(grid[:, 0], grid[:, 1], grid[:, 2])
    traces, init = _compiled(loss_fn, config, False)(
        params, data, key, hypers, _broadcast_mask(mask, params)
    )
    traces = jax.tree.map(np.asarray, traces)
    results = []
    for g, (eps, nbeta, gamma) in enumerate(grid):
        setting = dataclasses.replace(
            config, step_size=float(eps), nbeta=float(nbeta), localization=float(gamma)
        )
        results.append(_result(_index(traces, g), float(init), setting))
    return results


def refined_llc(
    loss_fn: LossFn,
    params,
    data,
    key: jax.Array,
    masks: dict[str, Any],
    config: SGLDConfig = DEFAULT_SGLD,
) -> dict[str, LLCResult]:
    """The refined LLC of several weight subsets at once: `masks` maps a name (e.g.
    "L0H3") to a mask (as `estimate_llc`'s); every subset's chains run in one compiled
    call (masks vmapped). The same chain keys are used for every subset."""
    _check_data(data, config)
    names = list(masks)
    if not names:
        raise ValueError("refined_llc: no masks given")
    stacked = jax.tree.map(
        lambda *ms: jnp.stack(ms), *[_broadcast_mask(masks[n], params) for n in names]
    )
    hypers = _hypers([config.step_size], [config.resolved_nbeta], [config.localization])
    traces, init = _compiled(loss_fn, config, True)(params, data, key, hypers, stacked)
    traces = jax.tree.map(lambda x: np.asarray(x)[0], traces)  # [mask, chain, ...]
    return {name: _result(_index(traces, i), float(init), config) for i, name in enumerate(names)}


@functools.lru_cache(maxsize=16)
def _compiled(loss_fn, config: SGLDConfig, mask_axis: bool):
    """One jitted sampler per (loss, config, mask axis): repeated estimates (checkpoints
    of a run, a calibration after an estimate) reuse the compiled program."""

    def run(params, data, key, hypers, masks):
        return _run(loss_fn, params, data, key, config, hypers, masks, mask_axis)

    return jax.jit(run)


def _index(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def _hypers(step_sizes, nbetas, localizations) -> dict:
    return {
        "step_size": jnp.asarray(step_sizes, jnp.float32),
        "nbeta": jnp.asarray(nbetas, jnp.float32),
        "localization": jnp.asarray(localizations, jnp.float32),
    }


def _broadcast_mask(mask, params):
    if mask is None:
        return None
    try:
        return jax.tree.map(
            lambda m, p: jnp.broadcast_to(jnp.asarray(m, p.dtype), p.shape), mask, params
        )
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"mask must be a pytree like the params of 0/1 arrays broadcastable to each "
            f"leaf ({err})"
        ) from None


def _check_data(data, config: SGLDConfig) -> None:
    leaves = jax.tree.leaves(data)
    if not leaves:
        raise ValueError("data is empty: give a pytree of arrays with a leading example axis")
    n = len(leaves[0])
    if any(len(x) != n for x in leaves):
        raise ValueError("every leaf of data needs the same number of examples (first axis)")
    if n < 1:
        raise ValueError("data has no examples")


def _result(traces: dict, init_loss: float, config: SGLDConfig) -> LLCResult:
    loss = np.asarray(traces["loss"], np.float64)  # [chain, step]
    reference = np.asarray(traces["reference"], np.float64)
    if not config.paired:
        reference = np.full_like(loss, init_loss)
    draws = slice(config.n_burnin, None)
    nbeta = config.resolved_nbeta
    per_chain = nbeta * (loss[:, draws] - reference[:, draws]).mean(axis=1)
    std = float(per_chain.std(ddof=1)) if len(per_chain) > 1 else 0.0
    acceptance = np.asarray(traces["acceptance"], np.float64)
    result = LLCResult(
        llc_mean=float(per_chain.mean()),
        llc_std=std,
        llc_se=std / math.sqrt(len(per_chain)),
        llc_per_chain=per_chain,
        loss_trace=loss,
        reference_trace=reference,
        init_loss=float(reference[:, draws].mean()),
        acceptance=acceptance,
        config=config,
        warnings=[],
    )
    result.warnings = diagnose(result)
    return result


def mean_acceptance(result: LLCResult) -> float:
    """The mean MALA acceptance over chains and steps; NaN when it was not estimated
    (`mala=False`) or every move produced NaN."""
    finite = result.acceptance[np.isfinite(result.acceptance)]
    return float(finite.mean()) if finite.size else float("nan")


def trace_health(excess: np.ndarray) -> dict[str, np.ndarray]:
    """Per chain, from the draws' excess losses `[chain, draw]` (loss − reference):
    `finite`, `exploded` (a draw above EXPLODE_FACTOR × the median excess, once that
    is positive); and over all chains, `drift`: the mean change from the second to the
    last quarter of the draws, over the mean excess, counted (else 0) only when it
    exceeds 3 standard errors of the chains' changes; the chains are still moving when
    its magnitude exceeds DRIFT_FRACTION."""
    finite = np.isfinite(excess).all(axis=1)
    safe = np.where(np.isfinite(excess), excess, np.nan)
    with warnings.catch_warnings():  # all-NaN chains (exploded) give empty means
        warnings.simplefilter("ignore", RuntimeWarning)
        return _health(safe, finite)


def _health(safe, finite) -> dict:
    median = np.nanmedian(safe, axis=1)
    exploded = ~finite | (
        (median > 0) & (np.nanmax(safe, axis=1) > EXPLODE_FACTOR * np.maximum(median, 1e-12))
    )
    n = safe.shape[1]
    q = max(n // 4, 1)
    change = np.nanmean(safe[:, n - q :], axis=1) - np.nanmean(safe[:, n // 4 : n // 4 + q], axis=1)
    scale = max(abs(float(np.nanmean(safe))), 1e-12)
    drift = float(np.nanmean(change)) / scale
    # a chain's quarters are noisy: the change must also stand out from its spread
    # between chains (3 standard errors) to count
    chains = int(np.isfinite(change).sum())
    spread = float(np.nanstd(change, ddof=1)) / np.sqrt(chains) / scale if chains > 1 else 0.0
    drift = drift if abs(drift) > 3 * spread else 0.0
    return {"finite": finite, "exploded": exploded, "drift": drift}


def diagnose(result: LLCResult) -> list[str]:
    """The failure modes of an estimate, one line each (empty: none found)."""
    draws = slice(result.config.n_burnin, None)
    excess = result.loss_trace[:, draws] - result.reference_trace[:, draws]
    health = trace_health(excess)
    found = []
    if not health["finite"].all():
        found.append(
            f"{int((~health['finite']).sum())} chain(s) produced NaN/inf losses: the step "
            "size is too large (lower step_size) or the localization too weak (raise it)"
        )
    elif health["exploded"].any():
        found.append(
            f"{int(health['exploded'].sum())} chain(s) have exploding loss traces: lower "
            "step_size or raise localization"
        )
    if np.isfinite(result.llc_mean) and result.llc_mean < 0:
        found.append(
            f"negative estimate ({result.llc_mean:.3g}): the chains found lower loss than "
            "w*, so w* is not a local minimum (train longer) or the step size is too "
            "small for the chains to leave it"
        )
    if health["finite"].all() and abs(health["drift"]) > DRIFT_FRACTION:
        found.append(
            f"the loss traces are still drifting in the second half of the draws (by "
            f"{health['drift']:+.0%} of the mean excess loss): take more draws or burn-in, "
            "or raise localization"
        )
    if mean_acceptance(result) < LOW_ACCEPTANCE:
        found.append(
            f"mean MALA acceptance {mean_acceptance(result):.2f} < {LOW_ACCEPTANCE}: "
            "the step size is large for this landscape; lower step_size"
        )
    return found
