"""Figures of representations: probe scores by layer (seed 002's dashboard)."""

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
