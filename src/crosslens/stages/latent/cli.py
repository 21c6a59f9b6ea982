"""The latent stage on the command line: English and native mass per layer and language, per lens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from crosslens.console import out_console
from crosslens.render.figures import at
from crosslens.render.tables import missing, pct

__all__ = ["print_summary"]

WHERE = {"last": "last prompt token", "answer": "gold answer tokens"}


def _mean(values: list[float]) -> str:
    values = [v for v in values if not missing(v)]
    return f"{sum(values) / len(values):.2f}" if values else "–"


def print_summary(summary: dict[str, Any], out: Path | None = None) -> None:
    """Per lens and position group: the English mass per layer and language (and the mean entropy),
    then the native mass with its control (the same language read from the other prompts)."""
    n = summary["n_items"]
    for group, by_lens in summary["curves"].items():
        where = WHERE[group]
        for lens in summary["lenses"]:
            curves = by_lens[lens]
            langs = [lang for lang in summary["languages"] if lang in curves]
            others = [lang for lang in langs if summary["native"].get(lang) != "en"]
            english = Table(title=f"{lens} lens, {where}: English mass (%), mean over {n} items")
            native = Table(
                title=f"{lens} lens, {where}: native mass (%) (same language from the other prompts)"
            )
            for table, columns in ((english, [*langs, "entropy"]), (native, others)):
                for col in ["layer", *columns]:
                    table.add_column(col, justify="right")
            for layer in summary["layers"]:
                cells = {lang: at(curves[lang], layer) for lang in langs}
                english.add_row(
                    str(layer),
                    *(pct(cells[lang]["en"]["mean"]) for lang in langs),
                    _mean([cells[lang]["entropy"]["mean"] for lang in langs]),
                )
                native.add_row(
                    str(layer),
                    *(f"{pct(cells[lang]['native']['mean'])} ({pct(cells[lang]['native_elsewhere']['mean'])})"
                      for lang in others),
                )  # fmt: skip
            out_console.print(english)
            if others:
                out_console.print(native)
    t = summary["table"]
    out_console.print(
        f"token-language table: {100 * t['vocab_share']:.1f} % of {t['vocab_size']} tokens assigned a "
        f"language ({t['method']}, wordfreq {t['wordfreq']}); 95 % CIs: latent_summary.json, the report",
        highlight=False,
    )
    if summary["unidentified"]:
        out_console.print(
            f"no token can be identified as {', '.join(summary['unidentified'])}: native mass missing",
            highlight=False,
        )
