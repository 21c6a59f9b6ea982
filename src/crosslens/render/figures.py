"""Figure basics every stage's report part draws with.

Figures are built on :class:`matplotlib.figure.Figure` objects with the Agg canvas, never through
``pyplot``, so drawing leaves no global state behind (safe in notebooks, threads and long-running
processes). Colours are fixed per language (sorted codes -> palette), so a language has the same
colour in every figure of a report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["DPI", "language_colors", "new_figure", "save", "grid", "at", "band", "floats"]

DPI = 120


def language_colors(languages: Sequence[str]) -> dict[str, Any]:
    """A stable colour per language code: tab10 / tab20 for up to 10 / 20 languages, else turbo."""
    langs = sorted(set(languages))
    if len(langs) <= 10:
        cmap = matplotlib.colormaps["tab10"]
        return {lang: cmap(i) for i, lang in enumerate(langs)}
    if len(langs) <= 20:
        cmap = matplotlib.colormaps["tab20"]
        return {lang: cmap(i) for i, lang in enumerate(langs)}
    cmap = matplotlib.colormaps["turbo"]
    return {lang: cmap(i / (len(langs) - 1)) for i, lang in enumerate(langs)}


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    return path


def grid(fig: Figure, n: int, max_cols: int, sharey: bool = False) -> list[Axes]:
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def at(table: Mapping[Any, Any], layer: int) -> Any:
    """``table[layer]`` for summaries read from JSON (string keys) or fresh from a stage (int keys)."""
    return table[str(layer)] if str(layer) in table else table[layer]


def band(
    ax: Axes,
    x: Sequence[float],
    stats: Sequence[Mapping[str, Any]],
    scale: float,
    color: Any,
    label: str,
    **line: Any,
) -> None:
    """Mean line with its 95 % CI band (missing bounds, e.g. one language, leave a gap in the band)."""

    def col(key: str) -> np.ndarray:
        return np.array([np.nan if s.get(key) is None else scale * s[key] for s in stats], dtype=float)

    ax.plot(x, col("mean"), color=color, label=label, marker="o", markersize=3, **line)
    ax.fill_between(x, col("ci_low"), col("ci_high"), color=color, alpha=0.2, linewidth=0)


def floats(values: Any) -> np.ndarray:
    """Numbers read from a summary (fresh: NaN; from JSON: None) as a float array."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)
