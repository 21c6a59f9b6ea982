"""The similarity stage's part of the report: CKA with English and the cosine gap per layer, the CKA
curves and the pairwise CKA matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator
from pydantic import model_validator

from crosslens.files import Schema, require
from crosslens.render.figures import band, grid, language_colors, new_figure, save
from crosslens.render.tables import Table, ci, missing
from crosslens.stages.reporting import Column, Estimate, Figure, ReportPart, ResultFolder, Summary
from crosslens.stages.similarity import FIGURES, TABLE
from crosslens.store import Store

__all__ = ["PART", "SimilaritySummary", "cka_figure", "cka_matrix_figure"]


class CkaCell(Schema):
    cka: float | None
    ci_low: float | None
    ci_high: float | None


class CkaWithPivot(Schema):
    debiased: dict[str, dict[str, CkaCell]]  # language -> layer -> CKA with the pivot


class Cosines(Schema):
    parallel: Estimate
    nonparallel: Estimate
    gap: Estimate


class CosineLayer(Schema):
    all_pairs: Cosines


class SimilaritySummary(Summary):
    """``similarity_summary.json``: what the CKA and cosine tables and both figures read."""

    languages: list[str]
    layers: list[int]
    level: float
    pivot: str | None = None
    n_items: int
    pool: str
    n_boot: int
    matrix_layer: int
    cka_with_pivot: CkaWithPivot | None = None
    cosine: dict[str, CosineLayer]

    @model_validator(mode="after")
    def _every_layer(self) -> SimilaritySummary:
        require(self.cosine, self.layers, "cosine")
        for lang, cells in (self.cka_with_pivot.debiased if self.cka_with_pivot else {}).items():
            require(cells, self.layers, f"cka_with_pivot.debiased.{lang}")
        return self


CAPTIONS = {
    "cka": (
        "Linear CKA (debiased, left; plain, right) of each language's states with English's per layer, "
        "over the same items; shaded: bootstrap CI over items."
    ),
    "cka_matrix": "Debiased linear CKA between every pair of languages at one layer.",
}


def cka_figure(table: pd.DataFrame, pivot: str | None, path: str | Path, title: str | None = None) -> Path:
    """CKA with the pivot (English) per layer, one line per language with its bootstrap CI band;
    one panel per estimator (debiased first). Without a pivot: the mean over all pairs."""
    estimators = [e for e in ("debiased", "linear") if e in set(table["estimator"])]
    fig = new_figure(4.2 * len(estimators) + 1.4, 3.4)
    axes = grid(fig, len(estimators), len(estimators), sharey=True)
    for ax, estimator in zip(axes, estimators, strict=True):
        sub = table[table["estimator"] == estimator]
        if pivot is not None:
            sub = sub[(sub["language_a"] == pivot) | (sub["language_b"] == pivot)]
            other = np.where(sub["language_a"] == pivot, sub["language_b"], sub["language_a"])
            sub = sub.assign(other=other)
        else:
            sub = (
                sub.groupby("layer", as_index=False)[["cka", "ci_low", "ci_high"]].mean().assign(other="mean")
            )
        langs = list(dict.fromkeys(sub["other"]))
        colors = language_colors(langs)
        for lang in langs:
            rows = sub[sub["other"] == lang].sort_values("layer")
            stats = [{"mean": r.cka, "ci_low": r.ci_low, "ci_high": r.ci_high} for r in rows.itertuples()]
            band(ax, rows["layer"].tolist(), stats, 1.0, colors[lang], lang)
        ax.axhline(0, color="0.6", linewidth=0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_title(f"{estimator} CKA" + (f" with {pivot}" if pivot else " (mean over pairs)"), fontsize=9)
    axes[0].set_ylabel("linear CKA")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, path)


def cka_matrix_figure(
    table: pd.DataFrame,
    layer: int,
    languages: Sequence[str],
    path: str | Path,
    title: str | None = None,
    estimator: str = "debiased",
) -> Path:
    """The pairwise CKA matrix of every language at one ``layer`` (symmetric, diagonal 1)."""
    langs = list(languages)
    pos = {lang: i for i, lang in enumerate(langs)}
    m = np.eye(len(langs))
    sub = table[(table["layer"] == layer) & (table["estimator"] == estimator)]
    for r in sub.itertuples():
        m[pos[r.language_a], pos[r.language_b]] = m[pos[r.language_b], pos[r.language_a]] = r.cka
    n = len(langs)
    side = max(4.0, 0.45 * n + 2.0)
    fig = new_figure(side + 1.2, side)
    ax = fig.subplots()
    im = ax.imshow(m, cmap="viridis", vmin=min(0.0, float(np.nanmin(m))), vmax=1.0)
    ax.set_xticks(range(n), langs, rotation=90 if n > 12 else 0)
    ax.set_yticks(range(n), langs)
    if n <= 16:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] < 0.6 else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, shrink=0.8, label=f"{estimator} linear CKA")
    ax.set_title(title or "", fontsize=10)
    ax.set_xlabel(f"layer {layer}")
    return save(fig, path)


def _estimate(x: float | None, low: float | None, high: float | None, digits: int, sign: str = "") -> str:
    """``0.42 [0.31, 0.55]``; n/a where the estimate is undefined (e.g. states that do not vary)."""
    if missing(x):
        return "n/a"
    return f"{x:{sign}.{digits}f} {ci(low, high, 1.0, digits)}"


def _tables(sim: Mapping[str, Any]) -> tuple[Table | None, Table]:
    """CKA with English per layer and language (None without English), and the parallel vs non-parallel
    cosine per layer."""
    with_pivot = None
    level, pivot = round(100 * sim["level"]), sim.get("pivot")
    items = f"{sim['n_items']} items, pool = {sim['pool']}, {sim['n_boot']} bootstrap replicates"
    if pivot and sim.get("cka_with_pivot"):
        cka = sim["cka_with_pivot"]["debiased"]
        langs = list(cka)
        rows = [
            [str(layer), *(_estimate(c["cka"], c["ci_low"], c["ci_high"], 2) for c in
                           (cka[m][str(layer)] for m in langs))]
            for layer in sim["layers"]
        ]  # fmt: skip
        with_pivot = Table(
            f"Debiased linear CKA with {pivot} per layer [{level} % CI] ({items})",
            ["layer", *langs],
            rows,
            note="1: the items are arranged alike in both languages; 0: unrelated (the plain estimator "
            "is in the similarity/ table, biased toward 1 with few items).",
        )
    rows = []
    for layer in sim["layers"]:
        c = sim["cosine"][str(layer)]["all_pairs"]
        rows.append(
            [str(layer)]
            + [_estimate(c[k]["mean"], c[k]["ci_low"], c[k]["ci_high"], 3, "+") for k in
               ("parallel", "nonparallel", "gap")]
        )  # fmt: skip
    cosine = Table(
        f"Cosine of parallel vs non-parallel pairs, mean over language pairs [{level} % CI] ({items})",
        ["layer", "parallel", "non-parallel", "gap"],
        rows,
        note="gap > 0: the item, not the language, decides where a state lies (a shared space).",
    )
    return with_pivot, cosine


class SimilarityReport(ReportPart):
    schema = SimilaritySummary

    def sections(self, folder: ResultFolder, columns: Sequence[Column] = ()) -> list[Any]:
        s = folder.summaries.get("similarity")
        if not s:
            return []
        table = Store(folder.path).read(TABLE)
        table = table[table["layer"].isin(s["layers"])]
        cka = cka_figure(table, s.get("pivot"), folder.path / FIGURES["cka"], folder.title)
        matrix = cka_matrix_figure(
            table, s["matrix_layer"], s["languages"], folder.path / FIGURES["cka_matrix"], folder.title
        )
        first, cosine = _tables(s)
        return [
            *([first] if first else []),
            Figure("cka", cka, CAPTIONS["cka"]),
            cosine,
            Figure("cka_matrix", matrix, CAPTIONS["cka_matrix"]),
        ]


PART = SimilarityReport()
