"""Per-token-loss PCA: training trajectories of one or several runs in one shared basis.

Olsson et al. 2022 ("In-context Learning and Induction Heads", the per-token loss
analysis): fix N examples and one token index per example; at every snapshot of a model,
the losses at those N tokens form a vector. Stack the vectors of all snapshots of all
compared models into one matrix `[snapshot, example]`, center it (subtract the mean
snapshot), and project every snapshot on the first principal components. Trajectories
pivot inside the phase-change window.

The principal components are the right singular vectors of the centered matrix (SVD).
Sign convention, so that the same data always gives the same picture: each component is
oriented so that its loadings sum to a positive number (a higher coordinate means a
higher total loss on the fixed tokens); when that sum is zero to rounding, its
largest-magnitude loading is made positive instead.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class PCAResult:
    """Per-token-loss PCA of several runs in one basis.

    trajectories: per run, `[snapshot_i, component]` coordinates of its snapshots.
    components: `[component, example]` unit principal directions (rows orthonormal).
    explained_variance_ratio: `[component]` share of the total variance of the stacked,
        centered matrix along each component.
    explained_variance: `[component]` variance along each component (denominator M - 1,
        M = snapshots of all runs together).
    mean: `[example]` the mean snapshot that was subtracted.
    """

    trajectories: list[np.ndarray]
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    explained_variance: np.ndarray
    mean: np.ndarray

    @property
    def n_components(self) -> int:
        return self.components.shape[0]

    def transform(self, losses: np.ndarray) -> np.ndarray:
        """Project `losses [snapshot, example]` into this basis -> `[snapshot, component]`."""
        losses = np.asarray(losses, dtype=np.float64)
        if losses.ndim != 2 or losses.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"transform expects losses [snapshot, {self.mean.shape[0]}] (the examples "
                f"of the fitted runs), got shape {losses.shape}"
            )
        return (losses - self.mean) @ self.components.T


def per_token_loss_pca(snapshots: Sequence[np.ndarray], n_components: int = 2) -> PCAResult:
    """Fit PCA on the stacked per-token losses of several runs.

    Args:
      snapshots: one array per run, `losses [snapshot_i, example]` (nats); all runs must
        use the same N examples in the same order (the same fixed eval tokens).
      n_components: number of principal components k, 1 <= k <= min(M - 1, N) with
        M the total number of snapshots (centering removes one dimension).

    Returns a `PCAResult` whose `trajectories[i]` is `[snapshot_i, k]`.
    """
    runs = _check_snapshots(snapshots)
    stacked = np.concatenate(runs, axis=0)  # [snapshot (all runs), example]
    total, n_examples = stacked.shape
    if not isinstance(n_components, (int, np.integer)) or isinstance(n_components, bool):
        raise ValueError(f"n_components must be an integer, got {n_components!r}")
    limit = min(total - 1, n_examples)
    if not 1 <= n_components <= limit:
        raise ValueError(
            f"n_components={n_components} is out of range: {total} snapshots of {n_examples} "
            f"examples give at most min(snapshots - 1, examples) = {limit} components; "
            "ask for fewer components or record more snapshots"
        )
    mean = stacked.mean(axis=0)
    centered = stacked - mean
    _, singular, vt = np.linalg.svd(centered, full_matrices=False)
    total_var = float(np.sum(singular**2))
    if not total_var > 0:
        raise ValueError(
            "all snapshots have identical per-token losses, so there is no variance to "
            "analyse; record snapshots at different training steps"
        )
    components = _orient(vt[:n_components])
    variance = singular[:n_components] ** 2
    trajectories = [(run - mean) @ components.T for run in runs]
    return PCAResult(
        trajectories=trajectories,
        components=components,
        explained_variance_ratio=variance / total_var,
        explained_variance=variance / (total - 1),
        mean=mean,
    )


def _check_snapshots(snapshots: Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(snapshots, np.ndarray):
        raise ValueError(
            "snapshots must be a list with one [snapshot, example] array per run; wrap a "
            "single run's array in a list: per_token_loss_pca([losses])"
        )
    runs = [np.asarray(run, dtype=np.float64) for run in snapshots]
    if not runs:
        raise ValueError("snapshots is empty; pass one [snapshot, example] array per run")
    for i, run in enumerate(runs):
        if run.ndim != 2 or run.shape[0] == 0 or run.shape[1] == 0:
            raise ValueError(
                f"snapshots[{i}] must be a non-empty 2-D array [snapshot, example], "
                f"got shape {run.shape}"
            )
        if not np.isfinite(run).all():
            raise ValueError(
                f"snapshots[{i}] contains NaN or infinite losses; drop the snapshots "
                "taken after training diverged"
            )
    widths = {run.shape[1] for run in runs}
    if len(widths) != 1:
        raise ValueError(
            f"runs have different numbers of examples {[r.shape[1] for r in runs]}; "
            "compare runs evaluated on the same fixed tokens"
        )
    return runs


def _orient(components: np.ndarray) -> np.ndarray:
    """Flip each row `[example]` so its loadings sum positive (see module docstring)."""
    out = components.copy()
    for row in out:
        total = row.sum()
        if abs(total) <= 1e-9 * np.abs(row).sum():
            total = row[np.argmax(np.abs(row))]
        if total < 0:
            row *= -1
    return out
