"""The similarity stage on the command line: CKA with English and the cosine gap as tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from crosslens.console import out_console

__all__ = ["print_summary"]


def print_summary(summary: dict[str, Any], out: Path | None = None) -> None:
    pivot, langs = summary["pivot"], summary["languages"]
    level = round(100 * summary["level"])
    if pivot:
        others = [m for m in langs if m != pivot]
        table = Table(
            title=f"debiased linear CKA with {pivot}, pool={summary['pool']} "
            f"({level} % CIs: similarity_summary.json and the report)"
        )
        table.add_column("layer", justify="right")
        for m in others:
            table.add_column(m, justify="right")
        cka = summary["cka_with_pivot"]["debiased"]
        for layer in summary["layers"]:
            table.add_row(str(layer), *(f"{cka[m][layer]['cka']:.2f}" for m in others))
        out_console.print(table)
    table = Table(title=f"cosine of parallel vs non-parallel pairs, mean over language pairs [{level} % CI]")
    for col in ("layer", "parallel", "non-parallel", "gap"):
        table.add_column(col, justify="right")
    for layer in summary["layers"]:
        c = summary["cosine"][layer]["all_pairs"]
        table.add_row(
            str(layer),
            *(
                f"{c[k]['mean']:+.3f} [{c[k]['ci_low']:+.3f}, {c[k]['ci_high']:+.3f}]"
                for k in ("parallel", "nonparallel", "gap")
            ),
        )
    out_console.print(table)
