"""The word tasks on the command line: what the tokenizer's filter dropped, the curves pooled over
targets, and where each target's curves turn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from crosslens.console import out_console
from crosslens.render.figures import at
from crosslens.render.tables import missing
from crosslens.stages.words.compute import ALL
from crosslens.stages.words.report import group_label, targets_of

__all__ = ["print_summary", "filter_lines"]


def filter_lines(summary: dict[str, Any]) -> list[str]:
    """One line per target: concepts kept of those screened, and why the others were dropped."""
    lines = []
    for target, c in summary["filter"].items():
        why = [f"{len(ids)} {summary['reasons'][r]}" for r, ids in c["dropped"].items() if ids]
        lines.append(
            f"{target}: kept {c['kept']} of {c['concepts']} concepts"
            + (f" ({'; '.join(why)})" if why else "")
        )
    return lines


def _mean(cell: dict[str, Any]) -> str:
    return "–" if missing(cell.get("mean")) else f"{cell['mean']:.3f}"


def print_summary(summary: dict[str, Any], out: Path | None = None) -> None:
    """The filter's counts, then per task the pooled curves (means; the CIs are in the summary and the
    report) and where each target's curves turn."""
    name = summary["word_list"]["name"]
    out_console.print(f"word list {name}: the tokenizer's filter (Wendler et al.)", highlight=False)
    for line in filter_lines(summary):
        out_console.print(f"  {line}", highlight=False)
    copies = summary.get("copies") or {}
    if copies:
        pairs = ", ".join(f"{key.partition(':')[2]} {len(ids)}" for key, ids in copies.items())
        line = f"  left out of translation pairs (the target shares a first token with the source): {pairs}"
        out_console.print(line, highlight=False)
    several = len(summary["lenses"]) > 1
    for task in (t for t in summary["tasks"] if t in summary["curves"]):
        for lens, curve in summary["curves"][task].get(ALL, {}).items():
            title = summary["lenses"][lens]["title"]
            table = Table(title=f"{task}, {title}: mean over concepts, non-English targets pooled")
            for col in ("layer", "P(target)", "P(English)", "mass target", "mass English", "entropy"):
                table.add_column(col, justify="right")
            for layer in summary["layers"]:
                cell = at(curve, layer)
                metrics = ("p_target", "p_english", "mass_target", "mass_english", "entropy")
                table.add_row(str(layer), *(_mean(cell[m]) for m in metrics))
            out_console.print(table)
        table = Table(title=f"{task}: where the curves turn, per target (means over concepts)")
        cols = ["target", *(["lens"] if several else []), "n", "peak P(en)", "at layer", "P(tgt) there",
                "tgt > en from", "final P(tgt)", "final P(en)"]  # fmt: skip
        for col in cols:
            table.add_column(col, justify="right")
        for target in targets_of(summary, task):
            for lens, m in summary["landmarks"][task][target].items():
                n = at(summary["curves"][task][target][lens], m["final_layer"])["p_target"]["n"]
                table.add_row(
                    group_label(target), *([lens] if several else []), str(n), f"{m['english_peak']:.3f}",
                    str(m["english_peak_layer"]), f"{m['target_at_english_peak']:.3f}",
                    "–" if m["target_takes_over"] is None else str(m["target_takes_over"]),
                    f"{m['final_target']:.3f}", f"{m['final_english']:.3f}",
                )  # fmt: skip
        out_console.print(table)
