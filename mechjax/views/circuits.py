"""Circuit figures (matplotlib, no pyplot): the pictures of Elhage et al. 2021 ("A
Mathematical Framework for Transformer Circuits") and Olsson et al. 2022.

Every function takes arrays (computed by `mechjax.circuits`, `mechjax.circuits.eigen`,
`mechjax.activations.heads`, `mechjax.circuits.skip_trigrams`, `mechjax.circuits.paths`), builds a
`matplotlib.figure.Figure` on the Agg canvas without touching pyplot's global state, saves
it as PNG when `path` is given (stamped as written by mechjax, `mechjax.views.figures`) and
returns it.

    plot_attention_patterns   attention of many heads on one repeated sequence
    plot_ov_eigenvalues       each head's full-OV eigenvalues in the complex plane
    plot_copying_plane        heads as points: OV vs QK eigenvalue copying statistic
    plot_composition_scores   Q/K/V-composition heat maps, raw and baseline-subtracted
    plot_skip_trigrams        the table of top QK/OV entries
    plot_positional_qk        positional QK circuit (learned) or score vs offset (RoPE)
    plot_path_terms           the largest path-decomposition terms

Heads are labelled `L{layer}H{head}`. Functions drawing one panel per head take
`heads`, a list of (layer, head) to draw (default: all, up to `MAX_PANELS`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from .figures import colormap, finish_figure, new_figure

MAX_PANELS = 64  # beyond this, panels become unreadable: pass `heads` to choose
POSITIVE, NEGATIVE = "tab:blue", "tab:red"


def _all_heads(n_layers: int, n_heads: int, heads) -> list[tuple[int, int]]:
    if heads is None:
        heads = [(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    heads = [(int(layer), int(h)) for layer, h in heads]
    bad = [(layer, h) for layer, h in heads if not (0 <= layer < n_layers and 0 <= h < n_heads)]
    if bad:
        raise ValueError(f"heads {bad} are outside {n_layers} layers x {n_heads} heads")
    if not heads:
        raise ValueError("no heads to draw; pass at least one (layer, head)")
    if len(heads) > MAX_PANELS:
        raise ValueError(
            f"{len(heads)} heads is too many panels (at most {MAX_PANELS}); pass heads=[...] "
            "to choose which to draw"
        )
    return heads


def _grid(n: int, panel: float, max_cols: int = 8) -> tuple[Figure, list]:
    cols = min(n, max_cols)
    rows = -(-n // cols)
    fig = Figure(figsize=(panel * cols + 0.6, panel * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])


def _as_array(x, ndim: int, name: str, fn: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim:
        raise ValueError(f"{fn}: {name} must have {ndim} axes, got shape {x.shape}")
    return x


# -- attention -----------------------------------------------------------------------------------


def plot_attention_patterns(
    pattern, *, seg_len: int | None = None, heads=None, path=None, title: str | None = None
) -> Figure:
    """Attention patterns `pattern [layer, head, query_pos, key_pos]` of one sequence,
    one panel per head. With `seg_len` (a `[BOS] + repeated segments` input), dashed
    lines mark where each copy starts, so induction heads show as a stripe one right of
    the copy's diagonal and previous-token heads as the sub-diagonal."""
    pattern = _as_array(pattern, 4, "pattern", "plot_attention_patterns")
    heads = _all_heads(*pattern.shape[:2], heads)
    fig, axes = _grid(len(heads), 1.9)
    n_pos = pattern.shape[-1]
    for ax, (layer, h) in zip(axes, heads):
        image = ax.imshow(pattern[layer, h], cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        if seg_len:
            for start in range(1 + seg_len, n_pos, seg_len):
                ax.axhline(start - 0.5, color=NEGATIVE, ls="--", lw=0.6)
                ax.axvline(start - 0.5, color=NEGATIVE, ls="--", lw=0.6)
        ax.set_title(f"L{layer}H{h}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention")
    fig.suptitle(title or "Attention patterns (rows: query, columns: key)")
    return finish_figure(fig, path)


# -- eigenvalues and copying ---------------------------------------------------------------------


def plot_ov_eigenvalues(
    eigenvalues, *, scores=None, heads=None, path=None, title: str | None = None
) -> Figure:
    """Eigenvalues `[layer, head, k]` (complex) of each head's full OV circuit, one unit
    disc per head as in Elhage et al.'s figure: each head's eigenvalues are divided by
    their largest modulus, so they lie in the disc; points with a positive real part in
    blue, negative in red. A copying head's eigenvalues crowd the positive real axis.
    `scores [layer, head]` (e.g. `circuit_eigen.ov_eigenvalue_copying`) go into the panel titles."""
    eigenvalues = _as_array(eigenvalues, 3, "eigenvalues", "plot_ov_eigenvalues")
    heads = _all_heads(*eigenvalues.shape[:2], heads)
    fig, axes = _grid(len(heads), 1.5)
    for ax, (layer, h) in zip(axes, heads):
        lam = eigenvalues[layer, h]
        largest = np.abs(lam).max()
        lam = lam / largest if largest > 0 else lam
        ax.add_patch(Circle((0, 0), 1.0, fill=False, color="0.6", lw=0.8))
        ax.axhline(0, color="0.85", lw=0.6, zorder=0)
        ax.axvline(0, color="0.85", lw=0.6, zorder=0)
        colors = np.where(lam.real >= 0, POSITIVE, NEGATIVE)
        ax.scatter(lam.real, lam.imag, s=6, c=colors, linewidths=0)
        ax.set_xlim(-1.08, 1.08)
        ax.set_ylim(-1.08, 1.08)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        label = f"L{layer}H{h}"
        if scores is not None:
            label += f" {float(np.asarray(scores)[layer, h]):+.2f}"
        ax.set_title(label, fontsize=8)
    fig.suptitle(title or "Full OV circuit eigenvalues (scaled to the unit disc)")
    return finish_figure(fig, path)


def plot_copying_plane(ov_scores, qk_scores, *, path=None, title: str | None = None) -> Figure:
    """Each head as a point: x = OV eigenvalue copying statistic, y = QK eigenvalue copying statistic (both
    `[layer, head]`, in [-1, 1]), labelled `L{l}H{h}` and coloured by layer. Heads in the
    upper right copy what they attend to and attend to copies of the current token."""
    ov = _as_array(ov_scores, 2, "ov_scores", "plot_copying_plane")
    qk = _as_array(qk_scores, 2, "qk_scores", "plot_copying_plane")
    if ov.shape != qk.shape:
        raise ValueError(f"plot_copying_plane: ov {ov.shape} and qk {qk.shape} shapes differ")
    fig, ax = new_figure(5.6, 5.2)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    cmap = colormap("viridis")
    n_layers = ov.shape[0]
    for layer in range(n_layers):
        color = cmap(layer / max(1, n_layers - 1))
        ax.scatter(ov[layer], qk[layer], color=color, s=22, label=f"layer {layer}")
        for h in range(ov.shape[1]):
            ax.annotate(
                f"L{layer}H{h}", (ov[layer, h], qk[layer, h]), fontsize=6,
                xytext=(2, 2), textcoords="offset points",
            )  # fmt: skip
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("OV eigenvalue copying  (Σλ / Σ|λ| of W_E W_OV W_U)")
    ax.set_ylabel("QK eigenvalue copying  (Σλ / Σ|λ| of W_E W_QK W_Eᵀ)")
    if n_layers <= 12:
        ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title or "Copying: OV vs QK eigenvalue scores")
    return finish_figure(fig, path)


# -- composition ---------------------------------------------------------------------------------


def composition_block(scores: np.ndarray) -> np.ndarray:
    """`[l1, h1, l2, h2]` -> `[(L-1) H (earlier), (L-1) H (later)]`: rows are heads of
    layers 0..L-2, columns heads of layers 1..L-1, NaN where l1 >= l2."""
    L, H = scores.shape[:2]
    block = scores[: L - 1, :, 1:, :].reshape((L - 1) * H, (L - 1) * H).astype(float)
    earlier = np.repeat(np.arange(L - 1), H)[:, None]
    later = np.repeat(np.arange(1, L), H)[None, :]
    return np.where(earlier < later, block, np.nan)


def plot_composition_scores(
    scores: dict, baseline: dict | None = None, *, path=None, title: str | None = None
) -> Figure:
    """Composition heat maps: one row per kind in `scores` ({"Q"|"K"|"V": [l1, h1, l2, h2]},
    as `mechjax.circuits.composition_scores` returns), the raw scores on the left and,
    if `baseline` (the same with `baseline=True`) is given, the baseline-subtracted ones
    on the right. Rows of each map: earlier heads; columns: later heads."""
    if not scores:
        raise ValueError("plot_composition_scores: no scores given")
    kinds = list(scores)
    arrays = {
        k: _as_array(scores[k], 4, f"scores[{k!r}]", "plot_composition_scores") for k in kinds
    }
    L, H = arrays[kinds[0]].shape[:2]
    if L < 2:
        raise ValueError("plot_composition_scores: composition needs at least 2 layers")
    columns = [("raw", arrays)]
    if baseline is not None:
        columns.append(("minus random baseline", {k: np.asarray(baseline[k]) for k in kinds}))
    size = min(7.0, 1.4 + 0.28 * (L - 1) * H)
    fig = Figure(figsize=(size * len(columns) + 1, size * len(kinds) * 0.9), layout="constrained")
    axes = fig.subplots(len(kinds), len(columns), squeeze=False)
    labels_early = [f"L{layer}H{h}" for layer in range(L - 1) for h in range(H)]
    labels_late = [f"L{layer}H{h}" for layer in range(1, L) for h in range(H)]
    for row, kind in enumerate(kinds):
        for col, (name, data) in enumerate(columns):
            ax = axes[row, col]
            block = composition_block(np.asarray(data[kind]))
            image = ax.imshow(block, cmap="viridis" if col == 0 else "RdBu_r", aspect="auto")
            if col == 1:
                limit = np.nanmax(np.abs(block)) or 1.0
                image.set_clim(-limit, limit)
            fig.colorbar(image, ax=ax, shrink=0.8)
            ax.set_title(f"{kind}-composition, {name}", fontsize=9)
            if len(labels_early) <= 32:
                ax.set_yticks(range(len(labels_early)), labels_early, fontsize=6)
                ax.set_xticks(range(len(labels_late)), labels_late, fontsize=6, rotation=90)
            ax.set_ylabel("earlier head (writes)")
            ax.set_xlabel("later head (reads)")
    fig.suptitle(title or "Composition scores ‖W_OV¹ W²‖ / (‖W_OV¹‖ ‖W²‖)")
    return finish_figure(fig, path)


# -- tables and profiles -------------------------------------------------------------------------


def plot_skip_trigrams(
    table, token_str: Callable[[int], str] = str, *, per_head: int = 5, path=None
) -> Figure:
    """The skip-trigram table (`mechjax.circuits.skip_trigrams.skip_trigrams`) as a figure: per
    head its `per_head` largest OV entries as `[src] … [dst] → [out]` with the OV and QK
    entries."""
    rows = [t for head_rows in table for t in head_rows[:per_head]]
    if not rows:
        raise ValueError("plot_skip_trigrams: the table is empty")
    cells = [
        [f"L{t.layer}H{t.head}", t.format(token_str), f"{t.ov:.3g}", f"{t.qk[0]:.3g}"] for t in rows
    ]
    fig, ax = new_figure(7.0, 0.5 + 0.24 * len(cells))
    ax.axis("off")
    grid = ax.table(
        cellText=cells,
        colLabels=["head", "[src] … [dst] → [out]", "OV entry", "QK entry"],
        loc="upper center",
        cellLoc="left",
        colWidths=[0.1, 0.6, 0.15, 0.15],
    )
    grid.auto_set_font_size(False)
    grid.set_fontsize(8)
    ax.set_title("Skip-trigrams: largest full-OV entries and the destinations attending to them")
    return finish_figure(fig, path)


def plot_positional_qk(values, *, heads=None, path=None, title: str | None = None) -> Figure:
    """The positional QK circuit (`mechjax.circuits.positional_qk_circuit`):

    * `values [layer, head, query_pos, key_pos]` (learned positions, dense): one heat map
      per head (red positive, blue negative, white 0), future keys masked;
    * `values [layer, head, offset]` (RoPE): score vs query-key offset, one line per head,
      one panel per layer.
    """
    values = np.asarray(values)
    if values.ndim == 4:
        heads = _all_heads(*values.shape[:2], heads)
        fig, axes = _grid(len(heads), 1.9)
        n = values.shape[-1]
        causal = np.tril(np.ones((n, n), bool))
        for ax, (layer, h) in zip(axes, heads):
            shown = np.where(causal, values[layer, h], np.nan)
            limit = np.nanmax(np.abs(shown)) or 1.0  # white = 0 in every panel
            ax.imshow(shown, cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(f"L{layer}H{h}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(title or "Positional QK circuit W_pos W_QK W_posᵀ (rows: query)")
        return finish_figure(fig, path)
    if values.ndim != 3:
        raise ValueError(
            "plot_positional_qk: values must be [layer, head, q, k] (learned positions) or "
            f"[layer, head, offset] (RoPE), got shape {values.shape}"
        )
    n_layers = values.shape[0]
    fig, axes = _grid(n_layers, 2.6, max_cols=4)
    for layer, ax in enumerate(axes):
        for h in range(values.shape[1]):
            ax.plot(values[layer, h], lw=1, label=f"H{h}")
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.set_xlabel("offset (query - key)", fontsize=8)
        if values.shape[1] <= 8:
            ax.legend(fontsize=6)
    fig.suptitle(title or "RoPE: QK score of a vector with itself vs offset")
    return finish_figure(fig, path)


def plot_path_terms(
    labels: Sequence[str], values, *, n: int = 15, path=None, title: str | None = None
) -> Figure:
    """Horizontal bars of the `n` path terms with the largest |value| (`values [term]`,
    e.g. a term's mean contribution to the correct next token's logit)."""
    values = np.asarray(values, float)
    if values.shape != (len(labels),):
        raise ValueError(
            f"plot_path_terms: {len(labels)} labels but values of shape {values.shape}"
        )
    order = np.argsort(-np.abs(values))[:n][::-1]
    fig, ax = new_figure(6.0, 0.6 + 0.26 * len(order))
    colors = [POSITIVE if values[i] >= 0 else NEGATIVE for i in order]
    ax.barh(range(len(order)), values[order], color=colors)
    ax.set_yticks(range(len(order)), [labels[i] for i in order], fontsize=8)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_xlabel("contribution (logit)")
    ax.set_title(title or "Largest path terms")
    return finish_figure(fig, path)
