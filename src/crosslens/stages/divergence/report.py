"""The divergence stage's part of the report: the pooled effects across folders, and per folder the
effects per language and the figure (agreement per layer, where the readings part, the AUCs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from crosslens.files import Schema, require
from crosslens.lenses.kinds import lens_kinds
from crosslens.render.figures import new_figure, save
from crosslens.render.tables import Table, missing
from crosslens.stages.divergence import divergence_table, stage_key
from crosslens.stages.divergence.compute import MIN_GROUP
from crosslens.stages.reporting import Column, Figure, ReportPart, ResultFolder, Summary, model_grid

__all__ = ["DivergenceReport", "DivergenceSummary", "divergence_figure", "effect_rows"]

Scoring = Literal["letters", "cloze"]  # the records' answers an outcome is read from (STYLES)
Interval = Annotated[list[float | None], Field(min_length=2, max_length=2)]  # [low, high]


class EffectCell(Schema):
    """Whether the divergence layer predicts an outcome, in one language or pooled (null: too few items)."""

    n: int
    events: int
    auc: float | None
    auc_ci: Interval
    auc_parted: float | None
    auc_parted_ci: Interval
    slope: float | None
    slope_ci: Interval


class Effect(Schema):
    pooled: EffectCell | None
    per_language: dict[str, EffectCell]


class Outcomes(Schema):
    inconsistent: Effect
    no_transfer: Effect


class Parting(Schema):
    """One language: its items, the share whose readings part, and where (median; null: none part)."""

    n: int
    parted: float
    median_layer: float | None


class AtDivergence(Schema):
    """Items, and inconsistent ones, whose readings part at one layer."""

    n: int
    inconsistent: int


class DivergenceSummary(Summary):
    """``divergence_summary.json`` (and each lens kind's): what the effects tables, the figure, the
    metadata line and the table across folders read."""

    agreement: Literal["top", "rank"]
    min_rho: float | None
    layers: list[int]
    never: int
    identical: int
    n_boot: int
    languages: list[str]
    per_language: dict[str, Parting]
    agreement_by_layer: dict[Scoring, dict[Literal["consistent", "inconsistent"], list[float] | None]]
    inconsistent_by_divergence: dict[Scoring, dict[str, AtDivergence]]  # layer (or never) -> items
    effects: dict[Scoring, Outcomes]

    @model_validator(mode="after")
    def _every_layer(self) -> DivergenceSummary:
        """Each language's parting, every divergence layer's counts, one agreement share per layer."""
        require(self.per_language, self.languages, "per_language")
        for scoring, cells in self.inconsistent_by_divergence.items():
            require(cells, [*self.layers, self.never], f"inconsistent_by_divergence.{scoring}")
        for scoring, groups in self.agreement_by_layer.items():
            for group, shares in groups.items():
                if shares is not None and len(shares) != len(self.layers):
                    raise ValueError(
                        f"agreement_by_layer.{scoring}.{group}: expected {len(self.layers)} of them (one "
                        f"per layer), got {len(shares)}"
                    )
        return self


OUTCOME_LABELS = {"inconsistent": "answer ≠ English's", "no_transfer": "English's right answer lost"}
GROUP_COLORS = {"consistent": "tab:blue", "inconsistent": "tab:red"}
STYLES = {"letters": "-", "cloze": "--"}
CAPTION = (
    "Per-item divergence of the native and English lens readings (letters solid, full answers dashed). "
    "(a) Share of items whose two readings agree at each layer, for items whose final answer is "
    "consistent with English's and for the others; (b) share of items whose answer differs from "
    "English's, by divergence layer (the first layer of the readings' last disagreement; 'never': they "
    "agree at the last layer read), n items per layer; (c) AUC of the divergence layer for each outcome, "
    "per language and pooled within languages (> .5: items with the outcome part earlier), 95 % "
    "bootstrap CIs over items."
)


def _estimate(x: float | None, ci: Sequence[float | None] | None, fmt: str) -> str:
    if missing(x):
        return "–"
    text = f"{x:{fmt}}"
    if ci and not missing(ci[0]) and not missing(ci[1]):
        text += f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"
    return text


EFFECT_COLUMNS = ["k/n", "AUC [95 % CI]", "AUC, parting items", "slope [95 % CI]"]


def _cell(effect: Mapping[str, Any] | None) -> list[str]:
    if not effect:
        return ["–"] * len(EFFECT_COLUMNS)
    return [
        f"{effect['events']}/{effect['n']}",
        _estimate(effect["auc"], effect["auc_ci"], ".2f"),
        _estimate(effect["auc_parted"], effect["auc_parted_ci"], ".2f"),
        _estimate(effect["slope"], effect["slope_ci"], "+.2f"),
    ]


def effect_rows(summary: Mapping[str, Any], scoring: str) -> tuple[list[str], list[list[str]]]:
    """The effects of one scoring as a table: a row per language, then the pooled row (the columns
    of each outcome are grouped under :data:`OUTCOME_LABELS`)."""
    head = ["language", "items", "part (%)", "median layer"] + EFFECT_COLUMNS * 2
    effects = summary["effects"][scoring]
    rows = []
    per = summary["per_language"]
    for lang in summary["languages"]:
        s = per[lang]
        median = "–" if missing(s["median_layer"]) else f"{s['median_layer']:g}"
        rows.append(
            [lang, str(s["n"]), f"{100 * s['parted']:.0f}", median]
            + [
                x
                for o in ("inconsistent", "no_transfer")
                for x in _cell(effects[o]["per_language"].get(lang))
            ]
        )
    n = sum(per[lang]["n"] for lang in summary["languages"])
    parted = sum(per[lang]["parted"] * per[lang]["n"] for lang in summary["languages"]) / max(n, 1)
    rows.append(
        ["pooled", str(n), f"{100 * parted:.0f}", "–"]
        + [x for o in ("inconsistent", "no_transfer") for x in _cell(effects[o]["pooled"])]
    )
    return head, rows


def divergence_figure(summary: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """(a) agreement per layer by consistency group, (b) inconsistency per divergence layer, (c) the AUCs;
    letters solid, full answers (cloze) dashed."""
    layers = summary["layers"]
    fig = new_figure(14.0, 4.0)
    ax_a, ax_b, ax_c = fig.subplots(1, 3)
    for scoring, groups in summary["agreement_by_layer"].items():
        for group, shares in groups.items():
            if shares:
                ax_a.plot(layers, [100 * s for s in shares], STYLES[scoring], marker="o",
                          color=GROUP_COLORS[group], label=f"{group} ({scoring})")  # fmt: skip
    ax_a.set_xlabel("layer")
    ax_a.set_ylabel("readings agree (% of items)")
    ax_a.set_ylim(0, 100)
    ax_a.set_xticks(layers)
    ax_a.set_title("(a) native and English readings agree", fontsize=10)
    codes = [str(x) for x in [*layers, summary["never"]]]
    xs = np.arange(len(codes))
    n = {}
    for scoring, cells in summary["inconsistent_by_divergence"].items():
        n = {c: cells[c]["n"] for c in codes}
        rate = [100 * cells[c]["inconsistent"] / cells[c]["n"] if cells[c]["n"] else np.nan for c in codes]
        ax_b.plot(xs, rate, STYLES[scoring], marker="o", color="tab:red", label=scoring)
    ax_b.set_xticks(xs, [f"{c if c != codes[-1] else 'never'}\nn={n.get(c, 0)}" for c in codes])
    ax_b.set_xlabel("divergence layer")
    ax_b.set_ylabel("answer ≠ English's (% of items)")
    ax_b.set_ylim(0, 100)
    ax_b.set_title("(b) inconsistency by where the readings part", fontsize=10)
    _forest(ax_c, summary)
    for ax in (ax_a, ax_b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, path)


def _forest(ax: Any, summary: Mapping[str, Any]) -> None:
    """AUC with its CI per language and pooled, one marker per scoring x outcome."""
    names = [*summary["languages"], "pooled"]
    styles = {
        ("letters", "inconsistent"): ("o", "tab:red"),
        ("letters", "no_transfer"): ("s", "tab:orange"),
        ("cloze", "inconsistent"): ("^", "tab:purple"),
        ("cloze", "no_transfer"): ("D", "tab:gray"),
    }
    series = [(s, o) for s in summary["effects"] for o in ("inconsistent", "no_transfer")]
    step = 0.8 / max(len(series), 1)
    for k, (scoring, outcome) in enumerate(series):
        effect = summary["effects"][scoring][outcome]
        marker, color = styles[(scoring, outcome)]
        label: str | None = f"{scoring}: {OUTCOME_LABELS[outcome]}"  # on the series' first point
        for row, name in enumerate(names):
            cell = effect["pooled"] if name == "pooled" else effect["per_language"].get(name)
            if not cell or missing(cell["auc"]):
                continue
            y = row + (k - (len(series) - 1) / 2) * step
            low, high = cell["auc_ci"]
            if not missing(low):
                ax.plot([low, high], [y, y], color=color, linewidth=1)
            ax.plot([cell["auc"]], [y], marker=marker, color=color, linestyle="none", label=label)
            label = None
    ax.axvline(0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("AUC: items with the outcome part earlier")
    ax.set_title("(c) does the divergence layer predict it?", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    else:
        ax.text(0.5, 0.5, f"no estimate: fewer than {MIN_GROUP} items\nwith or without an outcome",
                ha="center", va="center", transform=ax.transAxes, fontsize=8)  # fmt: skip


class DivergenceReport(ReportPart):
    """The part of the divergence through one lens kind (the logit lens's part also writes the table
    across folders for every kind)."""

    schema = DivergenceSummary

    def __init__(self, kind: str):
        self.kind = kind
        self.key = stage_key(kind)
        self.title = lens_kinds()[kind].title if kind in lens_kinds() else f"{kind} lens"

    def summary_tables(self, folders: Sequence[ResultFolder]) -> list[Table]:
        if self.kind != "logit":
            return []
        keys = [(stage_key(k), lens_kinds()[k].title.lower()) for k in lens_kinds()]
        keys = [(key, title) for key, title in keys if any(r.summaries.get(key) for r in folders)]
        if not keys:
            return []
        models, datasets, by = model_grid(folders)
        cols = ["AUC incons.", "AUC no transfer"]
        rows = []
        for m in models:
            for key, title in keys:
                row = [f"{m} · {title}"]
                for d in datasets:
                    s = by[(m, d)].summaries.get(key) if (m, d) in by else None
                    letters = ((s or {}).get("effects") or {}).get("letters") or {}
                    for outcome in ("inconsistent", "no_transfer"):
                        pooled = (letters.get(outcome) or {}).get("pooled")
                        row.append(_estimate(pooled["auc"], pooled["auc_ci"], ".2f") if pooled else "–")
                rows.append(row)
        return [
            Table(
                "Divergence layer vs the final answer, item by item: AUC (pooled within languages) that "
                "an item whose letter answer differs from English's (incons.), or whose English-correct "
                "answer does not transfer, has readings that part earlier",
                ["model · lens"] + cols * len(datasets),
                rows,
                [("", 1)] + [(d, len(cols)) for d in datasets],
                ".5: the divergence layer tells nothing; 95 % bootstrap CIs over items.",
            )
        ]

    def meta_rows(self, folder: ResultFolder) -> list[tuple[str, Any]]:
        s = folder.summaries.get(self.key)
        if not s:
            return []
        rule = "top choice" if s["agreement"] == "top" else f"Spearman's rho ≥ {s['min_rho']}"
        layers = ", ".join(map(str, s["layers"]))
        what = (
            f"readings agree: {rule}; layers {layers}; {s['identical']} items with identical texts left out"
        )
        return [(f"divergence ({self.title.lower()})", what)]

    def sections(self, folder: ResultFolder, columns: Sequence[Column] = ()) -> list[Table | Figure]:
        s = folder.summaries.get(self.key)
        if not s:
            return []
        out: list[Table | Figure] = []
        for scoring in s["effects"]:
            head, rows = effect_rows(s, scoring)
            out.append(
                Table(
                    f"Per-item divergence ({self.title.lower()}, {scoring}): where the native and English "
                    "readings part, and whether it predicts the final answer",
                    head,
                    rows,
                    [("", 4)]
                    + [(OUTCOME_LABELS[o], len(EFFECT_COLUMNS)) for o in ("inconsistent", "no_transfer")],
                    note="part: the readings disagree at the last layer read; median over those items. AUC: "
                    "the probability that an item with the outcome parts earlier than one without (same "
                    "language; > .5: earlier divergence, more often the outcome; 'never' counts as latest); "
                    "AUC, parting items: the same among items whose readings part; slope: log-odds of the "
                    "outcome per layer later (logistic regression, one intercept per language). 95 % "
                    f"bootstrap CIs over items ({s['n_boot']} replicates); –: fewer than {MIN_GROUP} items "
                    "with, or without, the outcome.",
                )
            )
        name = f"fig_{divergence_table(self.kind)}.png"
        path = divergence_figure(s, folder.path / name, f"{folder.title} ({self.title.lower()})")
        out.append(Figure(f"divergence_{self.kind}", path, CAPTION))
        return out
