"""Training figures of a run (matplotlib, no pyplot).

Every function builds a `matplotlib.figure.Figure` without touching pyplot's global
state or the interactive backend (so importing this module in a notebook changes
nothing), saves it as PNG when `path` is given, and returns it. Steps are drawn on a
log axis, so evaluations at step 0 are left out of step-axis plots. A detected phase
change (`mechjax.dynamics.phase.PhaseChangeResult`) is shaded as a band with its steepest point dashed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..dynamics.pca import PCAResult
from ..dynamics.phase import PhaseChangeResult
from ..io.runs import FinalPattern, Run

# PNG_SOFTWARE now lives in figures; still importable from here
from .figures import colormap, finish_figure, new_figure

BAND_COLOR = "tab:orange"
RUN_COLORS = ("tab:blue", "tab:red", "tab:green", "tab:purple", "tab:brown", "tab:pink")


def _positive(steps: np.ndarray, *series: np.ndarray):
    """Drop step-0 evaluations (not drawable on a log axis)."""
    keep = steps > 0
    return (steps[keep], *(s[keep] for s in series))


def _band(ax, phase: PhaseChangeResult | None):
    """Shade the phase-change window; returns the band (for legends) or None."""
    if phase is None:
        return None
    text = f"phase change ({phase.start:,}-{phase.end:,})"
    band = ax.axvspan(phase.start, phase.end, color=BAND_COLOR, alpha=0.18, lw=0, label=text)
    ax.axvline(phase.steepest, color=BAND_COLOR, ls="--", lw=1.2)
    return band


def _legend(ax, **kwargs) -> None:
    """A legend, when anything drawn has a label (matplotlib warns otherwise)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, **kwargs)


def _step_axis(ax, xlabel: str = "training step") -> None:
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.grid(True, which="major", alpha=0.3)


def plot_loss(run: Run, phase: PhaseChangeResult | None = None, path=None) -> Figure:
    """Train and eval loss vs step (log x), phase-change band shaded."""
    fig, ax = new_figure()
    for key, name, style in (("train_loss", "train", "-"), ("eval_loss", "eval", "o-")):
        values = run.series(key)
        if values is None:
            continue
        steps, values = _positive(run.steps, values)
        ok = np.isfinite(values)
        ax.plot(steps[ok], values[ok], style, ms=3, lw=1.3, label=f"{name} loss")
    _band(ax, phase)
    _step_axis(ax)
    ax.set_ylabel("loss (nats / token)")
    ax.set_title(f"Loss — {run.label}")
    _legend(ax, loc="best")
    return finish_figure(fig, path)


def plot_icl(run: Run, phase: PhaseChangeResult | None = None, path=None) -> Figure:
    """ICL score vs step with the phase-change band; best induction score on a right axis."""
    fig, ax = new_figure()
    icl = run.series("icl_score")
    handles = []
    if icl is not None:
        steps, icl = _positive(run.steps, icl)
        handles += ax.plot(steps, icl, "o-", ms=3, color="tab:blue", label="ICL score")
    ax.axhline(0.0, color="0.5", lw=0.8)  # no in-context learning
    band = _band(ax, phase)
    _step_axis(ax)
    ax.set_ylabel(f"ICL score (nats){_icl_indices_text(run)}")
    best = run.best_induction_score()
    if best is not None:
        steps, best = _positive(run.steps, best)
        twin = ax.twinx()
        handles += twin.plot(
            steps, best, "s-", ms=2.5, lw=1, color="tab:green", label="best induction score"
        )
        twin.set_ylim(0, 1)
        twin.set_ylabel("best induction score", color="tab:green")
    if band is not None:
        handles.append(band)
    if handles:
        ax.legend(handles=handles, loc="center left", fontsize=8)
    ax.set_title(f"In-context learning — {run.label}")
    return finish_figure(fig, path)


def _icl_indices_text(run: Run) -> str:
    indices = run.final("icl_indices")
    if indices is None or not np.isfinite(indices).all():
        return ""
    early, late = (int(i) for i in indices)
    return f": loss@{late} − loss@{early}"


def plot_head_scores(
    run: Run, score: str = "induction", phase: PhaseChangeResult | None = None, path=None
) -> Figure:
    """Heat map of a per-head score `[eval, layer, head]` over training.

    x: training step (log; each cell spans half-way to its neighbours), y: "L{l}H{h}".
    """
    scores = run.series(score)
    if scores is None or scores.ndim != 3 or scores[0].size == 0:
        raise ValueError(
            f"run {run.label!r} has no per-head '{score}' scores to draw; heads exist only "
            "in models with at least one layer"
        )
    steps, scores = _positive(run.steps, scores)
    if len(steps) < 1:
        raise ValueError(f"run {run.label!r} has no evaluation after step 0 to draw")
    n_layers, n_heads = scores.shape[1:]
    grid = scores.reshape(len(steps), n_layers * n_heads).T  # [layer*head, eval]
    fig, ax = new_figure(7.0, 1.4 + 0.22 * n_layers * n_heads)
    mesh = ax.pcolormesh(
        _log_edges(steps),
        np.arange(n_layers * n_heads + 1) - 0.5,
        grid,
        cmap="viridis",
        vmin=0.0,
        vmax=max(1.0, float(np.nanmax(grid))),
        shading="flat",
    )
    ax.set_yticks(range(n_layers * n_heads))
    ax.set_yticklabels([f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)], fontsize=7)
    ax.invert_yaxis()
    if phase is not None:
        for step in (phase.start, phase.end):
            ax.axvline(step, color="white", ls="--", lw=1.2)
    _step_axis(ax)
    ax.grid(False)
    fig.colorbar(mesh, ax=ax, label=f"{score.replace('_', '-')} score")
    ax.set_title(f"Per-head {score.replace('_', ' ')} score over training — {run.label}")
    return finish_figure(fig, path)


def _log_edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges for values at `steps` on a log axis: geometric midpoints."""
    x = np.log(steps.astype(np.float64))
    if len(x) == 1:
        return np.exp(np.array([x[0] - 0.1, x[0] + 0.1]))
    mid = (x[1:] + x[:-1]) / 2
    return np.exp(np.concatenate([[2 * x[0] - mid[0]], mid, [2 * x[-1] - mid[-1]]]))


def pick_evals(steps: np.ndarray, phase: PhaseChangeResult | None, n: int = 5) -> list[int]:
    """Indices of a few evaluations to compare: with a phase change, the first, the last
    ones before/at its start, at its steepest point, at its end, and the final one;
    otherwise `n` evaluations evenly spaced in ln(step)."""
    positive = np.flatnonzero(steps > 0)
    if positive.size == 0:
        return []
    if phase is not None:
        targets = [steps[positive[0]], phase.start, phase.steepest, phase.end, steps[-1]]
    else:
        targets = np.geomspace(steps[positive[0]], steps[-1], n)
    logs = np.log(steps[positive].astype(np.float64))
    picked = [int(positive[np.argmin(np.abs(logs - np.log(t)))]) for t in targets]
    return sorted(set(picked))


def plot_loss_by_position(
    run: Run, phase: PhaseChangeResult | None = None, evals: Sequence[int] | None = None, path=None
) -> Figure:
    """Mean eval loss vs token index (log x) at a few evaluations (`evals`: indices into
    the run's evaluations; default `pick_evals`)."""
    by_pos = run.series("loss_by_pos")
    if by_pos is None:
        raise ValueError(f"run {run.label!r} recorded no 'loss_by_pos'; nothing to draw")
    steps = run.steps
    evals = pick_evals(steps, phase) if evals is None else list(evals)
    fig, ax = new_figure()
    index = np.arange(1, by_pos.shape[1] + 1)  # token index of each column
    # early evaluations dark, late ones light
    colors = colormap("viridis")(np.linspace(0.0, 0.9, max(len(evals), 2)))
    for color, i in zip(colors, evals):
        ax.plot(
            index,
            by_pos[i],
            lw=1.4,
            color=color,
            label=f"step {steps[i]:,}{_phase_tag(steps[i], phase)}",
        )
    indices = run.final("icl_indices")
    if indices is not None and np.isfinite(indices).all():
        for position in indices:
            ax.axvline(position, color="0.6", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("token index in context")
    ax.set_ylabel("mean eval loss (nats)")
    ax.grid(True, alpha=0.3)
    _legend(ax)
    ax.set_title(f"Loss by token index — {run.label} (dotted: ICL indices)")
    return finish_figure(fig, path)


def _phase_tag(step: int, phase: PhaseChangeResult | None) -> str:
    if phase is None:
        return ""
    if step < phase.start or step > phase.end:
        return " (before)" if step < phase.start else " (after)"
    if step in (phase.start, phase.end):
        return " (window start)" if step == phase.start else " (window end)"
    return " (in window)"


def plot_attention_pattern(pattern: FinalPattern, path=None, title: str | None = None) -> Figure:
    """An attention pattern `[query_pos, key_pos]` on a repeated random sequence
    `[BOS, r_1..r_T, r_1..r_T, ...]`; dashed lines mark where each repeat starts."""
    q = pattern.pattern.shape[0]
    fig, ax = new_figure(5.6, 5.0)
    image = ax.imshow(
        pattern.pattern, cmap="Blues", vmin=0, vmax=1, origin="upper", interpolation="nearest"
    )
    if pattern.seg_len:  # each copy after the first starts at 1 + c * seg_len (BOS first)
        for start in range(1 + pattern.seg_len, q, pattern.seg_len):
            ax.axhline(start - 0.5, color="tab:red", ls="--", lw=0.8)
            ax.axvline(start - 0.5, color="tab:red", ls="--", lw=0.8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    fig.colorbar(image, ax=ax, shrink=0.8, label="attention")
    seg = f", segment length {pattern.seg_len}" if pattern.seg_len else ""
    ax.set_title(title or f"Head L{pattern.layer}H{pattern.head} on a repeated sequence{seg}")
    return finish_figure(fig, path)


def plot_pca(
    result: PCAResult,
    steps: Sequence[np.ndarray],
    labels: Sequence[str],
    phases: Sequence[PhaseChangeResult | None] | None = None,
    path=None,
) -> Figure:
    """Per-token-loss PCA trajectories (PC1 vs PC2; PC1 vs step when k = 1).

    Points are coloured by training step (shared log colour scale), each run's path is a
    line in its own colour with its label at the last snapshot, and snapshots inside the
    run's phase-change window get an orange ring.
    """
    if len(steps) != len(result.trajectories) or len(labels) != len(result.trajectories):
        raise ValueError("plot_pca needs one steps array and one label per trajectory")
    phases = list(phases) if phases is not None else [None] * len(steps)
    fig, ax = new_figure(7.0, 5.5)
    all_steps = np.concatenate([np.asarray(s) for s in steps])
    norm = LogNorm(max(all_steps.min(), 1), max(all_steps.max(), 2))
    scatter, ringed = None, False
    for i, (traj, s, label, phase) in enumerate(zip(result.trajectories, steps, labels, phases)):
        s = np.asarray(s)
        color = RUN_COLORS[i % len(RUN_COLORS)]
        x, y = (traj[:, 0], traj[:, 1]) if result.n_components > 1 else (s, traj[:, 0])
        ax.plot(x, y, "-", color=color, lw=1.2, alpha=0.7, label=label)
        scatter = ax.scatter(
            x, y, c=np.maximum(s, 1), cmap="viridis", norm=norm, s=18, zorder=3, edgecolors="none"
        )
        if phase is not None:
            inside = (s >= phase.start) & (s <= phase.end)
            ax.scatter(
                x[inside],
                y[inside],
                s=70,
                facecolors="none",
                edgecolors=BAND_COLOR,
                linewidths=1.5,
                zorder=4,
                label=None if ringed else "phase-change window",
            )
            ringed = True
        ax.annotate(
            label,
            (x[-1], y[-1]),
            textcoords="offset points",
            xytext=(5, 5),
            fontsize=8,
            color=color,
        )
    ratio = result.explained_variance_ratio
    if result.n_components > 1:
        ax.set_xlabel(f"PC1 ({ratio[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({ratio[1]:.0%} of variance)")
    else:
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(f"PC1 ({ratio[0]:.0%} of variance)")
    ax.grid(True, alpha=0.3)
    _legend(ax, loc="best")
    fig.colorbar(scatter, ax=ax, label="training step")
    ax.set_title("Per-token-loss PCA trajectories")
    return finish_figure(fig, path)


def plot_overlay(
    runs: Sequence[Run],
    key: str,
    ylabel: str,
    phases: Sequence[PhaseChangeResult | None] | None = None,
    path=None,
    title: str | None = None,
) -> Figure:
    """One metric (`key`, or "best_induction" for the best induction score) of several
    runs vs step; each run's steepest phase-change point is a dotted line in its colour."""
    phases = list(phases) if phases is not None else [None] * len(runs)
    fig, ax = new_figure()
    drawn = 0
    for i, (run, phase) in enumerate(zip(runs, phases)):
        values = run.best_induction_score() if key == "best_induction" else run.series(key)
        color = RUN_COLORS[i % len(RUN_COLORS)]
        if values is not None:
            steps, values = _positive(run.steps, values)
            ok = np.isfinite(values)
            ax.plot(steps[ok], values[ok], "o-", ms=2.5, lw=1.3, color=color, label=run.label)
            drawn += 1
        if phase is not None:
            ax.axvline(phase.steepest, color=color, ls=":", lw=1.2)
    if drawn == 0:
        ax.text(0.5, 0.5, f"no run recorded '{key}'", transform=ax.transAxes, ha="center")
    _step_axis(ax)
    ax.set_ylabel(ylabel)
    _legend(ax)
    ax.set_title(title or f"{ylabel} (dotted: steepest point of each phase change)")
    return finish_figure(fig, path)


def plot_llc(
    run: Run, records: Sequence[dict], phase: PhaseChangeResult | None = None, path=None
) -> Figure:
    """The LLC at each checkpoint (± one standard error over chains; `mechjax llc`'s
    records) on a log step axis, the best induction and previous-token scores of the
    same run on a second axis, the phase-change band shaded."""
    steps = np.asarray([r["step"] for r in records], np.float64)
    llc = np.asarray([r["llc_mean"] for r in records], np.float64)
    se = np.asarray([r["llc_se"] for r in records], np.float64)
    steps, llc, se = _positive(steps, llc, se)
    if len(steps) == 0:
        raise ValueError(f"run {run.label!r} has no LLC record after step 0 to draw")
    fig, ax = new_figure()
    ax.fill_between(steps, llc - se, llc + se, color="tab:blue", alpha=0.2, lw=0)
    ax.plot(steps, llc, "o-", color="tab:blue", ms=3, label="LLC (± se)")
    ax.set_ylabel("local learning coefficient")
    _band(ax, phase)
    twin = ax.twinx()
    for score, color in (("induction", "tab:red"), ("previous_token", "tab:green")):
        values = run.series(score)
        if values is None or values.ndim != 3 or values[0].size == 0:
            continue
        s, best = _positive(run.steps, values.reshape(len(values), -1).max(axis=1))
        twin.plot(s, best, color=color, lw=1, alpha=0.8, label=f"best {score.replace('_', '-')}")
    twin.set_ylabel("head score")
    twin.set_ylim(0, 1.05)
    handles = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    if handles[0] or more[0]:
        ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper left")
    _step_axis(ax)
    ax.set_title(f"LLC over training — {run.label}")
    return finish_figure(fig, path)


def plot_essential_dynamics(ed, phase: PhaseChangeResult | None = None, path=None) -> Figure:
    """The essential-dynamics trajectory (`dynamics.essential.EssentialDynamics`) in its
    first two components, coloured by step, turning points circled and stage boundaries
    listed; checkpoints inside the phase-change window drawn larger."""
    fig, ax = new_figure()
    points = ed.smoothed[:, :2] if ed.smoothed.shape[1] > 1 else np.c_[ed.smoothed, 0 * ed.steps]
    ax.plot(points[:, 0], points[:, 1], color="0.6", lw=1, zorder=1)
    inside = (
        np.zeros(len(ed.steps), bool)
        if phase is None
        else (ed.steps >= phase.start) & (ed.steps <= phase.end)
    )
    dots = ax.scatter(
        points[:, 0], points[:, 1], c=ed.steps, cmap=colormap("viridis"), norm=LogNorm(),
        s=np.where(inside, 40, 14), zorder=2,
    )  # fmt: skip
    for step in ed.turning_points:
        i = int(np.argmin(np.abs(ed.steps - step)))
        ax.scatter(*points[i], s=140, facecolors="none", edgecolors="k", zorder=3)
        ax.annotate(f"{step:,}", points[i], textcoords="offset points", xytext=(6, 6), fontsize=7)
    fig.colorbar(dots, ax=ax, label="training step")
    ratio = ed.explained_variance_ratio
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
    if len(ratio) > 1:
        ax.set_ylabel(f"PC2 ({ratio[1]:.0%})")
    stages = ", ".join(f"{b['step']:,} ({b['evidence']})" for b in ed.stage_boundaries)
    ax.set_title("Essential dynamics" + (f": boundaries at {stages}" if stages else ""), fontsize=9)
    return finish_figure(fig, path)


def plot_llc_overlay(
    runs: Sequence[Run],
    records: Sequence[Sequence[dict]],
    phases: Sequence[PhaseChangeResult | None],
    path=None,
) -> Figure:
    """The LLC over training of several runs (`mechjax llc`'s records per run; runs
    without any are left out), each run's steepest phase-change point dotted."""
    fig, ax = new_figure()
    for i, (run, recs, phase) in enumerate(zip(runs, records, phases)):
        color = RUN_COLORS[i % len(RUN_COLORS)]
        if recs:
            steps = np.asarray([r["step"] for r in recs], np.float64)
            llc = np.asarray([r["llc_mean"] for r in recs], np.float64)
            steps, llc = _positive(steps, llc)
            ax.plot(steps, llc, "o-", ms=2.5, lw=1.3, color=color, label=run.label)
        if phase is not None:
            ax.axvline(phase.steepest, color=color, ls=":", lw=1.2)
    _step_axis(ax)
    ax.set_ylabel("local learning coefficient")
    _legend(ax)
    ax.set_title("LLC over training (dotted: steepest point of each phase change)")
    return finish_figure(fig, path)


def plot_calibration(calibration, path=None) -> Figure:
    """An LLC calibration grid (`dynamics.calibration.calibrate`): the estimate (± se) against
    the step size, one line per (nβ, γ); stable settings filled, unstable ones hollow,
    the chosen setting circled. The rule picks the middle of the longest flat run of
    stable step sizes."""
    fig, ax = new_figure()
    eps = calibration.step_sizes
    for j, nbeta in enumerate(calibration.nbetas):
        for k, gamma in enumerate(calibration.localizations):
            i = j * len(calibration.localizations) + k
            color = RUN_COLORS[i % len(RUN_COLORS)]
            llc, se = calibration.llc_mean[:, j, k], calibration.llc_se[:, j, k]
            stable = calibration.stable[:, j, k]
            ok = np.isfinite(llc)
            ax.errorbar(eps[ok], llc[ok], yerr=se[ok], color=color, lw=1, capsize=2,
                        label=f"nβ={nbeta:.3g}, γ={gamma:g}")  # fmt: skip
            ax.scatter(eps[ok & stable], llc[ok & stable], color=color, s=25, zorder=3)
            ax.scatter(eps[ok & ~stable], llc[ok & ~stable], facecolors="white",
                       edgecolors=color, s=25, zorder=3)  # fmt: skip
    if calibration.chosen is not None:
        e, b, g = calibration.chosen
        i = list(eps).index(e)
        j, k = list(calibration.nbetas).index(b), list(calibration.localizations).index(g)
        ax.scatter([e], [calibration.llc_mean[i, j, k]], s=160, facecolors="none",
                   edgecolors="k", zorder=4, label=f"chosen ε={e:g}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("SGLD step size ε")
    ax.set_ylabel("LLC estimate")
    ax.grid(True, which="major", alpha=0.3)
    _legend(ax)
    ax.set_title("LLC calibration (filled: stable traces; hollow: unstable)")
    return finish_figure(fig, path)
