"""Path patching (Wang et al. 2022, "Interpretability in the Wild", IOI): the effect of a
sender head's corrupted output along the direct paths into chosen receivers only.

Definition used here (one sender head `s` at layer `l_s`, clean input x, corrupted x'):

1. Run x and x'. The sender's write into the residual stream is `head_writes[l_s, :, :,
   s]` (its output, after a post-attention norm with that run's frozen scale where the
   model has one). `delta = write(x') - write(x)`, optionally only at `sender_pos`.
2. Frozen run: x again, with every attention block's output `attn_out` frozen to its
   clean value, plus `delta` at layer `l_s`, and (with `freeze_mlps=True`, the default)
   every MLP's output frozen to its clean value too. So at every layer the residual is
   exactly `clean residual + delta` from layer `l_s` on: the sender's change reaches
   every later input directly and by no other path. Record the receivers' inputs
   there: their q, k or v, recomputed from that residual (norms included, with freshly
   computed scales). With `freeze_mlps=False` the MLPs recompute, so paths sender ->
   MLPs -> receiver count as well.
3. Patched run: x with only the receivers' q / k / v (at `receiver_pos`, default all
   positions) replaced by their values from step 2; everything else, including all
   layers after the receivers, recomputes. The metric of this run is the result.

With `receivers="logits"` step 3 is skipped: the metric of step 2's logits is the
sender's direct effect on the output (through the final norm, its scale recomputed).

A sender at or after a receiver's layer has no path to it: its result is the clean
metric. Grouped-query attention: a receiver's q is per query head, but its k and v are
per key/value head, shared by the `group_size` query heads of that group; receivers
`(layer, g, "k")` name kv-head `g` (0..n_kv_heads-1), so patching it changes the keys of
every query head in the group.

The sweep runs every sender (layer x head) under one `jax.vmap` in one compiled call.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..model.checks import check_mask
from ..model.config import ModelConfig
from ..model.edits import Edit, patch
from ..model.transformer import run
from . import sweep
from .metrics import readout, resolve_metric

KINDS = ("q", "k", "v")


def _frozen(site: str, value: jax.Array) -> Edit:
    """Replace `site` at every layer with `value [layer, ...]`."""
    return patch(site, value)


@functools.partial(
    jax.jit, static_argnames=("cfg", "receivers", "freeze_mlps", "chunk_size", "readout")
)
def _path_sweep(
    params,
    clean,
    corrupted,
    cells,
    sender_mask,
    receiver_pos,
    read_metric,
    mask,
    *,
    cfg,
    receivers,
    freeze_mlps,
    chunk_size,
    readout,
):
    """`read_metric` scores the logits at the positions `readout` (`metrics.readout`)."""
    freeze_mlps = freeze_mlps and not cfg.attn_only
    clean_names = ("attn_out", "head_writes") + (("mlp_out",) if freeze_mlps else ())
    (clean_logits, c), (corrupted_logits, x) = sweep.run_pair(
        params, clean, corrupted, cfg, clean_names, readout, mask
    )
    # [layer, batch, pos, head, d_model], zero outside the sender positions
    diff = (x["head_writes"] - c["head_writes"]) * sender_mask[None, None, :, None, None]
    kinds = tuple(sorted({kind for _, _, kind in receivers}))
    layer_ids = jnp.arange(cfg.n_layers)

    def one_sender(cell):
        delta = diff[cell["layer"], :, :, cell["head"]]  # [batch, pos, d_model]
        at_sender = (layer_ids == cell["layer"])[:, None, None, None]
        frozen = [_frozen("attn_out", c["attn_out"] + at_sender * delta)]
        if freeze_mlps:
            frozen.append(_frozen("mlp_out", c["mlp_out"]))
        if not receivers:  # the logits are the receiver
            logits = run(params, clean, cfg, edits=tuple(frozen), readout=readout, mask=mask)[0]
            return read_metric(logits)
        _, recorded = run(params, clean, cfg, capture=kinds, edits=tuple(frozen), mask=mask)
        patches = []
        for (layer, kind), heads in _group(receivers).items():
            patches.append(patch(kind, recorded[kind], layer=layer, pos=receiver_pos, head=heads))
        logits = run(params, clean, cfg, edits=tuple(patches), readout=readout, mask=mask)[0]
        return read_metric(logits)

    raw = sweep.map_cells(one_sender, cells, chunk_size)
    return raw, read_metric(clean_logits), read_metric(corrupted_logits)


def _group(receivers) -> dict[tuple[int, str], tuple[int, ...]]:
    """{(layer, kind): heads}: one edit per receiving layer and input kind."""
    out: dict[tuple[int, str], list[int]] = {}
    for layer, head, kind in receivers:
        out.setdefault((layer, kind), []).append(head)
    return {k: tuple(sorted(set(v))) for k, v in sorted(out.items())}


def check_receivers(receivers, cfg: ModelConfig) -> tuple[tuple[int, int, str], ...]:
    """Validate receivers: "logits" or `(layer, head, kind)` with kind in q / k / v."""
    if isinstance(receivers, str):
        if receivers != "logits":
            raise ValueError(
                f"receivers={receivers!r}: give 'logits' or a list of (layer, head, kind) "
                "with kind 'q', 'k' or 'v'"
            )
        return ()
    out = []
    for r in receivers:
        if not (isinstance(r, tuple | list) and len(r) == 3 and r[2] in KINDS):
            raise ValueError(
                f"receiver {r!r} must be (layer, head, kind) with kind in {KINDS}, e.g. (1, 3, 'k')"
            )
        layer, head, kind = int(r[0]), int(r[1]), r[2]
        if not 0 <= layer < cfg.n_layers:
            raise ValueError(
                f"receiver {tuple(r)}: layer {layer} out of range 0..{cfg.n_layers - 1}"
            )
        n = cfg.n_heads if kind == "q" else cfg.n_kv_heads
        if not 0 <= head < n:
            what = "query head" if kind == "q" else "key/value head (grouped-query attention)"
            raise ValueError(f"receiver {tuple(r)}: {what} index {head} out of range 0..{n - 1}")
        out.append((layer, head, kind))
    if not out:
        raise ValueError("receivers is empty; give at least one (layer, head, kind) or 'logits'")
    return tuple(sorted(set(out)))


def _positions(pos, n_pos: int, name: str):
    if pos is None:
        return None
    values = np.atleast_1d(np.asarray(pos))
    if not np.issubdtype(values.dtype, np.integer) or values.ndim != 1:
        raise ValueError(f"{name} must be an int or a 1-D list of ints, got {pos!r}")
    if values.size == 0 or values.min() < 0 or values.max() >= n_pos:
        raise ValueError(f"{name}={values.tolist()} out of range 0..{n_pos - 1}")
    return jnp.asarray(values, jnp.int32)


def path_patching(
    params,
    cfg: ModelConfig,
    clean_tokens,
    corrupted_tokens,
    receivers="logits",
    *,
    metric=None,
    answers=None,
    freeze_mlps: bool = True,
    sender_pos=None,
    receiver_pos=None,
    chunk_size: int | str | None = "auto",
    mask=None,
) -> sweep.PatchingResult:
    """Path-patch every sender head (layer x head) into `receivers`.

    receivers: "logits", or a list of `(layer, head, kind)` with kind "q", "k" or "v"
        (for k / v, `head` is the key/value head).
    metric / answers: as in `activation_patching` (default: logit difference at the
        last position from `answers=(correct, wrong)`).
    freeze_mlps: freeze every MLP at its clean output (True) or let MLPs recompute, so
        paths through them count too (False).
    sender_pos: positions where the sender's output is corrupted (default: all).
    receiver_pos: positions where the receivers' inputs are patched (default: all; for
        k / v these are key positions).
    mask: padding shared by both runs, as in `activation_patching`.

    Returns a `PatchingResult` with axes ("layer", "head") over senders; mode "path".
    `raw` is the metric of the clean run after path patching, `normalized` as always
    `(raw - corrupted) / (clean - corrupted)` (1: no effect, 0: as bad as corrupting
    the whole input).
    """
    clean, corrupted = sweep.check_model_inputs(params, cfg, clean_tokens, corrupted_tokens)
    mask = check_mask(mask, clean)
    if cfg.n_layers == 0:
        raise ValueError("path patching needs a model with at least one layer of heads")
    receivers = check_receivers(receivers, cfg)
    chunk_size = sweep.check_chunk_size(chunk_size, clean.shape[0] * clean.shape[1])
    n_pos = clean.shape[1]
    sender_idx = _positions(sender_pos, n_pos, "sender_pos")
    sender_mask = jnp.ones((n_pos,), jnp.dtype(cfg.activation_dtype))
    if sender_idx is not None:
        sender_mask = jnp.zeros_like(sender_mask).at[sender_idx].set(1)
    metric = resolve_metric(metric, answers, cfg, clean.shape, mask)
    positions, read_metric = readout(metric, n_pos)
    over, sizes = ("layer", "head"), (cfg.n_layers, cfg.n_heads)
    raw, clean_metric, corrupted_metric = _path_sweep(
        params,
        clean,
        corrupted,
        sweep.grid(sizes, over),
        sender_mask,
        _positions(receiver_pos, n_pos, "receiver_pos"),
        read_metric,
        None if mask is None else jnp.asarray(mask),
        cfg=cfg,
        receivers=receivers,
        freeze_mlps=freeze_mlps,
        chunk_size=chunk_size,
        readout=positions,
    )
    return sweep.make_result(
        raw, clean_metric, corrupted_metric, "head_out", over, sizes, "path", cfg
    )
