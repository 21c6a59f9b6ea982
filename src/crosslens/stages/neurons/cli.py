"""The neurons stage on the command line: how many neurons per language, and the effect of
deactivating them, as tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from crosslens.console import out_console

__all__ = ["print_summary"]


def _change(e: dict | None, scale: float, digits: int) -> str:
    """``-0.49 [-0.70, -0.32]``; – where undefined (consistency of English with itself)."""
    if not e or e["delta"] != e["delta"]:
        return "–"
    low, high = scale * e["ci_low"], scale * e["ci_high"]
    return f"{scale * e['delta']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def print_summary(summary: dict[str, Any], out: Path | None = None) -> None:
    sel = summary["selection"]
    out_console.print(
        f"LAPE kept {sel['n_kept']} of {sel['n_neurons']} neurons; specific per language: "
        + ", ".join(f"{m} {n}" for m, n in summary["n_specific"].items()),
        highlight=False,
    )
    pivot = summary["pivot"]  # None: no English items, so no consistency with them
    if pivot is None:
        out_console.print("no English pivot in this run: consistency with it is not measured")
    for score in ("cloze", "letters"):
        table = Table(
            title=f"deactivating a language's neurons: paired change in that language ({score}, 95 % CI)"
        )
        columns = ["ablated", "neurons", "n", "Δ acc (points)", "p McNemar", "Δ gold score"]
        for col in columns + ([f"Δ cons. w/ {pivot}"] if pivot else []):
            table.add_column(col, justify="right")
        for m, kinds in summary["effects"].items():
            for kind, e in kinds.items():
                if score not in e:
                    continue
                own = e[score][m]
                table.add_row(
                    m,
                    kind,
                    str(e["n_neurons"]),
                    _change(own["accuracy"], 100.0, 1),
                    f"{own['accuracy']['p_mcnemar']:.2g}",
                    _change(own["gold_score"], 1.0, 2),
                    *([_change(own.get("consistency_pivot"), 1.0, 2)] if pivot else []),
                )
        if table.row_count:
            out_console.print(table)
