"""The steering stage on the command line: the sweep's change against gamma = 0, per answer form."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from crosslens.console import out_console

__all__ = ["print_summary"]


def print_summary(summary: dict[str, Any], out: Path | None = None) -> None:
    forms = [("", "letters")] + ([("cloze_", "cloze")] if "cloze" in summary["forms"] else [])
    for prefix, name in forms:
        table = Table(title=f"steering ({name}): change against gamma = 0, mean over steered languages")
        cols = (
            "layer",
            "γ",
            "pos.",
            "acc.",
            "Δ acc",
            "Δ cons. w/ en",
            "Δ tr+ from en",
            "sig. Holm",
            "p vs ctl",
        )
        for col in cols:
            table.add_column(col, justify="right")
        for s in summary["settings"]:
            control = s.get("controls", {}).get(f"{prefix}accuracy", {})
            p = control.get("p_empirical")
            table.add_row(
                str(s["layer"]),
                f"{s['gamma']:+g}",
                s["positions"],
                f"{100 * s[f'{prefix}accuracy']['mean']:.1f}",
                f"{100 * s[f'delta_{prefix}accuracy']['mean']:+.1f}",
                f"{s[f'delta_{prefix}consistency_en']['mean']:+.3f}",
                f"{s[f'delta_{prefix}tr_plus_from_en']['mean']:+.3f}",
                "–" if s["gamma"] == 0 else f"{s[f'{prefix}n_significant_holm']}/{len(s['per_language'])}",
                "–" if p is None or p != p else f"{p:.2f}",
            )
        out_console.print(table)
