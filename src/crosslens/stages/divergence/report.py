"""The divergence stage's part of the report: the pooled effects across folders, and per folder the
effects per language and the figure (agreement per layer, where the readings part, the AUCs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crosslens.lenses.kinds import lens_kinds
from crosslens.render.figures import new_figure, save
from crosslens.render.tables import Table, missing
from crosslens.stages.divergence import divergence_table, stage_key
from crosslens.stages.reporting import Column, Figure, ReportPart, ResultFolder, model_grid

__all__ = ["DivergenceReport", "divergence_figure", "effect_rows"]

OUTCOME_LABELS = {"inconsistent": "answer ≠ English's", "no_transfer": "English right, this language wrong"}
GROUP_COLORS = {"consistent": "tab:blue", "inconsistent": "tab:red"}
CAPTION = (
    "Per-item divergence of the native and English lens readings. (a) Share of items whose two readings "
    "agree at each layer, for items whose final letter answer is consistent with English's and for the "
    "others; (b) where the readings part (the first layer of their last disagreement; 'never': they agree "
    "at the last layer read); (c) AUC of the divergence layer for each outcome, per language and pooled "
    "within languages (> .5: items with the outcome part earlier), 95 % bootstrap CIs over items."
)


def _estimate(x: float | None, ci: Sequence[float | None] | None, fmt: str) -> str:
    if missing(x):
        return "–"
    text = f"{x:{fmt}}"
    if ci and not missing(ci[0]) and not missing(ci[1]):
        text += f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]"
    return text


def _cell(effect: Mapping[str, Any] | None) -> list[str]:
    if not effect:
        return ["–", "–", "–"]
    return [
        f"{effect['events']}/{effect['n']}",
        _estimate(effect["auc"], effect["auc_ci"], ".2f"),
        _estimate(effect["slope"], effect["slope_ci"], "+.2f"),
    ]


def effect_rows(summary: Mapping[str, Any], scoring: str) -> tuple[list[str], list[list[str]]]:
    """The effects of one scoring as a table: a row per language, then the pooled row."""
    head = ["language", "items", "part (%)", "median layer"]
    for outcome in ("inconsistent", "no_transfer"):
        head += [f"{OUTCOME_LABELS[outcome]}: k/n", "AUC [95 % CI]", "slope [95 % CI]"]
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
    """(a) agreement per layer by consistency group, (b) the divergence layers by group, (c) the AUCs."""
    layers = summary["layers"]
    fig = new_figure(14.0, 4.0)
    ax_a, ax_b, ax_c = fig.subplots(1, 3)
    for group, shares in summary["agreement_by_layer"].items():
        if shares:
            ax_a.plot(layers, [100 * s for s in shares], marker="o", color=GROUP_COLORS[group], label=group)
    ax_a.set_xlabel("layer")
    ax_a.set_ylabel("readings agree (% of items)")
    ax_a.set_ylim(0, 100)
    ax_a.set_xticks(layers)
    ax_a.set_title("(a) native and English readings agree", fontsize=10)
    codes = [str(x) for x in [*layers, summary["never"]]]
    labels = [*map(str, layers), "never"]
    width = 0.4
    for k, (group, hist) in enumerate(summary["divergence_histogram"].items()):
        counts = np.array([hist.get(c, 0) for c in codes], dtype=float)
        total = counts.sum()
        if total:
            ax_b.bar(np.arange(len(codes)) + (k - 0.5) * width, 100 * counts / total, width,
                     color=GROUP_COLORS[group], label=f"{group} (n = {int(total)})")  # fmt: skip
    ax_b.set_xticks(range(len(codes)), labels)
    ax_b.set_xlabel("divergence layer")
    ax_b.set_ylabel("% of items")
    ax_b.set_title("(b) where the readings part", fontsize=10)
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
        for row, name in enumerate(names):
            cell = effect["pooled"] if name == "pooled" else effect["per_language"].get(name)
            if not cell or missing(cell["auc"]):
                continue
            y = row + (k - (len(series) - 1) / 2) * step
            low, high = cell["auc_ci"]
            if not missing(low):
                ax.plot([low, high], [y, y], color=color, linewidth=1)
            ax.plot([cell["auc"]], [y], marker=marker, color=color, linestyle="none",
                    label=f"{scoring}: {OUTCOME_LABELS[outcome]}" if row == 0 else None)  # fmt: skip
    ax.axvline(0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5 + 0.25 * len(series), -0.5)  # room below the rows for the legend
    ax.set_xlim(0, 1)
    ax.set_xlabel("AUC: items with the outcome part earlier")
    ax.set_title("(c) does the divergence layer predict it?", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=7, loc="lower left")


class DivergenceReport(ReportPart):
    """The part of the divergence through one lens kind (the logit lens's part also writes the table
    across folders for every kind)."""

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
                    note="part: the readings disagree at the last layer read; median over those items. AUC: "
                    "the probability that an item with the outcome parts earlier than one without (same "
                    "language; > .5: earlier divergence, more often the outcome); slope: log-odds of the "
                    "outcome per layer later (logistic regression, one intercept per language). 95 % "
                    f"bootstrap CIs over items ({s['n_boot']} replicates).",
                )
            )
        name = f"fig_{divergence_table(self.kind)}.png"
        path = divergence_figure(s, folder.path / name, f"{folder.title} ({self.title.lower()})")
        out.append(Figure(f"divergence_{self.kind}", path, CAPTION))
        return out
