"""Attribution patching (Nanda 2023, "Attribution Patching: Activation Patching At
Industrial Scale"; Syed, Rager & Conmy 2023): a first-order estimate of every
activation patch at once.

Patching activation `a` from `a_base` to `a_other` changes the metric by approximately

    (a_other - a_base) . d metric / d a        (gradient at the base run)

summed over the patched entries. The gradient at every site comes from ONE forward and
ONE backward pass: the base run carries a zero-valued steering edit at each site
(`act <- act + value`, value = 0), and `jax.grad` of the metric with respect to those
values is exactly `d metric / d a` at that site, through everything downstream. The
other run contributes its activations (one more forward, no gradient).

* mode "noise" (default): base = clean run, other = corrupted, estimating
  `activation_patching(..., mode="noise")`;
* mode "denoise": base = corrupted run, other = clean, estimating
  `activation_patching(..., mode="denoise")`.

Estimates are returned as `PatchingResult`s whose `raw` is `base metric + estimated
change`, directly comparable with the exact sweep (`compare_with_exact` does that).
The estimate is exact when the metric is linear in the patched activation (e.g. the
final residual of a model with no final norm and a logit-difference metric) and can be
poor where the patch moves a saturated softmax or a norm far.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..model.checks import check_mask
from ..model.config import ModelConfig
from ..model.edits import steer
from ..model.sites import SITES
from ..model.transformer import run
from . import sweep
from .activation_patching import activation_patching
from .metrics import resolve_metric


def default_over(site: str) -> tuple[str, ...]:
    """("layer", "head") for head sites, ("layer", "pos") otherwise; no layer for
    model-wide sites."""
    axes = sweep.site_axes(site)
    if "head" in axes:
        return ("layer", "head")
    return tuple(a for a in ("layer", "pos") if a in axes)


def _reduce(product: jax.Array, site: str, over: tuple[str, ...]) -> jax.Array:
    """Sum `product [layer?, ...site axes]` over every axis not in `over`, and order
    the kept axes as `over`."""
    axes = sweep.site_axes(site)
    offset = 1 if SITES[site][0] else 0
    keep = [0 if a == "layer" else offset + axes[a] for a in over]
    summed = product.sum(axis=tuple(i for i in range(product.ndim) if i not in keep))
    ranked = sorted(keep)
    return jnp.transpose(summed, [ranked.index(k) for k in keep])


@functools.partial(jax.jit, static_argnames=("cfg", "sites"))
def _attribute(params, clean, corrupted, metric, denoise, mask, *, cfg, sites):
    names = tuple(sorted({site for site, _ in sites}))
    base, other = sweep.pick(denoise, corrupted, clean), sweep.pick(denoise, clean, corrupted)
    other_logits, other_acts = run(params, other, cfg, capture=names, mask=mask)

    def metric_of_steering(values):
        edits = tuple(steer(n, values[n], per_layer=SITES[n][0]) for n in names)
        logits, acts = run(params, base, cfg, capture=names, edits=edits, mask=mask)
        return metric(logits), acts

    zeros = {n: jnp.zeros_like(other_acts[n]) for n in names}
    (base_metric, base_acts), grads = jax.value_and_grad(metric_of_steering, has_aux=True)(zeros)
    estimates = {}
    for site, over in sites:
        change = (other_acts[site] - base_acts[site]).astype(jnp.float32)
        estimates[site] = base_metric + _reduce(change * grads[site], site, over)
    return estimates, base_metric, metric(other_logits)


def check_sites(sites, cfg: ModelConfig, n_pos: int) -> tuple[tuple[str, tuple], ...]:
    if sites is None:
        sites = ["resid_pre", "attn_out", "head_out"] + ([] if cfg.attn_only else ["mlp_out"])
    if isinstance(sites, str):
        sites = [sites]
    pairs = sites.items() if isinstance(sites, dict) else [(s, None) for s in sites]
    out = []
    for site, over in pairs:
        sweep.check_site(site, cfg)
        over, _ = sweep.check_over(site, default_over(site) if over is None else over, cfg, n_pos)
        out.append((site, over))
    if not out:
        raise ValueError("sites is empty; name at least one site, e.g. ['resid_pre']")
    return tuple(out)


def attribution_patching(
    params,
    cfg: ModelConfig,
    clean_tokens,
    corrupted_tokens,
    sites=None,
    *,
    metric=None,
    answers=None,
    mode: str = "noise",
    mask=None,
) -> dict[str, sweep.PatchingResult]:
    """First-order estimates of activation patching at many sites at once.

    sites: a list of site names (each swept over `default_over(site)`), or a dict
        `{site: over}`, e.g. `{"resid_pre": ("layer", "pos"), "z": ("layer", "head",
        "pos")}`. Default: resid_pre, attn_out and mlp_out over (layer, pos), head_out
        over (layer, head).
    metric / answers / mode / mask: as in `activation_patching` (default mode here
        "noise"; padding positions get no attribution: an edit there has no effect).

    Returns `{site: PatchingResult}` with mode "attribution-noise" / "attribution-denoise".
    """
    clean, corrupted = sweep.check_model_inputs(params, cfg, clean_tokens, corrupted_tokens)
    mask = check_mask(mask, clean)
    denoise = sweep.check_mode(mode)
    sites = check_sites(sites, cfg, clean.shape[1])
    metric = resolve_metric(metric, answers, cfg, clean.shape, mask)
    estimates, base_metric, other_metric = _attribute(
        params,
        clean,
        corrupted,
        metric,
        denoise,
        None if mask is None else jnp.asarray(mask),
        cfg=cfg,
        sites=sites,
    )
    clean_metric, corrupted_metric = (
        (base_metric, other_metric) if mode == "noise" else (other_metric, base_metric)
    )
    out = {}
    for site, over in sites:
        sizes = estimates[site].shape
        out[site] = sweep.make_result(
            estimates[site],
            clean_metric,
            corrupted_metric,
            site,
            over,
            sizes,
            f"attribution-{mode}",
            cfg,
        )
    return out


@dataclasses.dataclass(frozen=True)
class ComparisonResult:
    """Attribution-patching estimates beside exact activation patching at one site.

    correlation: Pearson correlation of the two `raw` arrays over all cells (NaN when
    either is constant). max_abs_error: max |estimate - exact| of the raw metric.
    """

    estimate: sweep.PatchingResult
    exact: sweep.PatchingResult
    correlation: float
    max_abs_error: float


def compare_with_exact(
    params,
    cfg: ModelConfig,
    clean_tokens,
    corrupted_tokens,
    site: str,
    over=None,
    *,
    metric=None,
    answers=None,
    mode: str = "noise",
    chunk_size: int | str | None = "auto",
) -> ComparisonResult:
    """Run attribution patching and exact activation patching at `site` over `over`
    (default `default_over(site)`) with the same metric and mode, and compare them."""
    sweep.check_site(site, cfg)
    over = default_over(site) if over is None else over
    common = dict(metric=metric, answers=answers, mode=mode)
    estimate = attribution_patching(
        params, cfg, clean_tokens, corrupted_tokens, {site: over}, **common
    )[site]
    exact = activation_patching(
        params, cfg, clean_tokens, corrupted_tokens, site, over, chunk_size=chunk_size, **common
    )
    a = np.asarray(estimate.raw, np.float64).ravel()
    b = np.asarray(exact.raw, np.float64).ravel()
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        correlation = float("nan")
    else:
        correlation = float(np.corrcoef(a, b)[0, 1])
    return ComparisonResult(estimate, exact, correlation, float(np.abs(a - b).max()))
