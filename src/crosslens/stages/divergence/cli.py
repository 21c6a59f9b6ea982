"""The divergence stage on the command line: where the readings part per language, and the effects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from crosslens.console import out_console
from crosslens.render.tables import missing

__all__ = ["print_summary"]


def _auc(cell: dict[str, Any] | None) -> str:
    """``0.58 [0.49, 0.67] (12/40)``: the AUC, its CI and the items with the outcome (– (2/28): too
    few items with or without it for an estimate)."""
    if not cell:
        return "–"
    counts = f"({cell['events']}/{cell['n']})"
    if missing(cell["auc"]):
        return f"– {counts}"
    low, high = cell["auc_ci"]
    ci = "" if missing(low) else f" [{low:.2f}, {high:.2f}]"
    return f"{cell['auc']:.2f}{ci} {counts}"


def print_summary(summary: dict[str, Any], out: Path | None = None) -> None:
    """Per language and pooled: how many items' readings part, where, and the AUC of the divergence
    layer for each outcome, per scoring the records hold (slopes: the summary file and the report)."""
    rule = "top choice" if summary["agreement"] == "top" else f"Spearman's rho >= {summary['min_rho']}"
    per = summary["per_language"]
    for scoring, effects in summary["effects"].items():
        table = Table(
            title=f"{summary['lens']} lens, {scoring} (readings agree: {rule}): AUC that an item with the "
            "outcome parts earlier (> .5: the divergence layer predicts it), 95 % CI"
        )
        for k, col in enumerate(
            ("language", "items", "part %", "median layer", "answer ≠ en", "no transfer")
        ):
            table.add_column(col, justify="left" if k == 0 else "right")
        for lang in summary["languages"]:
            s = per[lang]
            table.add_row(
                lang,
                str(s["n"]),
                f"{100 * s['parted']:.0f}",
                "–" if missing(s["median_layer"]) else f"{s['median_layer']:g}",
                *(_auc(effects[o]["per_language"].get(lang)) for o in ("inconsistent", "no_transfer")),
            )
        n = sum(per[lang]["n"] for lang in summary["languages"])
        parted = sum(per[lang]["parted"] * per[lang]["n"] for lang in summary["languages"]) / max(n, 1)
        table.add_row("pooled", str(n), f"{100 * parted:.0f}", "–",
                      *(_auc(effects[o]["pooled"]) for o in ("inconsistent", "no_transfer")))  # fmt: skip
        out_console.print(table)
    left = {k: v for k, v in summary.get("not_computed", {}).items() if v}
    if left:
        out_console.print(
            "items without lens readings or records (left for a later run): "
            + ", ".join(f"{k} {v}" for k, v in left.items()),
            highlight=False,
        )
