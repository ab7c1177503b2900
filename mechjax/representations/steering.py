"""Steering vectors from contrast pairs, and sweeps of where and how hard to push.

    contrast_vectors(params, cfg, positive, negative, site=..., pos=-1, method=...)
        -> [layer, d] one vector per layer, from prompts that differ in the concept
    mean_difference(pos_acts, neg_acts)   -> [..., d]  ActAdd / contrastive activation
                                                      addition: mean(pos) - mean(neg)
    reading_vector(pos_acts, neg_acts)    -> [..., d]  representation engineering: the
                                                      first principal component of the
                                                      paired differences, unit norm,
                                                      signed along the mean difference
    steering_sweep(params, cfg, tokens, vectors, coeffs, metric=..., site=...)
        -> SteeringResult: the metric for every (layer, coefficient), one compiled call

Applied with `edits.steer(site, coeff * vector, layer=l)`: the vector is added to the
site's activation at every position selected (`pos=None`: all of them).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..causal import sweep
from ..causal.metrics import resolve_metric
from ..model import edits
from ..model.config import ModelConfig
from ..model.sites import SITES, available_sites
from ..model.transformer import run

METHODS = ("mean_difference", "reading_vector")


def mean_difference(pos_acts, neg_acts) -> jax.Array:
    """`mean(pos) - mean(neg)` over the example axis: `[..., example, d] -> [..., d]`."""
    return jnp.mean(jnp.asarray(pos_acts), axis=-2) - jnp.mean(jnp.asarray(neg_acts), axis=-2)


def reading_vector(pos_acts, neg_acts) -> jax.Array:
    """The first principal component of the paired differences `pos - neg` (examples
    paired by index), unit norm, signed so that it points along their mean:
    `[..., example, d] -> [..., d]`."""
    diff = jnp.asarray(pos_acts, jnp.float32) - jnp.asarray(neg_acts, jnp.float32)
    centered = diff - diff.mean(-2, keepdims=True)
    _, _, vh = jnp.linalg.svd(centered, full_matrices=False)
    direction = vh[..., 0, :]
    sign = jnp.sign(jnp.sum(direction * diff.mean(-2), axis=-1, keepdims=True))
    return direction * jnp.where(sign == 0, 1.0, sign)


def contrast_vectors(
    params,
    cfg: ModelConfig,
    positive,
    negative,
    *,
    site: str = "resid_pre",
    pos: int = -1,
    method: str = "mean_difference",
) -> jax.Array:
    """Per-layer steering vectors `[layer, d]` from prompts with and without the concept
    (`positive`, `negative`: `[example, pos]` tokens, paired by row for the reading
    vector): the activations at `site` and position `pos` of each prompt, combined by
    `method` ("mean_difference" or "reading_vector")."""
    if method not in METHODS:
        raise ValueError(f"method={method!r}: choose one of {METHODS}")
    _check_site(site, cfg)
    positive, negative = sweep.check_model_inputs(params, cfg, positive, negative)
    if not -positive.shape[1] <= pos < positive.shape[1]:
        raise ValueError(f"pos={pos} is outside the prompts' {positive.shape[1]} positions")
    acts = [run(params, t, cfg, capture=(site,))[1][site][:, :, pos] for t in (positive, negative)]
    combine = mean_difference if method == "mean_difference" else reading_vector
    return combine(*acts)  # acts: [layer, example, d]


@dataclasses.dataclass(frozen=True)
class SteeringResult:
    """values `[layer, coeff]`: the metric with `coeff * vectors[layer]` added at
    `site` of that layer; baseline: the metric without steering."""

    values: np.ndarray
    layers: np.ndarray
    coeffs: np.ndarray
    baseline: float


def steering_sweep(
    params,
    cfg: ModelConfig,
    tokens,
    vectors,
    coeffs,
    *,
    metric=None,
    answers=None,
    site: str = "resid_pre",
    pos=None,
    layers=None,
    chunk_size: int | str | None = "auto",
) -> SteeringResult:
    """The metric of `tokens [batch, pos]` steered by `coeff * vectors[layer]` at `site`
    for every layer in `layers` (default all) and every coefficient in `coeffs`, all in
    one compiled call. metric / answers: as in activation patching (default: the logit
    difference `answers=(a, b)` at the last position); pos: the positions steered
    (None: all)."""
    _check_site(site, cfg)
    (tokens,) = sweep.check_model_inputs(params, cfg, tokens)
    vectors = jnp.asarray(vectors, jnp.float32)
    if vectors.shape != (cfg.n_layers, cfg.d_model):
        raise ValueError(
            f"vectors must be [layer, d_model] = [{cfg.n_layers}, {cfg.d_model}] (one per "
            f"layer, as contrast_vectors returns), got {tuple(vectors.shape)}"
        )
    layers = np.arange(cfg.n_layers) if layers is None else np.asarray(layers, np.int32)
    if layers.ndim != 1 or layers.min() < 0 or layers.max() >= cfg.n_layers:
        raise ValueError(f"layers must be indices in 0..{cfg.n_layers - 1}, got {layers}")
    if pos is not None:
        pos = tuple(int(p) for p in np.atleast_1d(pos))
        if min(pos) < 0 or max(pos) >= tokens.shape[1]:
            raise ValueError(f"pos {list(pos)} must be positions in 0..{tokens.shape[1] - 1}")
    coeffs = np.asarray(coeffs, np.float32).reshape(-1)
    metric = resolve_metric(metric, answers, cfg, tokens.shape)
    chunk_size = sweep.check_chunk_size(chunk_size, tokens.shape[0] * tokens.shape[1])
    grid_l, grid_c = (a.reshape(-1) for a in np.meshgrid(layers, coeffs, indexing="ij"))
    cells = (jnp.asarray(grid_l), jnp.asarray(grid_c))
    values, baseline = _sweep(
        params, tokens, vectors, cells, metric, cfg=cfg, site=site, pos=pos, chunk_size=chunk_size
    )
    return SteeringResult(
        values=np.asarray(values).reshape(len(layers), len(coeffs)),
        layers=layers,
        coeffs=coeffs,
        baseline=float(baseline),
    )


@functools.partial(jax.jit, static_argnames=("cfg", "site", "pos", "chunk_size"))
def _sweep(params, tokens, vectors, cells, metric, *, cfg, site, pos, chunk_size):
    def one(cell):
        layer, coeff = cell
        selected = None if pos is None else jnp.asarray(pos)
        edit = edits.steer(site, vectors[layer], layer=layer, pos=selected, coeff=coeff)
        return metric(run(params, tokens, cfg, edits=(edit,))[0])

    return sweep.map_cells(one, cells, chunk_size), metric(run(params, tokens, cfg)[0])


def _check_site(site: str, cfg: ModelConfig) -> None:
    if site not in available_sites(cfg) or not SITES[site][0] or SITES[site][1][-1] != "d_model":
        raise ValueError(
            f"site {site!r}: steering needs a per-layer residual-width site of this model "
            "(resid_pre, resid_mid, resid_post, attn_out, mlp_out)"
        )
