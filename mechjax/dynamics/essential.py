"""Essential dynamics (Hoogland et al. 2024, "The developmental landscape of in-context
learning"): the principal components of a model's outputs across training checkpoints,
the trajectory's turning points, and stage boundaries proposed where the trajectory and
the LLC curve change character together.

    outputs = model_outputs(params_by_checkpoint, cfg, tokens)    # [checkpoint, feature]
    ed = essential_dynamics(steps, outputs, llc=(llc_steps, llc_values))
    ed.trajectory, ed.turning_points, ed.stage_boundaries

The outputs are what the paper projects: the model's log-probabilities on a fixed set
of tokens (`model_outputs`), or any other fixed per-checkpoint vector, such as the
per-token losses every run already stores (`per_token_loss.npz`). The PCA is
`dynamics.pca.per_token_loss_pca` (the same centring, SVD and sign convention).

Turning points. The trajectory in the first components is smoothed over ln(step)
(`phase.smooth_log_steps`); at each interior checkpoint the turning angle is the angle
between the chord arriving from the checkpoint `span` earlier in ln(step) and the one
leaving to the checkpoint `span` later. A turning point is a local
maximum of that angle above `min_angle` degrees, among checkpoints where the trajectory
moves (each displacement at least `min_move` of the longest one): a stage boundary
in the paper's sense, where the direction of development changes. LLC critical
points are where the smoothed LLC's slope over ln(step) changes sign (a peak or a
trough, where the LLC stops rising or falling). A stage boundary is proposed at each
turning point, marked "both" when an LLC critical point lies within `tolerance`
(in ln(step)) of it, and at each LLC critical point no turning point is near
("llc").
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .pca import per_token_loss_pca
from .phase import smooth_log_steps


@dataclasses.dataclass
class EssentialDynamics:
    """steps `[checkpoint]`; trajectory `[checkpoint, component]` (smoothed: `smoothed`);
    explained_variance_ratio `[component]`; turning_angle `[checkpoint]` in degrees
    (NaN at the ends and where the trajectory does not move); turning_points: the steps
    of the turning points; llc_critical_points: steps; stage_boundaries: `[{"step",
    "evidence": "both" | "trajectory" | "llc"}]`, in step order."""

    steps: np.ndarray
    trajectory: np.ndarray
    smoothed: np.ndarray
    explained_variance_ratio: np.ndarray
    turning_angle: np.ndarray
    turning_points: list[int]
    llc_critical_points: list[int]
    stage_boundaries: list[dict]


def essential_dynamics(
    steps,
    outputs,
    *,
    n_components: int = 3,
    llc=None,
    min_angle: float = 45.0,
    min_move: float = 0.05,
    tolerance: float = 0.35,
    bandwidth: float = 0.15,
    span: float = 0.5,
) -> EssentialDynamics:
    """Essential dynamics of `outputs [checkpoint, feature]` at `steps [checkpoint]`
    (positive, increasing). `llc`: optional `(steps, values)` of the LLC over training,
    whose critical points join the stage boundaries."""
    steps = np.asarray(steps, np.float64)
    outputs = np.asarray(outputs, np.float64)
    if outputs.ndim != 2 or len(outputs) != len(steps):
        raise ValueError(
            f"outputs must be [checkpoint, feature] with one row per step (got {outputs.shape} "
            f"for {len(steps)} steps)"
        )
    if len(steps) < 4 or not (np.diff(steps) > 0).all() or steps[0] <= 0:
        raise ValueError("need at least 4 checkpoints at positive, increasing steps")
    k = min(n_components, len(steps) - 1, outputs.shape[1])
    pca = per_token_loss_pca([outputs], n_components=k)
    trajectory = pca.trajectories[0]
    smoothed = np.stack(
        [smooth_log_steps(steps, trajectory[:, c], bandwidth) for c in range(k)], axis=1
    )
    angle = turning_angles(smoothed, min_move, x=np.log(steps), span=span)
    turning = [int(steps[i]) for i in local_maxima(angle, min_angle)]
    critical = [] if llc is None else llc_critical_points(*llc, bandwidth=bandwidth)
    return EssentialDynamics(
        steps=steps,
        trajectory=trajectory,
        smoothed=smoothed,
        explained_variance_ratio=pca.explained_variance_ratio,
        turning_angle=angle,
        turning_points=turning,
        llc_critical_points=critical,
        stage_boundaries=propose_stages(turning, critical, tolerance),
    )


def turning_angles(
    points: np.ndarray, min_move: float = 0.05, x=None, span: float = 0.0
) -> np.ndarray:
    """`[point]` the angle in degrees at each interior point of the path `points
    [point, dim]` between the chord arriving and the chord leaving. With positions `x`
    (ln step) and `span` > 0 the chords reach the nearest points at least `span` away
    on either side (a corner spread over a few checkpoints by smoothing still reads as
    one turn); otherwise they are the neighbouring displacements. NaN where a chord is
    missing or shorter than `min_move` times the longest displacement."""
    n = len(points)
    x = np.arange(n, dtype=np.float64) if x is None else np.asarray(x, np.float64)
    longest = max(np.linalg.norm(np.diff(points, axis=0), axis=1).max(), 1e-300)
    angle = np.full(n, np.nan)
    for i in range(1, n - 1):
        before = [j for j in range(i) if x[i] - x[j] >= span]
        after = [k for k in range(i + 1, n) if x[k] - x[i] >= span]
        if not before or not after:
            continue
        a, b = points[i] - points[before[-1]], points[after[0]] - points[i]
        la, lb = np.linalg.norm(a), np.linalg.norm(b)
        if min(la, lb) < min_move * longest:
            continue
        angle[i] = np.degrees(np.arccos(np.clip(a @ b / (la * lb), -1.0, 1.0)))
    return angle


def local_maxima(values: np.ndarray, threshold: float) -> list[int]:
    """Indices where `values` (NaN ignored) is at least `threshold` and no smaller than
    either neighbour."""
    found = []
    for i in range(len(values)):
        v = values[i]
        if not np.isfinite(v) or v < threshold:
            continue
        left = values[i - 1] if i > 0 else -np.inf
        right = values[i + 1] if i + 1 < len(values) else -np.inf
        if v >= np.nan_to_num(left, nan=-np.inf) and v >= np.nan_to_num(right, nan=-np.inf):
            found.append(i)
    return found


def llc_critical_points(steps, values, bandwidth: float = 0.15) -> list[int]:
    """Steps where the LLC curve, smoothed over ln(step), turns: its slope changes sign
    between neighbouring checkpoints (the checkpoint nearer the zero is reported)."""
    steps = np.asarray(steps, np.float64)
    values = np.asarray(values, np.float64)
    if len(steps) < 4:
        return []
    smooth = smooth_log_steps(steps, values, bandwidth)
    slope = np.diff(smooth) / np.diff(np.log(steps))
    found = []
    for i in range(1, len(slope)):
        if slope[i - 1] * slope[i] < 0:
            found.append(int(steps[i]))
    return found


def propose_stages(turning: list[int], critical: list[int], tolerance: float) -> list[dict]:
    """Stage boundaries from trajectory turning points and LLC critical points; a pair
    within `tolerance` in ln(step) is one boundary with evidence "both"."""
    boundaries = []
    used = set()
    for step in turning:
        near = [c for c in critical if abs(np.log(c) - np.log(step)) <= tolerance]
        used.update(near)
        boundaries.append({"step": step, "evidence": "both" if near else "trajectory"})
    boundaries += [{"step": c, "evidence": "llc"} for c in critical if c not in used]
    return sorted(boundaries, key=lambda b: b["step"])


def model_outputs(params_by_checkpoint, cfg, tokens, positions: int = 8) -> np.ndarray:
    """`[checkpoint, feature]`: each checkpoint's log-probabilities over the vocabulary
    at `positions` evenly spaced positions of each fixed sequence in `tokens [n, pos]`
    (the outputs Hoogland et al. project; a fixed subset of positions keeps the matrix
    small for long contexts)."""
    import jax

    from ..model.transformer import forward

    tokens = np.asarray(tokens)
    at = np.unique(np.linspace(0, tokens.shape[1] - 1, positions).round().astype(int))
    rows = []
    for params in params_by_checkpoint:
        logits = forward(params, tokens, cfg)[:, at]
        rows.append(np.asarray(jax.nn.log_softmax(logits, axis=-1)).reshape(-1))
    return np.stack(rows)
