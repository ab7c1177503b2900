"""Site hooks: what the forward pass does at every named site (`sites.py`) of one
block or of the model's top: apply the edits aimed at the site, keep them off padding
positions, and record the site when it is captured. Capture and edits are the same
mechanism.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .edits import Edit
from .sites import SITES

# sites of a block computed before its queries, at every position even in a readout run
BEFORE_QUERIES = ("resid_pre", "ln1_scale", "k", "v")


class SiteHooks:
    """Applies the edits aimed at each site and records the sites being captured.

    valid / query_valid: `[batch, pos]` bools, False at padding, for the positions the
    sites hold (query_valid for the sites computed at the query rows only, when a run
    computes fewer of them): an edit never changes a padding position."""

    def __init__(
        self,
        capture: tuple[str, ...],
        edits: tuple[Edit, ...],
        layer_index=None,
        valid=None,
        query_valid=None,
    ):
        self.capture = capture
        self.edits = edits
        self.layer_index = layer_index
        self.valid = valid
        self.query_valid = valid if query_valid is None else query_valid
        self.captured: dict[str, jax.Array] = {}

    def wants(self, name: str) -> bool:
        return name in self.capture or any(e.site == name for e in self.edits)

    def __call__(self, name: str, value: jax.Array) -> jax.Array:
        for edit in self.edits:
            if edit.site == name:
                edited = edit.apply(value, self.layer_index)
                value = edited if self.valid is None else self._keep_padding(name, value, edited)
        if name in self.capture:
            self.captured[name] = value
        return value

    def _keep_padding(self, name: str, before: jax.Array, after: jax.Array) -> jax.Array:
        axes = SITES[name][1]
        valid = self.valid if name in BEFORE_QUERIES else self.query_valid
        axis = next(i for i, a in enumerate(axes) if a in ("pos", "query_pos"))
        shape = [1] * before.ndim
        shape[0], shape[axis] = valid.shape
        return jnp.where(valid.reshape(shape), after, before)

    def record(self, name: str, value: jax.Array) -> None:
        if name in self.capture:
            self.captured[name] = value
