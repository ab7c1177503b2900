"""Integrated gradients (Sundararajan, Taly & Yan 2017) over the token embeddings.

    IG = (x - x') * integral_0^1 d f(x' + a (x - x')) / d x da

with `x` the embeddings the model uses (the `embed` site), `x'` a baseline (zero by
default) and `f` a metric of the logits. Completeness: the attributions sum to
`f(x) - f(x')` up to the error of the quadrature (trapezoid or Riemann sums). Every
gradient evaluation is a run with the embeddings edited, all of them vmapped in
cache-sized chunks by the sweep engine.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..model.checks import check_mask
from ..model.config import ModelConfig
from ..model.edits import patch
from ..model.transformer import run
from . import sweep
from .metrics import readout, resolve_metric

QUADRATURES = ("trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def quadrature(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Points `alpha` in [0, 1] and weights for `integral_0^1 g(alpha) d alpha`."""
    k = np.arange(steps, dtype=np.float64)
    if method == "trapezoid":
        alphas = np.arange(steps + 1) / steps
        weights = np.full(steps + 1, 1.0 / steps)
        weights[[0, -1]] /= 2
        return alphas, weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[method]
    return (k + offset) / steps, np.full(steps, 1.0 / steps)


@dataclasses.dataclass(frozen=True)
class IGResult:
    """attributions [batch, pos, d_model]; per_token [batch, pos] (summed over
    d_model); f_input, f_baseline: the metric at the input and at the baseline;
    completeness_gap = sum(attributions) - (f_input - f_baseline)."""

    attributions: jax.Array
    per_token: jax.Array
    f_input: float
    f_baseline: float
    completeness_gap: float


@functools.partial(jax.jit, static_argnames=("cfg", "chunk_size", "readout"))
def _integrated_gradients(
    params, tokens, baseline, alphas, weights, read_metric, mask, *, cfg, chunk_size, readout
):
    """`read_metric` scores the logits at the positions `readout` (`metrics.readout`)."""
    _, captured = run(params, tokens, cfg, capture=("embed",), mask=mask)
    x = captured["embed"]

    def f(embedding):
        edit = patch("embed", embedding)
        return read_metric(run(params, tokens, cfg, edits=(edit,), readout=readout, mask=mask)[0])

    grad_at = jax.grad(f)

    def weighted_grad(point):
        alpha, weight = point
        return weight * grad_at(baseline + alpha * (x - baseline)).astype(jnp.float32)

    grads = sweep.map_cells(weighted_grad, (alphas, weights), chunk_size)
    attributions = (x - baseline).astype(jnp.float32) * grads.sum(axis=0)
    return attributions, f(x), f(baseline)


def integrated_gradients(
    params,
    cfg: ModelConfig,
    tokens,
    *,
    metric=None,
    answers=None,
    baseline=None,
    steps: int = 64,
    method: str = "trapezoid",
    chunk_size: int | str | None = "auto",
    mask=None,
) -> IGResult:
    """Integrated gradients of `metric` with respect to the token embeddings.

    metric / answers: as in `mechjax.causal.activation_patching` (default: logit
    difference at the last position from `answers=(correct, wrong)`).
    baseline: embeddings `[batch, pos, d_model]` (or broadcastable, e.g. `[d_model]`);
    default zeros. Positional embeddings are not attributed (they stay as they are).
    steps: quadrature intervals; method: "trapezoid" (steps + 1 gradient evaluations)
    or "riemann_left" / "riemann_right" / "riemann_middle" (steps evaluations).
    chunk_size: gradient evaluations per vmapped chunk ("auto", an int, or None: all
        at once), as in patching sweeps.
    mask: `[batch, pos]` bool, False at padding: padding gets no attribution and the
        default metric reads each prompt's last token.
    """
    (tokens,) = sweep.check_model_inputs(params, cfg, tokens)
    mask = check_mask(mask, tokens)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if method not in QUADRATURES:
        raise ValueError(f"method={method!r}: choose one of {QUADRATURES}")
    chunk_size = sweep.check_chunk_size(chunk_size, tokens.shape[0] * tokens.shape[1])
    metric = resolve_metric(metric, answers, cfg, tokens.shape, mask)
    positions, read_metric = readout(metric, tokens.shape[1])
    shape = (*tokens.shape, cfg.d_model)
    if baseline is None:
        baseline = jnp.zeros(shape, jnp.dtype(cfg.activation_dtype))
    baseline = jnp.asarray(baseline, jnp.dtype(cfg.activation_dtype))
    try:
        baseline = jnp.broadcast_to(baseline, shape)
    except ValueError as err:
        raise ValueError(
            f"baseline of shape {baseline.shape} does not broadcast to the embeddings "
            f"[batch, pos, d_model] = {shape}"
        ) from err
    alphas, weights = quadrature(steps, method)
    attributions, f_input, f_baseline = _integrated_gradients(
        params,
        tokens,
        baseline,
        jnp.asarray(alphas, jnp.float32),
        jnp.asarray(weights, jnp.float32),
        read_metric,
        None if mask is None else jnp.asarray(mask),
        cfg=cfg,
        chunk_size=chunk_size,
        readout=positions,
    )
    f_input, f_baseline = float(f_input), float(f_baseline)
    return IGResult(
        attributions=attributions,
        per_token=attributions.sum(axis=-1),
        f_input=f_input,
        f_baseline=f_baseline,
        completeness_gap=float(attributions.sum()) - (f_input - f_baseline),
    )
