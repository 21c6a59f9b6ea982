"""The steering stage's part of the report: the sweep's table, the gamma sweep (Fig. 4) and the change
per language against its unsteered accuracy (Fig. 5)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.lines import Line2D
from pydantic import Field, model_validator

from crosslens.data.scripts import script_of
from crosslens.files import Schema, require
from crosslens.render.figures import band, grid, new_figure, save
from crosslens.render.tables import Table, missing, pct, signed
from crosslens.scoring import RECORDS
from crosslens.stages.reporting import Change, Column, Estimate, Figure, ReportPart, ResultFolder, Summary
from crosslens.store import Store

__all__ = ["PART", "SteerSummary", "gamma_sweep_figure", "steer_change_figure", "default_gamma"]

_UNSET = Estimate(mean=None, ci_low=None, ci_high=None)  # a key that may be absent, but not null


class LanguageSteer(Schema):
    accuracy: float
    paired: dict[str, Change] = {}


class ControlStat(Schema):
    """Random directions against the real one: their mean change, its spread, the empirical p."""

    null_mean: float | None
    null_std: float | None = None
    p_empirical: float | None = None


_NO_CONTROL = ControlStat(null_mean=None)


class Controls(Schema):
    accuracy: ControlStat = _NO_CONTROL
    consistency_en: ControlStat = _NO_CONTROL
    tr_plus_from_en: ControlStat = _NO_CONTROL
    cloze_accuracy: ControlStat = _NO_CONTROL
    cloze_consistency_en: ControlStat = _NO_CONTROL
    cloze_tr_plus_from_en: ControlStat = _NO_CONTROL


CLOZE_KEYS = tuple(
    f"{d}cloze_{k}" for d in ("", "delta_") for k in ("accuracy", "consistency_en", "tr_plus_from_en")
)


class Setting(Schema):
    """One (layer, gamma, positions) of the sweep: means over steered languages and their changes."""

    layer: int
    gamma: float
    positions: str = "last"
    accuracy: Estimate
    consistency_en: Estimate
    tr_plus_from_en: Estimate
    delta_accuracy: Estimate
    delta_consistency_en: Estimate
    delta_tr_plus_from_en: Estimate
    cloze_accuracy: Estimate = _UNSET
    cloze_consistency_en: Estimate = _UNSET
    cloze_tr_plus_from_en: Estimate = _UNSET
    delta_cloze_accuracy: Estimate = _UNSET
    delta_cloze_consistency_en: Estimate = _UNSET
    delta_cloze_tr_plus_from_en: Estimate = _UNSET
    n_significant_holm: int = 0
    cloze_n_significant_holm: int = 0
    per_language: dict[str, LanguageSteer]
    controls: Controls = Controls()


class SteerSummary(Summary):
    """``steer_summary.json``: what the steering table, Fig. 4 and Fig. 5 read."""

    forms: list[str] = []
    settings: list[Setting] = Field(min_length=1)

    @model_validator(mode="after")
    def _a_full_grid(self) -> SteerSummary:
        """Every setting scored alike, over the same languages, and a gamma = 0 baseline per line."""
        first = self.settings[0]
        cloze = "cloze" in self.forms or "cloze_accuracy" in first.model_fields_set
        for i, s in enumerate(self.settings):
            require(s.model_fields_set, CLOZE_KEYS if cloze else (), f"settings[{i}]")
            require(s.per_language, first.per_language, f"settings[{i}].per_language")
        lines = {(s.layer, s.positions) for s in self.settings}
        for layer, where in sorted(lines - {(s.layer, s.positions) for s in self.settings if s.gamma == 0}):
            raise ValueError(f"settings: layer {layer} ({where} positions) has no gamma = 0 setting")
        return self


STEER_METRICS = (
    ("accuracy", "accuracy (%)", 100.0),
    ("consistency_en", "consistency with English (ρ)", 1.0),
    ("tr_plus_from_en", "tr+ from English (%)", 100.0),
)
SCRIPT_MARKERS = {"Latin": "o", "non-Latin": "^"}
FIG4, FIG5 = "fig4_gamma_sweep.png", "fig5_steer_change.png"
CAPTIONS = {
    "fig4": (
        "Fig. 4. Steering sweep: accuracy, consistency with English and tr+ from English against γ "
        "(γ > 0 pushes toward English processing). Shaded: 95 % CI across steered languages."
    ),
    "fig5": (
        "Fig. 5. Accuracy change per language under steering against its unsteered accuracy, one panel "
        "per steering layer."
    ),
}


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
    fig = new_figure(11.0, 3.4 * len(forms) + 0.2)
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
                band(ax, [s["gamma"] for s in rows], [s[name] for s in rows], scale, colors[line], tag)
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
    return save(fig, path)


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
    fig = new_figure(min(4.2 * len(layers), 16.0) + 0.4, 4.0)
    axes = grid(fig, len(layers), 4, sharey=True)
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
    return save(fig, path)


def _holm_count(setting: Mapping[str, Any], prefix: str = "") -> str:
    """``2/9``: languages of a steering setting whose change survives Holm (– for γ = 0)."""
    key = f"{prefix}n_significant_holm"
    if setting["gamma"] == 0 or key not in setting:
        return "–"
    return f"{setting[key]}/{len(setting['per_language'])}"


def _against_controls(setting: Mapping[str, Any], key: str, scale: float, digits: int) -> str:
    """``+1.2 vs 0.3 ± 0.8 (p .20)``: the mean effect, the random controls' mean ± sd, the empirical p."""
    c = setting.get("controls", {}).get(key)
    if not c or missing(c.get("null_mean")):
        return "–"
    sd = "" if missing(c.get("null_std")) else f" ± {scale * c['null_std']:.{digits}f}"
    p = "–" if missing(c.get("p_empirical")) else f"{c['p_empirical']:.2f}"
    return f"{scale * c['null_mean']:+.{digits}f}{sd} (p {p})"


def _steer_table(steer: Mapping[str, Any]) -> Table:
    """Steering per setting: letters and (where scored) cloze effects, Holm survivors, controls."""
    forms = [("", "letters")] + ([("cloze_", "cloze")] if "cloze" in steer.get("forms", []) else [])
    controls = any("controls" in st for st in steer["settings"])
    columns = ["layer", "γ", "positions"]
    for _, name in forms:
        columns += [f"{name} acc. (%)", "Δ acc. (points)", "Δ cons. with en", "Δ tr+ from en", "sig. (Holm)"]
        columns += ["controls: Δ acc." ] if controls else []  # fmt: skip
    rows = []
    for st in steer["settings"]:
        row = [str(st["layer"]), f"{st['gamma']:+g}", st.get("positions", "last")]
        for prefix, _ in forms:
            delta = st[f"delta_{prefix}accuracy"]["mean"]
            row += [
                pct(st[f"{prefix}accuracy"]["mean"]),
                signed(None if missing(delta) else 100 * delta, 1),
                signed(st[f"delta_{prefix}consistency_en"]["mean"]),
                signed(st[f"delta_{prefix}tr_plus_from_en"]["mean"]),
                _holm_count(st, prefix),
            ]
            row += [_against_controls(st, f"{prefix}accuracy", 100.0, 1)] if controls else []
        rows.append(row)
    note = (
        "sig. (Holm): steered languages whose accuracy changed against γ = 0 (exact McNemar test, "
        "Holm-adjusted over the whole grid, p < .05); per-language paired CIs are in steer_summary.json."
    )
    if controls:
        note += (
            " controls: the change random directions of each vector's norm cause (mean ± sd over "
            "controls) and the empirical p of the real change against them."
        )
    return Table("Steering: means over steered languages; changes against γ = 0", columns, rows, note=note)


def _scripts(folder: Path) -> dict[str, str] | None:
    """Latin / non-Latin per language, from the evaluation's prompts (None without records)."""
    store = Store(folder)
    if not store.has_rows(RECORDS):
        return None
    rows = store.read(RECORDS).drop_duplicates("language")
    return {lang: script_of(lang, text) for lang, text in zip(rows["language"], rows["prompt"])}


class SteeringReport(ReportPart):
    schema = SteerSummary

    def meta_rows(self, folder: ResultFolder) -> list[tuple[str, Any]]:
        steer = folder.stage("steer")
        if not steer:
            return []
        return [
            (
                "steering",
                f"layers {steer.get('layers')}, γ {steer.get('gammas')}, vectors from "
                f"{steer.get('n_vectors')} held-out items (seed {steer.get('seed')})",
            )
        ]

    def sections(self, folder: ResultFolder, columns: Sequence[Column] = ()) -> list[Any]:
        s = folder.summaries.get("steer")
        if not s:
            return []
        fig4 = gamma_sweep_figure(s, folder.path / FIG4, f"{folder.title}: steering sweep")
        fig5 = steer_change_figure(s, folder.path / FIG5, title=folder.title, scripts=_scripts(folder.path))
        return [
            _steer_table(s),
            Figure("fig4", fig4, CAPTIONS["fig4"]),
            Figure("fig5", fig5, CAPTIONS["fig5"]),
        ]


PART = SteeringReport()
