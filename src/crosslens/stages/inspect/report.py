"""The inspection's part of the report: one lens picture per language (the first item), each also
written as a self-contained HTML page beside it in the result folder, and a line of metadata."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from pydantic import model_validator

from crosslens.files import require
from crosslens.stages.inspect import SUMMARY, TABLE
from crosslens.stages.inspect.picture import PNG_POSITIONS, png_picture, write_page
from crosslens.stages.reporting import Column, Figure, ReportPart, ResultFolder, Summary
from crosslens.store import Store

__all__ = ["PART", "InspectSummary", "picture_stem"]


class InspectSummary(Summary):
    """``inspect_summary.json``: the readings the pictures select and the metadata line."""

    languages: list[str]
    layers: list[int]
    lenses: list[str]
    top_k: int
    items: dict[str, str]  # language -> the item read
    prompts: dict[str, str]  # language -> its prompt's text

    @model_validator(mode="after")
    def _every_language(self) -> InspectSummary:
        """Each language's item and prompt (a picture names both)."""
        require(self.items, self.languages, "items")
        require(self.prompts, self.languages, "prompts")
        return self


CAPTION = (
    "Lens picture of item {item} ({language}): per layer (rows, the last on top) and prompt position "
    "(columns; the last {n} of a longer prompt), the lens's most probable next token, coloured by its "
    "probability, with its language. {page} in the result folder shows every position, and the top "
    "tokens and the entropy on hover."
)


def picture_stem(language: str) -> str:
    """File stem of a language's picture (``inspect_fr``), safe for any language code."""
    return "inspect_" + re.sub(r"[^A-Za-z0-9_.-]+", "-", language)


class InspectReport(ReportPart):
    schema = InspectSummary

    def meta_rows(self, folder: ResultFolder) -> list[tuple[str, Any]]:
        s = folder.summaries.get("inspect")
        if not s:
            return []
        items = sorted(set(s["items"].values()))
        return [
            (
                "inspection",
                f"item {', '.join(items)}; lenses {', '.join(s['lenses'])}; top {s['top_k']}; "
                f"layers {', '.join(map(str, s['layers']))}",
            )
        ]

    def sections(self, folder: ResultFolder, columns: Sequence[Column] = ()) -> list[Any]:
        s = folder.summaries.get("inspect")
        if not s:
            return []
        rows = Store(folder.path).read(TABLE)
        if rows.empty:
            raise ValueError(f"{folder.path / SUMMARY} names readings the folder's {TABLE}/ table lacks")
        rows = rows[rows["layer"].isin(s["layers"]) & rows["lens"].isin(s["lenses"])]
        figures = []
        for language in s["languages"]:
            item = s["items"][language]
            reading = rows[(rows["language"] == language) & (rows["item_id"] == item)]
            if reading.empty:
                continue
            stem = picture_stem(language)
            title = f"{folder.title}: {language}, item {item}"
            write_page(reading, folder.path / f"{stem}.html", title, s["prompts"][language])
            png = png_picture(reading, folder.path / f"{stem}.png", title)
            caption = CAPTION.format(item=item, language=language, n=PNG_POSITIONS, page=f"{stem}.html")
            figures.append(Figure(stem, png, caption))
        return figures


PART = InspectReport()
