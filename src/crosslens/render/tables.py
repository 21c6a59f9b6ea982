"""Tables every report part renders: one object, written as Markdown and as HTML, and the number formats
the paper's tables use (percentages, three-decimal rates, signed values, CIs, starred correlations)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Table", "pct", "rate", "signed", "ci", "corr", "missing"]


# -- formatting -------------------------------------------------------------------------------------
def missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct(x: float | None) -> str:
    return "–" if missing(x) else f"{100 * x:.1f}"


def rate(x: float | None) -> str:
    """Table 1 style: .381 (three decimals, no leading zero)."""
    if missing(x):
        return "–"
    s = f"{x:.3f}"
    return s.replace("0.", ".", 1) if abs(x) < 1 else s


def signed(x: float | None, digits: int = 3) -> str:
    return "–" if missing(x) else f"{x:+.{digits}f}"


def ci(low: float | None, high: float | None, scale: float = 100.0, digits: int = 1) -> str:
    if missing(low) or missing(high):
        return "–"
    return f"[{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def corr(cell: Mapping[str, Any] | None) -> str:
    """Table 2 style: Pearson's r with significance stars, its 95 % CI and the number of languages
    it rests on (−0.62*** [−0.90, −0.05], n = 9)."""
    if not cell or missing(cell.get("r")):
        return "–"
    text = f"{cell['r']:.2f}" + cell.get("stars", "")
    if not missing(cell.get("ci_low")) and not missing(cell.get("ci_high")):
        text += f" [{cell['ci_low']:.2f}, {cell['ci_high']:.2f}]"
    return (text + f", n = {cell['n']}").replace("-", "−")


# -- tables -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    """A small table rendered both as Markdown and as HTML (with optional grouped column headers)."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    groups: list[tuple[str, int]] = field(default_factory=list)  # (group label, columns spanned)
    note: str = ""
    css: str = ""  # HTML class, e.g. "kv" for left-aligned key/value tables

    def markdown(self) -> str:
        def esc(s: str) -> str:
            return str(s).replace("|", "\\|").replace("\n", " ")

        columns = self.columns
        if self.groups:  # Markdown has no spanning headers: prefix each column with its group
            labels = [g for g, span in self.groups for _ in range(span)]
            columns = [f"{g} {c}".strip() for g, c in zip(labels, columns, strict=True)]
        lines = [
            f"**{esc(self.title)}**",
            "",
            "| " + " | ".join(esc(c) for c in columns) + " |",
            "|" + "|".join("---" for _ in columns) + "|",
        ]
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in self.rows]
        if self.note:
            lines += ["", f"_{esc(self.note)}_"]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        e = html.escape
        cls = f' class="{e(self.css)}"' if self.css else ""
        # The title sits above the table, not in a <caption>: a long caption would widen a narrow table.
        parts = [f'<p class="caption">{e(self.title)}</p><table{cls} aria-label="{e(self.title)}"><thead>']
        if self.groups:
            parts.append(
                "<tr>"
                + "".join(
                    f'<th colspan="{span}" class="group">{e(g)}</th>' if span > 1 else f"<th>{e(g)}</th>"
                    for g, span in self.groups
                )
                + "</tr>"
            )
        parts.append("<tr>" + "".join(f"<th>{e(c)}</th>" for c in self.columns) + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in self.rows]
        parts.append("</tbody></table>")
        if self.note:
            parts.append(f'<p class="note">{e(self.note)}</p>')
        return "".join(parts)
