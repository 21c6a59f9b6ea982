"""The paper's figures, drawn from the stage summaries (Figs. 1-5).

Every function takes the JSON a stage wrote (or, for Fig. 3, the projection frame), writes one PNG
and returns its path. Figures are built on :class:`matplotlib.figure.Figure` objects with the Agg
canvas, never through ``pyplot``, so drawing leaves no global state behind (safe in notebooks,
threads and long-running processes).

Colours are fixed per language (sorted codes -> palette), so a language has the same colour in
every figure of a report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

__all__ = [
    "language_colors",
    "transfer_heatmap",
    "lens_figure",
    "fidelity_figure",
    "pca_figure",
    "gamma_sweep_figure",
    "steer_change_figure",
    "default_gamma",
]

DPI = 120
SCRIPT_MARKERS = {"Latin": "o", "non-Latin": "^"}
FORM_LABELS = {"native": "native answers", "en": "English answers", "label": "letters (A/B/C/D)"}
FORM_COLORS = {"native": "tab:orange", "en": "tab:blue", "label": "tab:gray"}
STEER_METRICS = (
    ("accuracy", "accuracy (%)", 100.0),
    ("consistency_en", "consistency with English (ρ)", 1.0),
    ("tr_plus_from_en", "tr+ from English (%)", 100.0),
)


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


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    return path


def _grid(fig: Figure, n: int, max_cols: int, sharey: bool = False) -> list[Axes]:
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=sharey).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def _at(table: Mapping[Any, Any], layer: int) -> Any:
    """``table[layer]`` for summaries read from JSON (string keys) or fresh from a stage (int keys)."""
    return table[str(layer)] if str(layer) in table else table[layer]


def _band(
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


# -- Fig. 1 ---------------------------------------------------------------------------------------
def transfer_heatmap(
    summary: Mapping[str, Any], path: str | Path, title: str | None = None, metric: str = "tr_plus"
) -> Path:
    """Fig. 1: the directed pairwise matrix ``metric`` (default tr+) of an evaluation ``summary.json``.

    Row = source language l1, column = target l2, cell = tr+(l1, l2); the trivial diagonal is greyed.
    """
    langs = list(summary["languages"])
    table = summary["pairwise"][metric]
    m = np.array(
        [[np.nan if table[a][b] is None else table[a][b] for b in langs] for a in langs], dtype=float
    )
    np.fill_diagonal(m, np.nan)
    n = len(langs)
    side = max(4.0, 0.45 * n + 2.0)
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    vmin = -1.0 if metric == "consistency" else 0.0
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=1.0)
    ax.set_xticks(range(n), langs, rotation=90 if n > 12 else 0)
    ax.set_yticks(range(n), langs)
    ax.set_xlabel("target language $l_2$")
    ax.set_ylabel("source language $l_1$")
    if n <= 16:
        for i in range(n):
            for j in range(n):
                if not np.isnan(m[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:.2f}".replace("0.", ".", 1),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if m[i, j] < vmin + 0.6 * (1 - vmin) else "black",
                    )
    names = {"tr_plus": "tr$^+(l_1, l_2)$", "tr_minus": "tr$^-(l_1, l_2)$", "consistency": "consistency"}
    fig.colorbar(im, ax=ax, shrink=0.8, label=names.get(metric, metric))
    ax.set_title(title or f"{summary.get('dataset', '')}: pairwise {names.get(metric, metric)}", fontsize=10)
    return _save(fig, path)


# -- Fig. 2 ---------------------------------------------------------------------------------------
def lens_figure(
    lens_summary: Mapping[str, Any], path: str | Path, title: str | None = None, chance: float | None = 0.25
) -> Path:
    """Fig. 2: (a) mean log p(native)/p(English) per layer, (b) latent accuracy per layer and form.

    Bands are 95 % CIs across languages; (a) marks zero (above: the native subspace dominates),
    (b) marks ``chance`` (1 / number of choices) with a dashed line.
    """
    layers = [int(x) for x in lens_summary["layers"]]
    fig = _figure(10.0, 3.8)
    ax_a, ax_b = fig.subplots(1, 2)
    ratio = [_at(lens_summary["log_ratio"], layer) for layer in layers]
    _band(ax_a, layers, ratio, 1.0, "tab:purple", "mean over languages")
    ax_a.axhline(0.0, color="black", linewidth=0.8)
    ax_a.set_xlabel("layer")
    ax_a.set_ylabel("log p(native) / p(English)")
    ax_a.set_title("(a) log ratio of latent answer probabilities", fontsize=10)
    ax_a.legend(fontsize=8, loc="best")
    for form in ("native", "en", "label"):
        stats = [_at(lens_summary["latent_accuracy"][form], layer) for layer in layers]
        _band(ax_b, layers, stats, 100.0, FORM_COLORS[form], FORM_LABELS[form])
    if chance is not None:
        ax_b.axhline(
            100 * chance, color="black", linestyle="--", linewidth=0.9, label=f"chance ({100 * chance:.0f} %)"
        )
    ax_b.set_xlabel("layer")
    ax_b.set_ylabel("latent accuracy (%)")
    ax_b.set_title("(b) accuracy in the latent space", fontsize=10)
    ax_b.legend(fontsize=8, loc="best")
    for ax in (ax_a, ax_b):
        ax.set_xticks(layers)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def fidelity_figure(
    tuned: Mapping[str, Any], logit: Mapping[str, Any] | None, path: str | Path, title: str | None = None
) -> Path:
    """The two lenses side by side: (a) validation KL(final || lens) per layer (the tuned-lens paper's
    fidelity plot, from the lens's held-out text), (b) log ratio and (c) latent accuracy of native
    answers per layer through each lens (solid: tuned, dashed: logit; bands: 95 % CI across languages)."""
    fig = _figure(14.0, 3.8)
    ax_a, ax_b, ax_c = fig.subplots(1, 3)
    kl = tuned.get("val_kl") or {}
    for name, style in (("tuned", "-"), ("logit", "--")):
        per = kl.get(name) or {}
        xs = sorted(int(k) for k in per)
        ax_a.plot(xs, [per[str(x)] for x in xs], style, marker="o", color="black", label=f"{name} lens")
    ax_a.set_yscale("log")
    ax_a.set_ylabel("KL(final || lens), nats/token")
    ax_a.set_title("(a) fidelity on held-out text", fontsize=10)
    for summary, style, name in ((tuned, "-", "tuned"), (logit, "--", "logit")):
        if not summary:
            continue
        layers = [int(x) for x in summary["layers"]]
        ratio = [_at(summary["log_ratio"], layer) for layer in layers]
        _band(ax_b, layers, ratio, 1.0, "tab:purple", f"{name} lens", linestyle=style)
        for form in ("native", "en"):
            stats = [_at(summary["latent_accuracy"][form], layer) for layer in layers]
            _band(
                ax_c, layers, stats, 100.0, FORM_COLORS[form], f"{FORM_LABELS[form]}, {name}", linestyle=style
            )
    ax_b.axhline(0.0, color="black", linewidth=0.8)
    ax_b.set_ylabel("log p(native) / p(English)")
    ax_b.set_title("(b) log ratio through each lens", fontsize=10)
    ax_c.set_ylabel("latent accuracy (%)")
    ax_c.set_title("(c) latent accuracy through each lens", fontsize=10)
    for ax in (ax_a, ax_b, ax_c):
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


# -- Fig. 3 ---------------------------------------------------------------------------------------
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
    fig = _figure(2.7 * cols + 1.6, 2.6 * rows + 0.4)
    axes = _grid(fig, len(layers), cols)
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
    return _save(fig, path)


# -- similarity -----------------------------------------------------------------------------------
def cka_figure(table: pd.DataFrame, pivot: str | None, path: str | Path, title: str | None = None) -> Path:
    """CKA with the pivot (English) per layer, one line per language with its bootstrap CI band;
    one panel per estimator (debiased first). Without a pivot: the mean over all pairs."""
    estimators = [e for e in ("debiased", "linear") if e in set(table["estimator"])]
    fig = _figure(4.2 * len(estimators) + 1.4, 3.4)
    axes = _grid(fig, len(estimators), len(estimators), sharey=True)
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
            _band(ax, rows["layer"].tolist(), stats, 1.0, colors[lang], lang)
        ax.axhline(0, color="0.6", linewidth=0.6)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_title(f"{estimator} CKA" + (f" with {pivot}" if pivot else " (mean over pairs)"), fontsize=9)
    axes[0].set_ylabel("linear CKA")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


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
    fig = _figure(side + 1.2, side)
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
    return _save(fig, path)


# -- language-specific neurons --------------------------------------------------------------------
def neurons_figure(
    per_layer: Mapping[str, Mapping[Any, int]], n_layers: int, path: str | Path, title: str | None = None
) -> Path:
    """Language-specific neurons (LAPE) per layer, one line per language (``per_layer``: language ->
    {layer: count}, layers without any left out)."""
    langs = list(per_layer)
    colors = language_colors(langs)
    fig = _figure(6.4, 3.4)
    ax = fig.subplots()
    layers = np.arange(1, n_layers + 1)
    for lang in langs:
        counts = [per_layer[lang].get(str(x), per_layer[lang].get(int(x), 0)) for x in layers]
        ax.plot(layers, counts, marker="o", markersize=3, color=colors[lang], label=lang)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("language-specific neurons")
    fig.legend(loc="outside right center", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _floats(values: Any) -> np.ndarray:
    """Numbers read from a summary (fresh: NaN; from JSON: None) as a float array."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def ablation_figure(summary: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Per ablated language (rows): the change in every language's accuracy (left) and in its gold
    answer's score (right: mean log-likelihood per character for cloze, log-probability of the gold
    letter otherwise) when its LAPE neurons are deactivated (red) and for the random control (grey),
    with paired bootstrap CIs. Cloze where scored, else letters."""
    effects = summary["effects"]
    ablated = [m for m in effects if effects[m]]
    score = "cloze" if any("cloze" in e for m in ablated for e in effects[m].values()) else "letters"
    langs = list(summary["languages"])
    panels = (("accuracy", 100.0, f"Δ {score} accuracy (points)"), ("gold_score", 1.0, "Δ gold-answer score"))
    fig = _figure(2 * max(4.5, 0.45 * len(langs) + 1.5) + 0.5, 2.5 * len(ablated) + 0.6)
    axes = fig.subplots(len(ablated), 2, squeeze=False)
    x = np.arange(len(langs))
    for row, m in enumerate(ablated):
        for col, (key, scale, label) in enumerate(panels):
            ax = axes[row, col]
            for offset, kind, color in ((-0.2, "lape", "tab:red"), (0.2, "random", "tab:gray")):
                entry = effects[m].get(kind)
                if entry is None:
                    continue
                cells = [entry[score][lang].get(key) or {} for lang in langs]
                delta = np.nan_to_num(scale * _floats(c.get("delta") for c in cells))
                low, high = (
                    scale * _floats(c.get("ci_low") for c in cells),
                    scale * _floats(c.get("ci_high") for c in cells),
                )
                err = np.vstack([np.nan_to_num(delta - low), np.nan_to_num(high - delta)])
                name = f"{kind} ({entry['n_neurons']} neurons)"
                ax.bar(
                    x + offset, delta, width=0.4, color=color, label=name, yerr=err, capsize=2, ecolor="0.3"
                )
            ax.axhline(0, color="0.4", linewidth=0.6)
            ax.set_xticks(x, langs, rotation=90 if len(langs) > 12 else 0, fontsize=8)
            if m in langs:
                ax.get_xticklabels()[langs.index(m)].set_fontweight("bold")
            ax.set_title(f"{m}-specific neurons off", fontsize=9)
            ax.set_ylabel(label, fontsize=8)
            if col == 0:
                ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


# -- Fig. 4 ---------------------------------------------------------------------------------------
def gamma_sweep_figure(steer_summary: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Fig. 4: accuracy, consistency with English and tr+ from English against gamma, one line per
    steering layer (and positions, when both were run): means over steered languages with 95 % CI
    bands across them; a row for letters and one for cloze scores where scored. With controls, a
    dashed line marks the random directions' mean at each gamma. gamma > 0 pushes toward English."""
    settings = steer_summary["settings"]
    lines = sorted({(int(s["layer"]), s.get("positions", "last")) for s in settings})
    several = len({where for _, where in lines}) > 1
    colors = {line: matplotlib.colormaps["tab10"](i % 10) for i, line in enumerate(lines)}
    forms = [f for f in ("", "cloze_") if f"{f}accuracy" in settings[0]]
    fig = _figure(11.0, 3.4 * len(forms) + 0.2)
    axes = fig.subplots(len(forms), len(STEER_METRICS), squeeze=False)
    for row, prefix in enumerate(forms):
        for ax, (key, label, scale) in zip(axes[row], STEER_METRICS, strict=True):
            name = prefix + key
            for line in lines:
                layer, where = line
                rows = sorted(
                    (s for s in settings if (int(s["layer"]), s.get("positions", "last")) == line),
                    key=lambda s: s["gamma"],
                )
                tag = f"layer {layer}" + (f" ({where})" if several else "")
                _band(ax, [s["gamma"] for s in rows], [s[name] for s in rows], scale, colors[line], tag)
                null = [(s["gamma"], _control_level(s, name)) for s in rows if "controls" in s]
                if null:
                    xs, ys = zip(*sorted(null + [(0.0, _base_level(rows, name))]))
                    ax.plot(
                        xs,
                        scale * np.array(ys, dtype=float),
                        color=colors[line],
                        linestyle="--",
                        linewidth=0.9,
                    )
            ax.axvline(0.0, color="black", linewidth=0.8, linestyle=":")
            ax.set_xlabel("γ (steering multiplier)")
            ax.set_ylabel(("cloze " if prefix else "") + label)
            ax.grid(alpha=0.3)
    with_controls = any("controls" in s for s in settings)
    axes[0, 0].legend(
        fontsize=8, title="steered at" + (" (--- controls)" if with_controls else ""), title_fontsize=8
    )
    fig.suptitle(title or "steering sweep (mean over steered languages)", fontsize=11)
    return _save(fig, path)


def _base_level(rows: Sequence[Mapping[str, Any]], name: str) -> float:
    """The unsteered mean of metric ``name`` (its value at gamma = 0)."""
    return next(
        float(np.nan if s[name]["mean"] is None else s[name]["mean"]) for s in rows if s["gamma"] == 0
    )


def _control_level(setting: Mapping[str, Any], name: str) -> float:
    """Where the random controls of a setting put metric ``name`` on average (base + null mean)."""
    mean, delta = setting[name]["mean"], setting[f"delta_{name}"]["mean"]
    null = setting["controls"].get(name, {}).get("null_mean")
    if mean is None or delta is None or null is None:
        return float("nan")
    return float(mean - delta + null)


# -- Fig. 5 ---------------------------------------------------------------------------------------
def default_gamma(steer_summary: Mapping[str, Any]) -> float:
    """The gamma Fig. 5 shows by default: the largest positive one, else the largest in magnitude."""
    gammas = sorted({float(s["gamma"]) for s in steer_summary["settings"]})
    positive = [g for g in gammas if g > 0]
    return positive[-1] if positive else max(gammas, key=abs)


def steer_change_figure(
    steer_summary: Mapping[str, Any],
    path: str | Path,
    gamma: float | None = None,
    title: str | None = None,
    scripts: Mapping[str, str] | None = None,
) -> Path:
    """Fig. 5: per language, the accuracy change at ``gamma`` against unsteered accuracy; one panel
    per steering layer. ``scripts`` (language -> 'Latin'/'non-Latin') sets the marker and colour."""
    gamma = default_gamma(steer_summary) if gamma is None else float(gamma)
    where = "last" if any(s.get("positions", "last") == "last" for s in steer_summary["settings"]) else "all"
    settings = [s for s in steer_summary["settings"] if s.get("positions", "last") == where]
    layers = sorted({int(s["layer"]) for s in settings})
    by_key = {(int(s["layer"]), float(s["gamma"])): s for s in settings}
    missing = [layer for layer in layers if (layer, gamma) not in by_key or (layer, 0.0) not in by_key]
    if missing:
        raise ValueError(f"steering summary has no gamma = {gamma:g} (and 0) setting for layer(s) {missing}")
    script_colors = {"Latin": "tab:blue", "non-Latin": "tab:orange"}
    fig = _figure(min(4.2 * len(layers), 16.0) + 0.4, 4.0)
    axes = _grid(fig, len(layers), 4, sharey=True)
    for ax, layer in zip(axes, layers, strict=True):
        base = by_key[(layer, 0.0)]["per_language"]
        steered = by_key[(layer, gamma)]["per_language"]
        points: dict[tuple[float, float], list[str]] = {}
        for lang in sorted(base):
            x = 100 * base[lang]["accuracy"]
            y = 100 * (steered[lang]["accuracy"] - base[lang]["accuracy"])
            points.setdefault((round(x, 6), round(y, 6)), []).append(lang)
            script = (scripts or {}).get(lang)
            color = script_colors.get(script or "", "tab:purple")
            paired = steered[lang].get("paired", {}).get("accuracy")
            if paired and paired.get("ci_low") is not None:  # the paired item-bootstrap 95 % CI
                ax.errorbar([x], [y], yerr=[[y - 100 * paired["ci_low"]], [100 * paired["ci_high"] - y]],
                            color=color, alpha=0.5, linewidth=0.8, capsize=2)  # fmt: skip
            ax.scatter([x], [y], s=28, marker=SCRIPT_MARKERS.get(script or "Latin", "o"), color=color)
        for (x, y), names in points.items():  # languages on the same point share one label
            ax.annotate(", ".join(names), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.margins(x=0.2, y=0.15)  # room for the language labels at the edges
        ax.set_title(
            f"layer {layer}, γ = {gamma:+g}" + ("" if where == "last" else " (all positions)"), fontsize=10
        )
        ax.set_xlabel("unsteered accuracy (%)")
        ax.set_ylabel("accuracy change (points)")
        ax.grid(alpha=0.3)
    if scripts:
        handles = [
            Line2D([], [], linestyle="", marker=SCRIPT_MARKERS[s], color=c, label=s)
            for s, c in script_colors.items()
        ]
        axes[0].legend(handles=handles, fontsize=8)
    fig.suptitle(title or "accuracy change of steered languages", fontsize=11)
    return _save(fig, path)
