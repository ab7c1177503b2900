"""Figures of representations: probe scores by layer (seed 002's dashboard), steering
sweeps, and scores such as ROME's or recall before and after an erasure."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..representations.probes import ProbeResult
from .figures import finish_figure, new_figure


def plot_probe_scores(
    result: ProbeResult, *, labels=None, title: str = "linear probe by layer", path=None
):
    """Held-out (and train) score of a probe per layer, with the control task and the
    selectivity when the result has them. `result`: a `probe` over `[layer, example, d]`;
    labels: the x tick labels (default L0, L1, ...). Saved as PNG at `path` if given."""
    test = np.asarray(result.test_score, float).reshape(-1)
    if np.asarray(result.test_score).ndim != 1:
        raise ValueError("plot_probe_scores: give a probe result with one score per layer")
    x = np.arange(len(test))
    fig, ax = new_figure(1.5 + 0.5 * len(test), 3.5)
    score = "accuracy" if result.kind == "logistic" else "R²"
    ax.plot(x, test, "o-", label=f"held-out {score}")
    ax.plot(x, np.asarray(result.train_score).reshape(-1), ".--", alpha=0.6, label=f"train {score}")
    if result.control_score is not None:
        ax.plot(x, np.asarray(result.control_score).reshape(-1), "s:", label="control task")
        ax.plot(x, np.asarray(result.selectivity).reshape(-1), "^-", label="selectivity")
    ax.set_xticks(x, labels if labels is not None else [f"L{i}" for i in x])
    ax.set_xlabel("layer")
    ax.set_ylabel(score)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return finish_figure(fig, None if path is None else Path(path))


def plot_steering_sweep(result, *, title: str = "steering: layer x coefficient", path=None):
    """The metric of a `steering_sweep` as a heat map `[layer, coefficient]`, the
    unsteered baseline subtracted (so 0 is "no change")."""
    values = np.asarray(result.values, float) - float(result.baseline)
    fig, ax = new_figure(1.5 + 0.6 * values.shape[1], 1.2 + 0.45 * values.shape[0])
    limit = max(float(np.abs(values).max()), 1e-9)
    image = ax.imshow(values, cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(values.shape[1]), [f"{c:g}" for c in np.asarray(result.coeffs)])
    ax.set_yticks(range(values.shape[0]), [f"L{int(layer)}" for layer in result.layers])
    ax.set_xlabel("coefficient")
    ax.set_ylabel("layer steered")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="metric − unsteered")
    return finish_figure(fig, None if path is None else Path(path))


def plot_scores(scores: dict, *, title: str = "", ylabel: str = "score", path=None):
    """Named scores in [0, 1] as bars, e.g. ROME's efficacy / paraphrase / neighbourhood,
    or recall before and after an erasure (`{"city before": 1.0, "city after": 0.26}`)."""
    names = list(scores)
    fig, ax = new_figure(1.5 + 0.9 * len(names), 3.2)
    ax.bar(range(len(names)), [float(scores[n]) for n in names], color="tab:purple")
    ax.set_xticks(range(len(names)), [n.replace("_", " ") for n in names], rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    return finish_figure(fig, None if path is None else Path(path))
