"""Sweep grids: which axes of a site a sweep runs over, the cells' selector arrays, the
result container, and the checks every causal method does before compiling.

A sweep over `over=("layer", "pos")` at site `resid_pre` has one cell per (layer,
position); each cell is one `Edit` whose `layer` / `pos` / `head` selectors are that
cell's indices (an axis not in `over` is selected whole). The cells' indices are flat
int32 arrays, so `jax.vmap` over them runs every cell in one compiled call.

Axis names: "layer" (per-layer sites only), "pos" (the site's `pos`, or `query_pos`
for `scores`/`pattern`) and "head" (query heads; at `k` and `v` the key/value heads,
`n_kv_heads` of them, which with grouped-query attention several query heads share).
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ..model import sharding
from ..model.checks import check_config, check_tokens
from ..model.config import ModelConfig
from ..model.padding import bucket_length, pad_columns
from ..model.params import check_params
from ..model.sites import SITES, available_sites, is_per_layer
from ..model.transformer import run
from . import metrics

AXES = ("layer", "pos", "head")
_POS_NAMES = ("pos", "query_pos")
_HEAD_NAMES = ("head", "kv_head")


@dataclasses.dataclass(frozen=True)
class PatchingResult:
    """The outcome of a sweep.

    raw:         the metric of each patched run, shape = one entry per axis in `axes`
    normalized:  `(raw - corrupted_metric) / (clean_metric - corrupted_metric)`: 1 where
                 the patched run scores like the clean run, 0 like the corrupted one
                 (the same formula for denoising and noising)
    axes:        axis names, e.g. ("layer", "pos")
    labels:      per axis, the label of each index ("L0", "H3", "KV1", "p5")
    clean_metric, corrupted_metric: the metric of the unpatched runs
    site, mode:  what was patched and how ("denoise", "noise", or a method's own name)
    """

    raw: jax.Array
    normalized: jax.Array
    axes: tuple[str, ...]
    labels: dict[str, list[str]]
    clean_metric: float
    corrupted_metric: float
    site: str
    mode: str


def normalize(raw, clean_metric, corrupted_metric) -> np.ndarray:
    """`(raw - corrupted) / (clean - corrupted)`; NaN (with a warning) when they tie."""
    denom = float(clean_metric) - float(corrupted_metric)
    if denom == 0.0:
        warnings.warn(
            "clean and corrupted runs have the same metric: the normalised effect is "
            "undefined (NaN); choose inputs that the metric tells apart",
            stacklevel=3,
        )
        return np.full(np.shape(raw), np.nan, np.float32)
    return ((np.asarray(raw) - corrupted_metric) / denom).astype(np.float32)


def make_result(raw, clean_metric, corrupted_metric, site, over, sizes, mode, cfg):
    clean_metric, corrupted_metric = float(clean_metric), float(corrupted_metric)
    raw = np.asarray(raw).reshape(sizes)  # on the host: no small programs to compile
    return PatchingResult(
        raw=jnp.asarray(raw),
        normalized=jnp.asarray(normalize(raw, clean_metric, corrupted_metric)),
        axes=tuple(over),
        labels={axis: axis_labels(axis, n, site) for axis, n in zip(over, sizes)},
        clean_metric=clean_metric,
        corrupted_metric=corrupted_metric,
        site=site,
        mode=mode,
    )


def axis_labels(axis: str, n: int, site: str) -> list[str]:
    if axis == "head":
        prefix = "KV" if "kv_head" in SITES[site][1] else "H"
    else:
        prefix = {"layer": "L", "pos": "p"}[axis]
    return [f"{prefix}{i}" for i in range(n)]


# -- checks ---------------------------------------------------------------------------------


def check_model_inputs(params, cfg: ModelConfig, *token_arrays) -> tuple[jax.Array, ...]:
    """Validate the config, params and token arrays; same-shaped arrays as int32."""
    check_config(cfg)
    check_params(params, cfg)
    for tokens in token_arrays:
        check_tokens(tokens, cfg)
    shapes = {tuple(t.shape) for t in token_arrays}
    if len(shapes) > 1:
        raise ValueError(
            f"the token arrays must have the same shape [batch, pos] (positions are "
            f"patched one-to-one), got {[tuple(t.shape) for t in token_arrays]}; pad or "
            "truncate them to a common length"
        )
    return tuple(jnp.asarray(t, jnp.int32) for t in token_arrays)


@dataclasses.dataclass(frozen=True)
class Bucketed:
    """Inputs padded up to a bucket length (`pad_to_bucket`): `tokens` (each
    `[batch, bucket]`), their `mask`, the `metric` reading the same tokens, and where
    the real columns are: `columns` = slice(offset, offset + n_pos)."""

    tokens: tuple
    mask: jax.Array | None
    metric: metrics.Metric
    columns: slice


def pad_to_bucket(cfg: ModelConfig, token_arrays, mask, metric, bucket: bool) -> Bucketed:
    """Pad the prompts up to `model.padding.bucket_length` so that a sweep on a new
    prompt length inside the bucket reuses its compiled program (shapes, and the
    readout position, are part of a program). Padding goes on the left (the last token
    stays in the last column, where metrics read), or on the right when `mask` already
    pads there; the mask keeps it out of every real token's computation, so real
    columns compute what they would unpadded (to float rounding). Nothing changes when
    `bucket` is False, the length is a bucket, or the metric is a plain callable (it
    reads the logits' columns itself). A prompt whose length is a bucket gets a mask
    of all True, so that it shares its program with shorter prompts."""
    n_pos = token_arrays[0].shape[1]
    length = bucket_length(n_pos, cfg.n_ctx)
    unchanged = Bucketed(tuple(token_arrays), mask, metric, slice(0, n_pos))
    if not bucket:
        return unchanged
    right = mask is not None and not np.asarray(mask)[:, -1].all()
    side = "right" if right else "left"
    moved = metrics.after_padding(metric, n_pos, length - n_pos, side)
    if moved is None:
        return unchanged
    padded = [pad_columns(t, mask, length, side) for t in token_arrays]
    offset = 0 if right else length - n_pos
    return Bucketed(
        tuple(jnp.asarray(t, jnp.int32) for t, _ in padded),
        jnp.asarray(padded[0][1]),
        moved,
        slice(offset, offset + n_pos),
    )


def check_site(site: str, cfg: ModelConfig) -> None:
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; sites are {list(SITES)}")
    if site not in available_sites(cfg):
        raise ValueError(
            f"this model has no site {site!r} (e.g. attention-only models have no MLP "
            f"sites, 0-layer models no per-layer sites); its sites are {list(available_sites(cfg))}"
        )


def site_axes(site: str) -> dict[str, int]:
    """Which sweep axes a site has, and where they sit in one layer's activation."""
    per_layer, axes = SITES[site]
    out = {}
    if per_layer:
        out["layer"] = -1  # the stacked layer axis, handled by the edit's layer selector
    for name, options in (("pos", _POS_NAMES), ("head", _HEAD_NAMES)):
        found = [i for i, a in enumerate(axes) if a in options]
        if found:
            out[name] = found[0]
    return out


def check_over(site: str, over, cfg: ModelConfig, n_pos: int) -> tuple[tuple[str, ...], tuple]:
    """Validate `over` for `site`; return it as a tuple and the grid's sizes."""
    over = (over,) if isinstance(over, str) else tuple(over)
    have = site_axes(site)
    bad = [a for a in over if a not in AXES]
    if bad or not over or len(set(over)) != len(over):
        raise ValueError(
            f"over={over!r}: give distinct axis names from {AXES}, e.g. ('layer', 'pos')"
        )
    missing = [a for a in over if a not in have]
    if missing:
        raise ValueError(f"site {site!r} has no {missing} axis to sweep over; it has {list(have)}")
    sizes = tuple(axis_size(a, site, cfg, n_pos) for a in over)
    return over, sizes


def axis_size(axis: str, site: str, cfg: ModelConfig, n_pos: int) -> int:
    if axis == "layer":
        return cfg.n_layers
    if axis == "pos":
        return n_pos
    return cfg.n_kv_heads if "kv_head" in SITES[site][1] else cfg.n_heads


def grid(sizes: tuple[int, ...], over: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Flat int32 index arrays `{axis: [cell]}`, cells in row-major order of `sizes`
    (numpy: reordering them on the host costs no device dispatches)."""
    mesh = np.meshgrid(*[np.arange(n) for n in sizes], indexing="ij")
    return {axis: m.reshape(-1).astype(np.int32) for axis, m in zip(over, mesh)}


MAX_LAYER_GROUPS = 8  # each group compiles its own stack of blocks
MAX_POSITION_GROUPS = 4  # ... and, within a layer group, its own run from a position
MAX_GROUPS = 12  # fewer position groups for deep models: compile time grows with groups
# A group saves compute but costs a compilation (0.3-1 s here for small models): a sweep
# whose work is negligible gets one. Work is estimated from the
# forward's FLOPs at a throughput typical of these vmapped runs on a 2-core CPU.
COMPILE_S_PER_GROUP = 0.1  # a group compiles in 0.3-1 s but saves on every later call
ASSUMED_FLOP_PER_S = 50e9
# Each group's loop over blocks holds its own copy of one layer's weights (XLA slices a
# layer out of the stacked weights into a buffer of the loop's own): a group costs about
# one layer's weights in memory. Measured on Gemma 2 2B: 8 groups added ~3.8 GiB.
GROUP_MEMORY_BYTES = 1 << 30


def forward_flop_per_token(cfg: ModelConfig, n_pos: int, logits: bool = True) -> float:
    """Multiply-adds x 2 of one token's forward pass through every block (projections,
    MLP, and attention over `n_pos / 2` keys on average), plus its unembedding when
    `logits`. An estimate for budgeting, not a measurement."""
    d, h, kv, e = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    attn = d * (h + 2 * kv) * e + h * e * d + 2 * h * e * (n_pos / 2)
    mlp = 0 if cfg.attn_only else d * cfg.d_mlp * (3 if cfg.gated_mlp else 2)
    return 2.0 * (cfg.n_layers * (attn + mlp) + (d * cfg.d_vocab if logits else 0))


def group_budget(cfg: ModelConfig, n_cells: int, tokens: tuple[int, int], logits: bool) -> int:
    """How many start groups a sweep of `n_cells` cells on `tokens = (batch, pos)` may
    compile: one per `COMPILE_S_PER_GROUP` of estimated work, as many as one layer's
    weights fit `GROUP_MEMORY_BYTES` times, between 1 and `MAX_GROUPS`."""
    batch, n_pos = tokens
    work_s = n_cells * batch * n_pos * forward_flop_per_token(cfg, n_pos, logits)
    work_s /= ASSUMED_FLOP_PER_S
    d, e, m = cfg.d_model, cfg.d_head, 0 if cfg.attn_only else cfg.d_mlp
    layer_params = d * e * (2 * cfg.n_heads + 2 * cfg.n_kv_heads) + d * m * (
        3 if cfg.gated_mlp else 2
    )
    itemsize = np.dtype(jnp.dtype(cfg.activation_dtype)).itemsize
    by_memory = GROUP_MEMORY_BYTES // max(1, layer_params * itemsize)
    return int(np.clip(min(work_s // COMPILE_S_PER_GROUP, by_memory), 1, MAX_GROUPS))


def _group_starts(index: np.ndarray, n: int, max_groups: int) -> np.ndarray:
    """The start of each index's group, for at most `max_groups` evenly spaced starts
    over `range(n)` (an index belongs to the last start <= it)."""
    starts = np.unique(np.linspace(0, n, max_groups + 1).astype(int)[:-1])
    return starts[np.searchsorted(starts, index, side="right") - 1]


def start_groups(
    cells: dict[str, np.ndarray],
    site: str,
    cfg: ModelConfig,
    last_start=None,
    max_groups: int = MAX_GROUPS,
):
    """Group a sweep's cells by where their patched run starts: a block and a position.

    A cell patching layer l re-runs blocks l .. n_layers - 1 only; one patching position
    p, when only some positions' logits are read, computes only positions from p on
    (earlier positions' keys and values come from the unpatched run: `model.transformer.run_from`'s
    `prefix`). Start layers are grouped into at most `MAX_LAYER_GROUPS` evenly spaced
    starts and start positions into at most `MAX_POSITION_GROUPS`, and `max_groups` in
    all (a cell starts at the last group start <= its index), so compile time stays
    bounded (`group_budget`: small sweeps get one group). Cells without a layer (model-wide sites, `layer` not swept) start at block
    0; positions are skipped only for per-layer sites with `pos` swept, and never past
    `last_start` (the first position read; None: no skipping).

    Returns `(order, groups)`: `order` [cell] (numpy) lists the cells group by group;
    `groups` is `((first_layer, first_pos, n_cells), ...)` in that order.
    """
    n_cells = len(next(iter(cells.values())))
    first_layer = np.zeros(n_cells, np.int64)
    first_pos = np.zeros(n_cells, np.int64)
    max_groups = max(1, min(max_groups, MAX_GROUPS))
    if is_per_layer(site) and "layer" in cells:
        n_groups = min(MAX_LAYER_GROUPS, max_groups)
        first_layer = _group_starts(np.asarray(cells["layer"]), cfg.n_layers, n_groups)
    if is_per_layer(site) and "pos" in cells and last_start is not None:
        pos = np.asarray(cells["pos"])
        n_groups = min(MAX_POSITION_GROUPS, max_groups // len(np.unique(first_layer)))
        first_pos = _group_starts(pos, int(pos.max()) + 1, max(1, n_groups))
        first_pos = np.minimum(first_pos, last_start)
    order = np.lexsort((first_pos, first_layer))
    pairs = np.stack([first_layer[order], first_pos[order]], axis=1)
    starts, counts = np.unique(pairs, axis=0, return_counts=True)
    groups = tuple((int(l), int(p), int(n)) for (l, p), n in zip(starts, counts))
    return order, groups


def run_pair(
    params, clean, corrupted, cfg: ModelConfig, capture: tuple[str, ...], readout=None, mask=None
):
    """Clean and corrupted runs as one batched forward pass (inside jit): returns
    `(clean_logits, clean_acts), (corrupted_logits, corrupted_acts)`, the logits only at
    the positions `readout` when given (`model.transformer.run_from`). `mask [batch,
    pos]`: the padding both runs share."""
    n = clean.shape[0]
    pair_mask = None if mask is None else jnp.concatenate([mask, mask])
    logits, acts = run(
        params,
        jnp.concatenate([clean, corrupted]),
        cfg,
        capture=capture,
        readout=readout,
        mask=pair_mask,
    )

    def split(name, x, part):
        axis = 1 if is_per_layer(name) else 0
        return jax.lax.slice_in_dim(x, part * n, (part + 1) * n, axis=axis)

    return tuple(
        (logits[part * n : (part + 1) * n], {k: split(k, v, part) for k, v in acts.items()})
        for part in (0, 1)
    )


AUTO_CHUNK_TOKENS = 4096  # tokens per vmapped chunk of cells under chunk_size="auto"


def map_cells(fn, cells, chunk_size: int | None):
    """`fn` over the cells' leading axis: one `vmap`, or `lax.map` over vmapped chunks
    of about `chunk_size` cells (still one compiled call). The cells are split into
    equal chunks, the last padded with copies of the final cell (whose results are
    dropped): `lax.map(..., batch_size=)` would compile a second copy of `fn` for the
    remainder, doubling compile time.

    Under a mesh (`mechjax.model.sharding.use_mesh`) each chunk's cells are split over
    the mesh's `data` axis (chunks rounded up to a multiple of its size): every device
    runs its share of the cells."""
    n_cells = len(jax.tree_util.tree_leaves(cells)[0])
    n_devices = sharding.cell_devices()
    if (chunk_size is None or chunk_size >= n_cells) and n_devices == 1:
        return jax.vmap(fn)(cells)
    n_chunks = 1 if chunk_size is None else -(-n_cells // chunk_size)
    chunk = -(-n_cells // n_chunks)  # equal chunks, as little padding as possible
    chunk = -(-chunk // n_devices) * n_devices
    n_pad = n_chunks * chunk - n_cells

    def to_chunks(x):
        x = jnp.asarray(x)
        x = jnp.concatenate([x, jnp.repeat(x[-1:], n_pad, axis=0)]) if n_pad else x
        return sharding.spread_cells(x.reshape(n_chunks, chunk, *x.shape[1:]), axis=1)

    chunks = jax.tree_util.tree_map(to_chunks, cells)
    if n_chunks == 1:
        out = jax.tree_util.tree_map(
            lambda y: y[None], jax.vmap(fn)(jax.tree_util.tree_map(lambda x: x[0], chunks))
        )
    else:
        out = jax.lax.map(jax.vmap(fn), chunks)
    return jax.tree_util.tree_map(lambda y: y.reshape(-1, *y.shape[2:])[:n_cells], out)


def check_chunk_size(chunk_size, tokens_per_cell: int) -> int | None:
    """Validate `chunk_size` (a positive int, None: every cell in one vmap, or "auto")
    and resolve "auto" to about `AUTO_CHUNK_TOKENS` tokens per chunk. On CPU, chunks of
    a few thousand tokens run 1.2-2.7x faster than one vmap over a whole sweep (whose
    activations fall out of cache; experiments/benchmarks/patching.py) and use a
    fraction of the memory."""
    if chunk_size == "auto":
        return max(1, AUTO_CHUNK_TOKENS // max(1, tokens_per_cell))
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(
            f"chunk_size must be a positive int, None (all cells at once) or 'auto', got "
            f"{chunk_size!r}"
        )
    return chunk_size


def check_mode(mode: str) -> jax.Array:
    """Validate `mode`; return it as traced data (True: denoise), so that both modes
    share one compiled program."""
    if mode not in ("denoise", "noise"):
        raise ValueError(
            f"mode={mode!r}: use 'denoise' (corrupted run, clean values patched in) or "
            "'noise' (clean run, corrupted values patched in)"
        )
    return jnp.asarray(mode == "denoise")


def pick(flag: jax.Array, if_true, if_false):
    """`if_true` where the traced bool `flag` holds, else `if_false` (pytrees)."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(flag, a, b), if_true, if_false)
