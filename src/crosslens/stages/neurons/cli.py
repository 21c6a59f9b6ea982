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


def _spread(null: dict | None, scale: float, digits: int) -> str:
    """``-0.01 ± 0.03``: the random controls' mean change and its spread (sd over controls)."""
    if not null or null.get("null_mean") is None or null["null_mean"] != null["null_mean"]:
        return "–"
    sd = null.get("null_std")
    spread = f" ± {scale * sd:.{digits}f}" if sd is not None and sd == sd else ""
    return f"{scale * null['null_mean']:+.{digits}f}{spread}"


def _rows(m: str, kinds: dict[str, Any], score: str, k: int, pivot: bool) -> list[list[str]]:
    """The LAPE row, then the control: the one random set as it is, or the K random sets as their
    mean ± sd (the LAPE row then adds the empirical p of its gold-score change among theirs);
    the change in consistency with the pivot where there is one."""
    rows = []
    for kind, e in kinds.items():
        if score not in e or (k > 1 and kind != "lape"):
            continue
        own = e[score][m]
        row = [m, kind, str(e["n_neurons"]), _change(own["accuracy"], 100.0, 1)]
        row += [f"{own['accuracy']['p_mcnemar']:.2g}", _change(own["gold_score"], 1.0, 2)]
        row += [_change(own.get("consistency_pivot"), 1.0, 2)] if pivot else []
        if k > 1:
            p = e.get("controls", {}).get(score, {}).get(m, {}).get("gold_score", {}).get("p_empirical")
            row.append("–" if p is None or p != p else f"{p:.2g}")
        rows.append(row)
    null = kinds.get("lape", {}).get("controls", {}).get(score, {}).get(m)
    if k > 1 and null is not None:
        row = [m, f"random ×{k}", str(kinds["lape"]["n_neurons"]), _spread(null.get("accuracy"), 100.0, 1)]
        row += ["–", _spread(null.get("gold_score"), 1.0, 2)]
        row += [_spread(null.get("consistency_pivot"), 1.0, 2)] if pivot else []
        row += ["–"]
        rows.append(row)
    return rows


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
    k = summary.get("controls", 1)
    for score in ("cloze", "letters"):
        table = Table(
            title=f"deactivating a language's neurons: paired change in that language ({score}, 95 % CI)"
        )
        columns = ["ablated", "neurons", "n", "Δ acc (points)", "p McNemar", "Δ gold score"]
        columns += [f"Δ cons. w/ {pivot}"] if pivot else []
        for col in columns + (["p vs random"] if k > 1 else []):
            table.add_column(col, justify="right")
        for m, kinds in summary["effects"].items():
            for row in _rows(m, kinds, score, k, pivot is not None):
                table.add_row(*row)
        if table.row_count:
            out_console.print(table)
    if k > 1:
        out_console.print(
            f"random ×{k}: mean change ± sd over {k} random sets of as many neurons in the same layers; "
            "p vs random: the empirical p of the LAPE set's gold-score change among theirs",
            highlight=False,
        )
