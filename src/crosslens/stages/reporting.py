"""What a stage contributes to the report, and the result folder it reads from.

The report writer (:mod:`crosslens.experiment.report`) knows no stage: it reads every result folder
(:class:`ResultFolder`: the summaries of all registered stages) and asks each stage's
:class:`ReportPart` for its tables, figures, metadata rows and per-language columns, in registry
order. A stage's part lives in its own folder (``report.py``) and draws its figures there, once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from crosslens.files import Schema, read_json
from crosslens.render.tables import Table
from crosslens.stages.registry import StageDef, load, stage_defs
from crosslens.store import Store

__all__ = [
    "ResultFolder",
    "Summary",
    "Estimate",
    "Change",
    "PairMean",
    "Figure",
    "ReportPart",
    "Column",
    "model_grid",
    "report_parts",
    "summary_files",
    "find_results",
    "draw",
]

Column = tuple[str, dict[str, str]]  # (header, language -> cell)


class Summary(Schema):
    """A stage's summary file: a JSON object; a stage's report part types the keys it reads."""


class Estimate(Schema):
    """A mean and its confidence interval (null where undefined)."""

    mean: float | None
    ci_low: float | None
    ci_high: float | None


class Change(Schema):
    """A paired change and its bootstrap CI (null where undefined)."""

    delta: float | None
    ci_low: float | None
    ci_high: float | None


class PairMean(Schema):
    """A mean over language pairs."""

    mean: float | None


@dataclass(frozen=True)
class Figure:
    """A drawn figure: its report key, PNG and caption."""

    key: str
    path: Path
    caption: str


@dataclass(frozen=True)
class ResultFolder:
    """The summaries of one model x dataset output folder (None where a stage did not run)."""

    path: Path
    rel: str
    model: str
    dataset: str
    run: dict[str, Any]
    summaries: dict[str, dict[str, Any] | None]  # stage key -> its summary (None: did not run here)

    @property
    def title(self) -> str:
        return f"{self.model} — {self.dataset}"

    @classmethod
    def read(cls, path: Path, root: Path) -> ResultFolder:
        """The folder's run.json and summaries, each read through its schema (the stage's part's)."""

        def summary(d: StageDef) -> dict[str, Any] | None:
            p = path / d.summary
            return read_json(p, _part(d).schema).model_dump(exclude_unset=True) if p.is_file() else None

        run = Store(path).read_run().model_dump(exclude_unset=True)
        stages = run.get("stages", {})
        rel = path.relative_to(root).as_posix()
        parts = [] if rel == "." else rel.split("/")
        model = next(
            (s["model"]["spec"] for s in stages.values() if s.get("model") is not None),
            parts[-2] if len(parts) >= 2 else path.name,
        )
        summaries = {d.key: summary(d) for d in stage_defs()}
        summary = summaries.get("eval")
        dataset = next(
            (s["fingerprint"]["dataset"] for s in stages.values() if s.get("fingerprint", {}).get("dataset")),
            (summary or {}).get("dataset") or (parts[-1] if parts else path.name),
        )
        return cls(path, rel, model, dataset, run, summaries)

    @property
    def anchor(self) -> str:
        """A unique HTML id (from the folder's relative path)."""
        return "r-" + "".join(c if c.isalnum() else "-" for c in self.rel)

    def stage(self, table: str) -> dict[str, Any]:
        """One run.json stage entry (by table: records, lens, steer), empty when it did not run here."""
        return self.run.get("stages", {}).get(table, {})

    def commands(self) -> list[str]:
        cmds = [s.get("command") for s in self.run.get("stages", {}).values()]
        return list(dict.fromkeys(c for c in cmds if c))


class ReportPart:
    """A stage's part of the report; every method has an empty default.

    ``schema``: what its summary file holds (the file is read through it, so a part reads only keys
    of the types it names); ``summary_tables``: tables across folders (Table 1, Table 2);
    ``meta_rows``: lines of the folder's run-metadata table (None values are left out);
    ``columns``: per-language columns for the folder's language table; ``sections``: the folder's
    tables and figures in reading order (``columns`` holds every part's per-language columns),
    figures drawn here, once.
    """

    schema: ClassVar[type[Summary]] = Summary

    def summary_tables(self, folders: Sequence[ResultFolder]) -> list[Table]:
        return []

    def meta_rows(self, folder: ResultFolder) -> list[tuple[str, Any]]:
        return []

    def columns(self, folder: ResultFolder) -> list[Column]:
        return []

    def sections(self, folder: ResultFolder, columns: Sequence[Column] = ()) -> list[Table | Figure]:
        return []


def model_grid(
    folders: Sequence[ResultFolder],
) -> tuple[list[str], list[str], dict[tuple[str, str], ResultFolder]]:
    """Rows (models) and column groups (datasets) of a table across folders, as in the paper; the same
    model and dataset in two folders are told apart by the folder."""
    twice = Counter((r.model, r.dataset) for r in folders)

    def label(r: ResultFolder) -> str:
        return r.model if twice[(r.model, r.dataset)] == 1 else f"{r.model} ({r.rel})"

    models = list(dict.fromkeys(label(r) for r in folders))
    datasets = list(dict.fromkeys(r.dataset for r in folders))
    return models, datasets, {(label(r), r.dataset): r for r in folders}


def _part(d: StageDef) -> ReportPart:
    """A stage's report part (an empty one where it has none)."""
    if not d.report:
        return ReportPart()
    return load(d.report) if isinstance(d.report, str) else d.report()


def report_parts() -> list[tuple[str, ReportPart]]:
    """(stage key, part) of every registered stage with a report part, in registry order."""
    return [(d.key, _part(d)) for d in stage_defs() if d.report]


def draw(table: str, folder: Path) -> list[Path]:
    """Draw the figures of the stage that writes ``table`` for one result folder (its report part's)."""
    defn = next((d for d in stage_defs() if d.table == table), None)
    if defn is None or not defn.report:
        return []
    sections = _part(defn).sections(ResultFolder.read(folder, folder))
    return [s.path for s in sections if isinstance(s, Figure)]


def summary_files() -> tuple[str, ...]:
    return tuple(dict.fromkeys(d.summary for d in stage_defs()))


def find_results(root: str | Path) -> list[ResultFolder]:
    """Every result folder at or below ``root`` (a folder holding any stage's summary), by path."""
    root = Path(root)
    folders = {p.parent for name in summary_files() for p in root.rglob(name)}
    return [ResultFolder.read(p, root) for p in sorted(folders)]
