"""The latent stage on the command line: English / native mass per layer and language, per lens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from crosslens.console import out_console
from crosslens.render.figures import at
from crosslens.render.tables import missing, pct

__all__ = ["print_summary"]


def print_summary(summary: dict[str, Any], out: Path | None = None) -> None:
    t = summary["table"]
    for lens in summary["lenses"]:
        curves = summary["curves"]["last"][lens]
        langs = [lang for lang in summary["languages"] if lang in curves]
        table = Table(
            title=f"{lens} lens, last prompt token: English / native mass (%), mean over "
            f"{summary['n_items']} items (CIs: latent_summary.json and the report)"
        )
        table.add_column("layer", justify="right")
        for lang in langs:
            table.add_column(lang, justify="right")
        table.add_column("entropy", justify="right")
        for layer in summary["layers"]:
            cells, entropy = [], []
            for lang in langs:
                cell = at(curves[lang], layer)
                en, nat = cell["en"]["mean"], cell["native"]["mean"]
                english = summary["native"].get(lang) == "en"
                cells.append(pct(en) if english else f"{pct(en)} / {pct(nat)}")
                if not missing(cell["entropy"]["mean"]):
                    entropy.append(cell["entropy"]["mean"])
            mean_h = f"{sum(entropy) / len(entropy):.2f}" if entropy else "–"
            table.add_row(str(layer), *cells, mean_h)
        out_console.print(table)
    out_console.print(
        f"token-language table: {100 * t['vocab_share']:.1f} % of {t['vocab_size']} tokens assigned a "
        f"language ({t['method']}, wordfreq {t['wordfreq']})",
        highlight=False,
    )
    if summary["unidentified"]:
        out_console.print(
            f"no token can be identified as {', '.join(summary['unidentified'])}: native mass missing",
            highlight=False,
        )
