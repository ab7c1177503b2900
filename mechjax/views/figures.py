"""What every mechjax figure shares: how it is made, coloured and saved.

Figures are `matplotlib.figure.Figure` objects on the Agg canvas, built without pyplot
(so pyplot's global state and the interactive backend are never touched, and importing
a plotting module in a notebook changes nothing). A figure saved as PNG carries
`PNG_SOFTWARE` in its "Software" text chunk, so mechjax can recognise its own files
before replacing them (`mechjax.views.html.written_by_mechjax`).

Used by `mechjax.views.training` (training figures) and `mechjax.views.circuits` (circuit figures).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

PNG_SOFTWARE = "mechjax"  # written into every PNG, so our own files can be recognised
PNG_DPI = 110


def new_figure(width: float = 7.0, height: float = 4.0) -> tuple[Figure, object]:
    """A `width` x `height` inch figure with constrained layout and one axes: `(fig, ax)`."""
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


def finish_figure(fig: Figure, path: str | Path | None) -> Figure:
    """Save `fig` as a PNG stamped with `PNG_SOFTWARE` when `path` is given; return it."""
    if path is not None:
        fig.savefig(path, dpi=PNG_DPI, metadata={"Software": PNG_SOFTWARE})
    return fig


def colormap(name: str):
    """The registered matplotlib colormap `name` (e.g. "viridis"), looked up without pyplot:
    call it on values in [0, 1] to get RGBA colours."""
    return colormaps[name]
