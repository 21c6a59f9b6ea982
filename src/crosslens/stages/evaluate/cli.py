"""The evaluation on the command line: its summary as a table, and ``crosslens metrics``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from crosslens.console import out_console
from crosslens.options import MAX_SEED

__all__ = ["print_summary", "add_commands"]


def print_summary(summary: dict[str, Any], out: Path | None = None) -> None:
    """Per-language accuracy, cloze accuracy, consistency and transfer with the pivot; Table 1's line."""
    from crosslens.scoring.metrics import table1_line

    table = Table(title=f"{summary['dataset']} — {summary['n_items']} items per language")
    for col in ("language", "accuracy", "cloze acc.", "cons. w/ pivot", "tr+ from pivot"):
        table.add_column(col, justify="left" if col == "language" else "right")
    cloze = summary.get("cloze_accuracy", {})
    cons_pivot = summary.get("consistency_with_pivot") or {}
    trp_pivot = summary.get("tr_plus_from_pivot") or {}
    for lang, acc in summary["accuracy"].items():
        cons, trp = cons_pivot.get(lang), trp_pivot.get(lang)
        table.add_row(
            lang,
            f"{100 * acc:.1f}",
            f"{100 * cloze[lang]:.1f}" if lang in cloze else "-",
            "-" if cons is None else f"{cons:.3f}",
            "-" if trp is None else f"{trp:.3f}",
        )
    out_console.print(table)
    if summary.get("pivot") is None:
        out_console.print(
            "no English pivot in this run: the columns anchored on English are empty "
            "(give English items with --pivot-file, or add the English language)"
        )
    out_console.print("letters: " + table1_line(summary))
    if summary.get("cloze"):
        out_console.print("cloze:   " + table1_line(summary["cloze"]))


def add_commands(app: typer.Typer) -> None:
    """``crosslens metrics``: recompute summary.json from the records alone."""

    @app.command()
    def metrics(
        out: Annotated[Path, typer.Argument(help="an output folder with records/")],
        seed: Annotated[int, typer.Option(min=0, max=MAX_SEED, help="bootstrap seed")] = 0,
    ) -> None:
        """Recompute summary.json from the records alone and print it."""
        from crosslens.files import FileFormatError
        from crosslens.stages.evaluate.stage import summarize_records
        from crosslens.store import Store

        store = Store(out)
        stage = store.read_run().stages.get("records")
        if not stage:
            raise typer.BadParameter(f"{out} has no evaluation run (no records stage in run.json)")
        if stage.dataset is None:
            raise FileFormatError(f"{store.run_path}: stages.records.dataset: required key is missing")
        items = stage.selection.items if stage.selection else None  # what summary.json was computed on
        summary = summarize_records(
            store, stage.dataset, stage.languages, stage.pivot, seed=seed, items=items
        )
        print_summary(summary)
