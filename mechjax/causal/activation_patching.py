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
`z` patches a head at every position. Each cell is a `mechjax.model.edits.patch`-style `Edit`
whose selectors are the cell's indices, and all cells run under `jax.vmap` (or, with
`chunk_size`, `lax.map` over vmapped chunks) inside one `jax.jit`.

A patch at layer l cannot change anything before block l, so each cell re-runs only the
blocks from its layer on, starting from the unpatched run's `resid_pre` there: on
average about half of the forward pass is skipped, and the result is the same as a full
re-run. When the metric reads one position (the metrics of `metrics`), a cell computes
the logits only there, and its last block only that position (`model.transformer.run_from`'s
`readout`; keys and values still at every position). And since attention is causal, a
patch at position p cannot change any earlier position: such a cell computes only the
positions from p on, with the earlier positions' keys and values taken from the
unpatched run (`run_from`'s `prefix`). Cells are grouped by start layer and position
(`sweep.start_groups`), one compiled run per group.

In an attention-only model without a post-attention norm, a head's output reaches the
residual stream linearly: patching `z`, `head_out` or `attn_out` at layer l only adds
`(patched - unpatched) @ W_O` (or its sum over heads) to the residual after block l. Such
a cell starts at block l + 1 from that sum, without re-running block l's attention
(`shifts_residual`); a patch in the last layer then costs only the unembedding.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..model.checks import check_mask
from ..model.config import ModelConfig
from ..model.edits import Edit
from ..model.params import weight_bits, widen
from ..model.sites import SITES
from ..model.transformer import run, run_from
from . import metrics, sweep


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


def shifts_residual(site: str, over, cfg: ModelConfig, max_groups: int) -> bool:
    """Whether each cell of this sweep is a shift of the residual stream after its block
    (see the module docstring): per-layer cells of `z` / `head_out` / `attn_out` in
    attention-only blocks without a post-attention norm, and one start layer per group
    (`sweep.start_groups` keeps every layer apart when `max_groups` allows it)."""
    return (
        site in ("z", "head_out", "attn_out")
        and "layer" in over
        and cfg.attn_only
        and not cfg.post_attn_norm
        and cfg.n_layers <= min(sweep.MAX_LAYER_GROUPS, max_groups)
    )


def _residual_change(site: str, patched, unpatched, W_O) -> jax.Array:
    """How block output changes when one layer's `site` goes from `unpatched` to
    `patched`: `[batch, pos, d_model]` (W_O `[head, d_head, d_model]` of that layer)."""
    diff = patched - unpatched
    if site == "z":  # [batch, pos, head, d_head]
        return jnp.einsum("bphe,hed->bpd", diff, W_O)
    if site == "head_out":  # [batch, pos, head, d_model]
        return diff.sum(axis=2)
    return diff  # attn_out


@functools.partial(
    jax.jit, static_argnames=("cfg", "site", "chunk_size", "groups", "readout", "shift")
)
def _sweep(
    params,
    clean,
    corrupted,
    cells,
    read_metric,
    denoise,
    unorder,
    mask,
    *,
    cfg,
    site,
    chunk_size,
    groups,
    readout,
    shift,
):
    """`cells` are ordered by group; `groups` is ((first_layer, first_pos, n_cells), ...)
    (static, `sweep.start_groups`).
    `readout`: the positions whose logits `read_metric` scores (`metrics.readout`; None:
    all). `shift`: `shifts_residual` (each group is then one layer). Returns the raw
    metrics in the grid's row-major order (`unorder` [cell] inverts the grouping)."""
    # the target run's residual stream is only needed where cells start past block 0,
    # its keys and values where they start past position 0
    if shift:
        capture = (site, "resid_post")
    else:
        capture = (site,) + ("resid_pre",) * any(l or p for l, p, _ in groups)
        capture += ("k", "v") * any(p for _, p, _ in groups)
    capture = tuple(dict.fromkeys(capture))  # the site may be one of them
    (clean_logits, clean_acts), (corrupted_logits, corrupted_acts) = sweep.run_pair(
        params, clean, corrupted, cfg, capture, readout, mask
    )
    target = sweep.pick(denoise, corrupted, clean)
    target_acts = sweep.pick(denoise, corrupted_acts, clean_acts)
    source = sweep.pick(denoise, clean_acts[site], corrupted_acts[site])

    raws, offset = [], 0
    for first_layer, first_pos, n_cells in groups:
        resid = prefix = None
        if (first_layer or first_pos) and not shift:
            resid = target_acts["resid_pre"][first_layer][:, first_pos:]
        if first_pos:
            prefix = tuple(target_acts[kv][:, :, :first_pos] for kv in ("k", "v"))

        def one_cell(cell, first_layer=first_layer, resid=resid, prefix=prefix):
            edits = (cell_patch(site, source, cell),)
            if shift:  # the block's output plus the patch's change, from block l + 1 on
                unpatched = target_acts[site][first_layer]
                patched = edits[0].apply(unpatched, first_layer)
                W_O = widen(params["blocks"]["W_O"][first_layer], cfg)
                resid = target_acts["resid_post"][first_layer]
                resid = resid + _residual_change(site, patched, unpatched, W_O)
                logits, _ = run_from(
                    params, resid, cfg, layer=first_layer + 1, readout=readout, mask=mask
                )
            elif resid is not None:
                logits, _ = run_from(
                    params,
                    resid,
                    cfg,
                    layer=first_layer,
                    edits=edits,
                    readout=readout,
                    prefix=prefix,
                    mask=mask,
                )
            else:
                logits, _ = run(params, target, cfg, edits=edits, readout=readout, mask=mask)
            return read_metric(logits)

        group_cells = {k: v[offset : offset + n_cells] for k, v in cells.items()}
        raws.append(sweep.map_cells(one_cell, group_cells, chunk_size))
        offset += n_cells
    raw = jnp.concatenate(raws)[unorder]
    return raw, read_metric(clean_logits), read_metric(corrupted_logits)


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
    mask=None,
    bucket: bool = True,
) -> sweep.PatchingResult:
    """Patch `site` at every cell of the grid `over` and measure `metric`.

    clean_tokens, corrupted_tokens: int [batch, pos], the same shape.
    site: any per-layer or model-wide site of `mechjax.model.sites` that the model has, e.g.
        resid_pre / resid_mid / resid_post, attn_out, mlp_out, head_out, q, k, v, z,
        pattern (its `pos` is the query position; at k / v `head` is the kv-head).
    over: the swept axes, a subset of ("layer", "pos", "head") in the order of the
        result's axes.
    metric: `f(logits [batch, pos, vocab]) -> scalar` (a `mechjax.causal.metrics`
        metric or any callable); or give `answers=(correct, wrong)` (ints or [batch])
        for the default, the logit difference at the last position.
    mode: "denoise" or "noise" (see the module docstring).
    chunk_size: cells per vmapped chunk: "auto" (about `sweep.AUTO_CHUNK_TOKENS` tokens
        per chunk), an int, or None (all cells in one vmap).
    mask: `[batch, pos]` bool, False at padding, shared by both runs
        (`mechjax.model.padding`): prompts of different lengths in one batch. A patch
        never lands on padding, and the default metric reads each prompt's last token.
    bucket: pad the prompts (with a mask) up to a bucket length (16, 24, 32, 48, 64,
        96, ...; `sweep.pad_to_bucket`), so a sweep on a new length inside the bucket
        reuses the compiled program. Results are those of the unpadded prompts (to
        float rounding). Only with the metrics of `metrics` (or `answers`); a plain
        callable metric sees the logits as given.

    Returns a `PatchingResult` with `raw` and `normalized` arrays of shape [len(axis)
    for axis in over].
    """
    clean, corrupted = sweep.check_model_inputs(params, cfg, clean_tokens, corrupted_tokens)
    mask = check_mask(mask, clean)
    sweep.check_site(site, cfg)
    denoise = sweep.check_mode(mode)
    over, sizes = sweep.check_over(site, over, cfg, clean.shape[1])
    metric = metrics.resolve_metric(metric, answers, cfg, clean.shape, mask)
    padded = sweep.pad_to_bucket(cfg, (clean, corrupted), mask, metric, bucket)
    (clean, corrupted), mask = padded.tokens, padded.mask
    chunk_size = sweep.check_chunk_size(chunk_size, clean.shape[0] * clean.shape[1])
    _, padded_sizes = sweep.check_over(site, over, cfg, clean.shape[1])
    n_cells = int(np.prod(padded_sizes))
    cells = sweep.grid(padded_sizes, over)
    positions, read_metric = metrics.readout(padded.metric, clean.shape[1])
    budget = sweep.group_budget(cfg, n_cells, clean.shape, logits=positions is None)
    shift = shifts_residual(site, over, cfg, budget)
    last_start = None if positions is None or shift else min(positions)
    order, groups = sweep.start_groups(cells, site, cfg, last_start, budget)
    raw, clean_metric, corrupted_metric = _sweep(
        weight_bits(params, cfg),
        clean,
        corrupted,
        {axis: index[order] for axis, index in cells.items()},
        read_metric,
        denoise,
        np.argsort(order).astype(np.int32),
        None if mask is None else jnp.asarray(mask),
        cfg=cfg,
        site=site,
        chunk_size=chunk_size,
        groups=groups,
        readout=positions,
        shift=shift,
    )
    real = tuple(padded.columns if axis == "pos" else slice(None) for axis in over)
    raw = np.asarray(raw).reshape(padded_sizes)[real]
    return sweep.make_result(raw, clean_metric, corrupted_metric, site, over, sizes, mode, cfg)
