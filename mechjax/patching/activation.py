"""Activation patching sweeps: one compiled call for a whole grid of patches.

Two runs, on clean and corrupted inputs of the same shape. One of them is re-run with a
single activation replaced by the other run's value (Vig et al. 2020; Meng et al. 2022;
Wang et al. 2022; see "Interventions and causal methods" in METHODS.md):

* "denoise": the corrupted run with the clean value patched in (how much of the clean
  behaviour does this activation restore?);
* "noise": the clean run with the corrupted value patched in (how much does the
  behaviour break without it?).

The grid is any combination of the site's axes: ("layer", "pos"), ("layer", "head"),
("layer", "head", "pos"), ... An axis not swept is patched whole: ("layer", "head") at
`z` patches a head at every position. Each cell is a `mechjax.edits.patch`-style `Edit`
whose selectors are the cell's indices, and all cells run under `jax.vmap` (or, with
`chunk_size`, `lax.map` over vmapped chunks) inside one `jax.jit`.

A patch at layer l cannot change anything before block l, so each cell re-runs only the
blocks from its layer on, starting from the unpatched run's `resid_pre` there (cells are
grouped by their first layer, `grid.first_layer_groups`): on average about half of the
forward pass is skipped, and the result is the same as a full re-run. When the metric
reads one position (the metrics of `metrics`), a cell computes the logits only there,
and its last block only that position (`model._run_from`'s `readout`; keys and values
still at every position).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ..config import ModelConfig
from ..edits import Edit
from ..model import _run, _run_from
from ..sites import SITES
from . import grid, metrics


def cell_patch(site: str, source: jax.Array, cell: dict) -> Edit:
    """The edit of one cell: the site's selection at the cell's indices <- `source`
    (a captured activation, stacked `[layer, ...]` for per-layer sites)."""
    return Edit(
        site=site,
        layer=cell.get("layer"),
        pos=cell.get("pos"),
        head=cell.get("head"),
        scale=jnp.float32(0.0),
        value=source,
        value_has_layer_axis=SITES[site][0],
    )


@functools.partial(jax.jit, static_argnames=("cfg", "site", "chunk_size", "groups", "readout"))
def _sweep(
    params,
    clean,
    corrupted,
    cells,
    metric,
    read_metric,
    denoise,
    *,
    cfg,
    site,
    chunk_size,
    groups,
    readout,
):
    """`cells` are ordered by group; `groups` is ((first_layer, n_cells), ...) (static).
    `readout`: the positions whose logits `read_metric` scores (`metrics.readout`; None:
    all). Returns the raw metrics in that order."""
    # the target run's residual stream is only needed where cells start past block 0
    capture = (site, "resid_pre") if any(first for first, _ in groups) else (site,)
    (clean_logits, clean_acts), (corrupted_logits, corrupted_acts) = grid.run_pair(
        params, clean, corrupted, cfg, capture
    )
    target = grid.pick(denoise, corrupted, clean)
    target_acts = grid.pick(denoise, corrupted_acts, clean_acts)
    source = grid.pick(denoise, clean_acts[site], corrupted_acts[site])

    raws, offset = [], 0
    for first_layer, n_cells in groups:
        resid = target_acts["resid_pre"][first_layer] if first_layer else None

        def one_cell(cell, first_layer=first_layer, resid=resid):
            edits = (cell_patch(site, source, cell),)
            if first_layer:
                logits, _ = _run_from(params, resid, cfg, first_layer, (), edits, readout)
            else:
                logits, _ = _run(params, target, cfg, (), edits, readout)
            return read_metric(logits)

        group_cells = {k: v[offset : offset + n_cells] for k, v in cells.items()}
        raws.append(grid.map_cells(one_cell, group_cells, chunk_size))
        offset += n_cells
    return jnp.concatenate(raws), metric(clean_logits), metric(corrupted_logits)


def activation_patching(
    params,
    cfg: ModelConfig,
    clean_tokens,
    corrupted_tokens,
    site: str,
    over=("layer", "pos"),
    *,
    metric=None,
    answers=None,
    mode: str = "denoise",
    chunk_size: int | str | None = "auto",
) -> grid.PatchingResult:
    """Patch `site` at every cell of the grid `over` and measure `metric`.

    clean_tokens, corrupted_tokens: int [batch, pos], the same shape.
    site: any per-layer or model-wide site of `mechjax.sites` that the model has, e.g.
        resid_pre / resid_mid / resid_post, attn_out, mlp_out, head_out, q, k, v, z,
        pattern (its `pos` is the query position; at k / v `head` is the kv-head).
    over: the swept axes, a subset of ("layer", "pos", "head") in the order of the
        result's axes.
    metric: `f(logits [batch, pos, vocab]) -> scalar` (a `mechjax.patching.metrics`
        metric or any callable); or give `answers=(correct, wrong)` (ints or [batch])
        for the default, the logit difference at the last position.
    mode: "denoise" or "noise" (see the module docstring).
    chunk_size: cells per vmapped chunk: "auto" (about `grid.AUTO_CHUNK_TOKENS` tokens
        per chunk), an int, or None (all cells in one vmap).

    Returns a `PatchingResult` with `raw` and `normalized` arrays of shape [len(axis)
    for axis in over].
    """
    clean, corrupted = grid.check_model_inputs(params, cfg, clean_tokens, corrupted_tokens)
    grid.check_site(site, cfg)
    denoise = grid.check_mode(mode)
    chunk_size = grid.check_chunk_size(chunk_size, clean.shape[0] * clean.shape[1])
    over, sizes = grid.check_over(site, over, cfg, clean.shape[1])
    metric = metrics.resolve_metric(metric, answers, cfg, clean.shape)
    cells = grid.grid(sizes, over)
    order, groups = grid.first_layer_groups(cells, site, cfg)
    positions, read_metric = metrics.readout(metric, clean.shape[1])
    raw, clean_metric, corrupted_metric = _sweep(
        params,
        clean,
        corrupted,
        {axis: index[order] for axis, index in cells.items()},
        metric,
        read_metric,
        denoise,
        cfg=cfg,
        site=site,
        chunk_size=chunk_size,
        groups=groups,
        readout=positions,
    )
    raw = jnp.zeros_like(raw).at[order].set(raw)  # back to the grid's row-major order
    return grid.make_result(raw, clean_metric, corrupted_metric, site, over, sizes, mode, cfg)
