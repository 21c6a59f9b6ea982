"""The PCA stage's part of the report: Fig. 3 and a line of the run's metadata."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.lines import Line2D

from crosslens.render.figures import grid, language_colors, new_figure, save
from crosslens.stages.pca import FIG3, TABLE
from crosslens.stages.reporting import Column, Figure, ReportPart, ResultFolder, Summary
from crosslens.store import Store

__all__ = ["PART", "PcaSummary", "pca_figure"]


class PcaSummary(Summary):
    """``pca_summary.json``: the layers projected and the items sampled."""

    layers: list[int]
    n_items: int


SCRIPT_MARKERS = {"Latin": "o", "non-Latin": "^"}
CAPTION = "Fig. 3. PCA of last-token activations per layer; colour = language, ○ Latin / △ other scripts."


def pca_figure(proj_df: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """Fig. 3: one PCA panel per layer; colour = language, marker = script ('Latin' / 'non-Latin').

    ``proj_df`` has columns layer, language, pc1, pc2 and optionally script.
    """
    layers = sorted(int(x) for x in proj_df["layer"].unique())
    langs = list(dict.fromkeys(proj_df["language"]))
    colors = language_colors(langs)
    scripts = (
        proj_df.drop_duplicates("language").set_index("language")["script"].to_dict()
        if "script" in proj_df
        else {}
    )
    rows = math.ceil(len(layers) / 4)  # at most 4 panels a row, rows filled evenly (5 layers: 3 + 2)
    cols = math.ceil(len(layers) / rows)
    fig = new_figure(2.7 * cols + 1.6, 2.6 * rows + 0.4)
    axes = grid(fig, len(layers), cols)
    for ax, layer in zip(axes, layers, strict=True):
        sub = proj_df[proj_df["layer"] == layer]
        for lang in langs:
            pts = sub[sub["language"] == lang]
            ax.scatter(
                pts["pc1"],
                pts["pc2"],
                s=12,
                color=colors[lang],
                alpha=0.8,
                linewidths=0,
                marker=SCRIPT_MARKERS.get(scripts.get(lang, "Latin"), "o"),
            )
        ax.set_title(f"layer {layer}", fontsize=9)
        ax.tick_params(labelsize=6)
        ax.set_xlabel("PC 1", fontsize=7)
        ax.set_ylabel("PC 2", fontsize=7)
    handles = [
        Line2D(
            [],
            [],
            linestyle="",
            marker=SCRIPT_MARKERS.get(scripts.get(lang, "Latin"), "o"),
            color=colors[lang],
            label=lang,
        )
        for lang in langs
    ]
    fig.legend(
        handles=handles,
        loc="outside right center",
        fontsize=8,
        title="○ Latin  △ non-Latin",
        title_fontsize=7,
    )
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, path)


class PcaReport(ReportPart):
    schema = PcaSummary

    def meta_rows(self, folder: ResultFolder) -> list[tuple[str, Any]]:
        s = folder.summaries.get("pca")
        return [("PCA", f"{s['n_items']} items, layers {', '.join(map(str, s['layers']))}")] if s else []

    def sections(self, folder: ResultFolder, columns: Sequence[Column] = ()) -> list[Any]:
        s = folder.summaries.get("pca")
        if not s:
            return []
        proj = Store(folder.path).read(TABLE)
        proj = proj[proj["layer"].isin(s["layers"])]
        return [Figure("fig3", pca_figure(proj, folder.path / FIG3, folder.title), CAPTION)]


PART = PcaReport()
