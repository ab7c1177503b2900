"""Interventions as data.

An `Edit` is a pytree: a static site name plus arrays saying where (layer, position,
head selectors) and what. Inside the selection

    act <- scale * f(act; params) + value

where `f` is the identity unless the edit carries a function (`transform`). Because an
edit is data, `jax.vmap` over a batch of edits runs every intervention in one compiled
call, and `jax.grad` flows through `scale`, `value` and `params`.

Every ablation, patch and steer is the affine rule (`f` the identity):

| builder         | scale  | value                                   |
|-----------------|--------|-----------------------------------------|
| `zero_ablate`   | 0      | 0                                       |
| `mean_ablate`   | 0      | mean of a reference run's activation    |
| `patch`         | 0      | another run's activation (resampling)   |
| `steer`         | 1      | coeff * vector                          |
| `scale`         | factor | 0                                       |

Selectors are integer indices (a scalar or a 1-D array; traced values work, so sweeps
vmap over them) or None for "all". `pos` picks the query position of `scores`/`pattern`;
`head` picks the key/value head at `k` and `v`. Edits at `scores` act before the causal
/ sliding-window mask, so masked keys stay masked (zero-ablating the scores gives
uniform attention over the allowed keys). `value` broadcasts against one layer's
activation; when `value_has_layer_axis` it carries a leading `layer` axis (as captured
activations do) and layer `l` uses `value[l]`.

The generic edit, `transform(site, fn, params)`, replaces the selection with
`fn(act, params)`: any pure function of one layer's activation with array parameters —
splicing in a sparse autoencoder's reconstruction, projecting out a concept (LEACE), a
rank-one rewrite. `fn` is static (define it once, not as a new lambda per call, or
every call compiles anew); `params` is a pytree of arrays, traced, so a batch of edits
with stacked params vmaps and gradients reach the params; with `params_have_layer_axis`
every leaf carries a leading `layer` axis and layer `l` uses leaf `[l]`. `fn` must act
on each position independently (as all of these do): runs that compute only some
positions (readouts, key/value prefixes) hand it those positions only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .config import ModelConfig
from .sites import SITES, available_sites


@struct.dataclass
class Edit:
    site: str = struct.field(pytree_node=False)
    layer: jax.Array | None = None  # int indices, None = every layer
    pos: jax.Array | None = None
    head: jax.Array | None = None
    scale: jax.Array = 1.0
    value: jax.Array = 0.0
    value_has_layer_axis: bool = struct.field(pytree_node=False, default=False)
    # the absolute positions the edited activation's `pos` axis holds, when a run
    # computes only some positions (`model.transformer.run_from`'s readout); None: all of them
    positions: tuple[int, ...] | None = struct.field(pytree_node=False, default=None)
    # the generic edit: act -> fn(act, params) before the affine rule (None: identity)
    fn: Callable[[jax.Array, Any], jax.Array] | None = struct.field(pytree_node=False, default=None)
    params: Any = None
    params_have_layer_axis: bool = struct.field(pytree_node=False, default=False)

    # -- the rule ------------------------------------------------------------------------
    def selection(self, shape: tuple[int, ...], layer_index) -> jax.Array:
        """Boolean mask broadcastable to an activation of `shape` at `layer_index`."""
        axes = SITES[self.site][1]
        mask = jnp.ones((1,) * len(shape), bool)
        for selector, names in ((self.pos, ("pos", "query_pos")), (self.head, ("head", "kv_head"))):
            if selector is None:
                continue
            axis = next(i for i, a in enumerate(axes) if a in names)
            index = jnp.arange(shape[axis])
            if names[0] == "pos" and self.positions is not None:
                index = jnp.asarray(self.positions)
            picked = _membership(index, selector)
            mask = mask & picked.reshape([-1 if i == axis else 1 for i in range(len(shape))])
        if self.layer is not None and layer_index is not None:
            mask = mask & _membership(jnp.asarray(layer_index)[None], self.layer).reshape(())
        return mask

    def apply(self, act: jax.Array, layer_index=None) -> jax.Array:
        value = self.value
        if self.value_has_layer_axis:
            value = jnp.asarray(value)[layer_index]
        if self.positions is not None:
            value = self._value_at_positions(jnp.asarray(value), act.ndim)
        mapped = act if self.fn is None else self._mapped(act, layer_index)
        edited = jnp.asarray(self.scale, act.dtype) * mapped + jnp.asarray(value, act.dtype)
        return jnp.where(self.selection(act.shape, layer_index), edited, act)

    def _mapped(self, act: jax.Array, layer_index) -> jax.Array:
        params = self.params
        if self.params_have_layer_axis:
            params = jax.tree_util.tree_map(lambda leaf: jnp.asarray(leaf)[layer_index], params)
        out = self.fn(act, params)
        if out.shape != act.shape:
            name = getattr(self.fn, "__name__", repr(self.fn))
            raise ValueError(
                f"the function of a transform edit at {self.site!r} ({name}) returned shape "
                f"{tuple(out.shape)} for an activation of shape {tuple(act.shape)}; it must "
                "return the activation's shape"
            )
        return out.astype(act.dtype)

    def _value_at_positions(self, value: jax.Array, act_ndim: int) -> jax.Array:
        """A value laid out over every position, taken at `positions` (a value that
        broadcasts over positions stays as it is)."""
        axes = SITES[self.site][1]
        axis = next(i for i, a in enumerate(axes) if a in ("pos", "query_pos"))
        axis -= act_ndim - value.ndim  # the value broadcasts from the right
        if axis < 0 or value.shape[axis] == 1:
            return value
        return jnp.take(value, jnp.asarray(self.positions), axis=axis)

    def at_positions(self, positions: tuple[int, ...]) -> Edit:
        """This edit, for an activation computed only at `positions` (static ints)."""
        return self.replace(positions=tuple(positions))


def _membership(index_range: jax.Array, selector) -> jax.Array:
    selector = jnp.atleast_1d(jnp.asarray(selector))
    return (index_range[:, None] == selector[None, :]).any(axis=-1)


def _as_index(x):
    return None if x is None else jnp.asarray(x, jnp.int32)


def _make(site, layer, pos, head, scale, value, value_has_layer_axis=False) -> Edit:
    if site not in SITES:
        raise ValueError(f"unknown site {site!r}; sites are {list(SITES)}")
    return Edit(
        site=site,
        layer=_as_index(layer),
        pos=_as_index(pos),
        head=_as_index(head),
        scale=jnp.asarray(scale, jnp.float32),
        value=jnp.asarray(value),
        value_has_layer_axis=value_has_layer_axis,
    )


def transform(
    site: str,
    fn: Callable[[jax.Array, Any], jax.Array],
    params=None,
    *,
    layer=None,
    pos=None,
    head=None,
    params_have_layer_axis: bool = False,
) -> Edit:
    """Replace the selection with `fn(act, params)`: the generic edit.

    `act` is one layer's activation at `site` (`[batch, pos, ...]`, the site's axes);
    `fn` returns the same shape and must be a pure, position-wise function. `params` is
    any pytree of arrays (e.g. `{"W_enc": ..., "W_dec": ...}` of a sparse autoencoder,
    or a projection matrix); with `params_have_layer_axis` each leaf has a leading
    `layer` axis. Example, projecting a unit direction `u [d_model]` out of the
    residual stream at layer 3:

        def project_out(x, u):
            return x - (x @ u)[..., None] * u

        edit = transform("resid_post", project_out, u, layer=3)
    """
    if not callable(fn):
        raise ValueError(f"transform needs a function fn(act, params), got {type(fn).__name__}")
    edit = _make(site, layer, pos, head, 1.0, 0.0)
    params = jax.tree_util.tree_map(jnp.asarray, params)
    return edit.replace(fn=fn, params=params, params_have_layer_axis=params_have_layer_axis)


def zero_ablate(site: str, *, layer=None, pos=None, head=None) -> Edit:
    return _make(site, layer, pos, head, 0.0, 0.0)


def scale(site: str, factor, *, layer=None, pos=None, head=None) -> Edit:
    return _make(site, layer, pos, head, factor, 0.0)


def steer(
    site: str, vector, *, layer=None, pos=None, head=None, coeff=1.0, per_layer: bool = False
) -> Edit:
    """Add `coeff * vector` (broadcast against the activation, e.g. [d_model]); with
    `per_layer`, `vector` has a leading `layer` axis and layer `l` adds `vector[l]`."""
    return _make(site, layer, pos, head, 1.0, coeff * jnp.asarray(vector), per_layer)


def patch(site: str, source, *, layer=None, pos=None, head=None) -> Edit:
    """Replace the selection with `source`, another run's activation at this site.

    For per-layer sites `source` is the captured stack `[layer, batch, pos, ...]`.
    Resample-ablation is a patch from a run on other inputs (see `resample`).
    """
    return _make(site, layer, pos, head, 0.0, source, SITES.get(site, (False,))[0])


def resample(site: str, source, *, key=None, layer=None, pos=None, head=None) -> Edit:
    """Resample-ablation: values from another run; with `key`, the batch is shuffled so
    each example receives a different example's activation (a random cyclic order, so
    no example keeps its own; with a batch of one it necessarily does)."""
    source = jnp.asarray(source)
    if key is not None:
        batch_axis = 1 if SITES[site][0] else 0
        n = source.shape[batch_axis]
        # a plain permutation may leave examples in place: walk a random cycle instead,
        # example order[i] receiving example order[i + 1]
        order = jax.random.permutation(key, n)
        perm = jnp.zeros(n, jnp.int32).at[order].set(jnp.roll(order, -1).astype(jnp.int32))
        source = jnp.take(source, perm, axis=batch_axis)
    return patch(site, source, layer=layer, pos=pos, head=head)


def mean_ablate(
    site: str, reference, *, layer=None, pos=None, head=None, over_positions=False
) -> Edit:
    """Replace with the mean of `reference` (a captured activation) over the batch
    (and positions, with `over_positions`, for inputs of another length)."""
    reference = jnp.asarray(reference)
    per_layer = SITES[site][0]
    axes = SITES[site][1]
    offset = 1 if per_layer else 0
    reduce = [offset + axes.index("batch")]
    if over_positions:
        reduce += [offset + i for i, a in enumerate(axes) if a in ("pos", "query_pos")]
    mean = reference.mean(axis=tuple(reduce), keepdims=True)
    return _make(site, layer, pos, head, 0.0, mean, per_layer)


def check_edits(edits: Sequence[Edit], cfg: ModelConfig, n_pos: int | None = None) -> None:
    """Validate edits before compiling: sites exist in this model, indices in range
    (positions too, when the input length `n_pos` is given)."""
    sites = available_sites(cfg)
    for i, edit in enumerate(edits):
        if not isinstance(edit, Edit):
            raise ValueError(f"edits[{i}] is a {type(edit).__name__}, not a mechjax Edit")
        if edit.site not in sites:
            raise ValueError(
                f"edits[{i}] targets site {edit.site!r}, which this model does not have; "
                f"its sites are {list(sites)}"
            )
        per_layer = SITES[edit.site][0]
        axes = SITES[edit.site][1]
        limits = {"layer": cfg.n_layers if per_layer else None}
        limits["head"] = (
            cfg.n_kv_heads if "kv_head" in axes else (cfg.n_heads if "head" in axes else None)
        )
        has_pos = "pos" in axes or "query_pos" in axes
        limits["pos"] = (n_pos or np.iinfo(np.int32).max) if has_pos else None
        for name, limit in limits.items():
            selector = getattr(edit, name)
            if selector is None:
                continue
            if limit is None:
                raise ValueError(
                    f"edits[{i}]: site {edit.site!r} has no {name} axis; drop `{name}=`"
                )
            if isinstance(selector, jax.core.Tracer):
                continue
            values = np.asarray(selector)
            if values.size and (values.min() < 0 or values.max() >= limit):
                raise ValueError(
                    f"edits[{i}]: {name} index {values.tolist()} out of range for site "
                    f"{edit.site!r} (valid: 0..{limit - 1})"
                )
        if edit.params_have_layer_axis:
            for leaf in jax.tree_util.tree_leaves(edit.params):
                if not isinstance(leaf, jax.core.Tracer) and (
                    np.ndim(leaf) == 0 or np.shape(leaf)[0] != cfg.n_layers
                ):
                    raise ValueError(
                        f"edits[{i}]: params_have_layer_axis, but a params leaf of the "
                        f"transform at {edit.site!r} has shape {np.shape(leaf)}; each leaf "
                        f"needs a leading layer axis of {cfg.n_layers}"
                    )
        if edit.value_has_layer_axis and not isinstance(edit.value, jax.core.Tracer):
            if np.ndim(edit.value) == 0 or np.shape(edit.value)[0] != cfg.n_layers:
                raise ValueError(
                    f"edits[{i}]: value for per-layer site {edit.site!r} must have a leading "
                    f"layer axis of {cfg.n_layers} (as captured by run_with_stream), "
                    f"got shape {np.shape(edit.value)}"
                )
