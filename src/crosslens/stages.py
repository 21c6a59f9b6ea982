"""A stage of work into one output folder: a fingerprint, fixed units of rows, a summary.

Evaluation, the logit lens and steering have one shape: check the folder's fingerprint, cut the
dataset into units (a language x a fixed chunk of item ids), compute each missing unit's rows and
write them atomically, then summarise from the table alone. Keeping that shape here lets the local
loop (:func:`run_stage`) and the Ray backend (:mod:`crosslens.ray_runner`) run the very same
units, so both backends write the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from crosslens.data import ParallelDataset
from crosslens.store import Store, unit_name

__all__ = ["Unit", "plan_units", "Stage", "run_stage"]


@dataclass(frozen=True)
class Unit:
    """A fixed chunk of item ids of one dataset and language: the unit of work and of resume."""

    dataset: str
    language: str
    chunk: int
    item_ids: tuple[str, ...]

    @property
    def name(self) -> str:
        return unit_name(self.dataset, self.language, self.chunk, list(self.item_ids))


def plan_units(
    ds: ParallelDataset, languages: Sequence[str], chunk_size: int, exclude: Sequence[str] = ()
) -> list[Unit]:
    """Cut every language's aligned item list (minus ``exclude``) into fixed chunks."""
    skip = set(exclude)
    ids = [i for i in ds.item_ids() if i not in skip]
    return [
        Unit(ds.name, lang, k // chunk_size, tuple(ids[k : k + chunk_size]))
        for lang in languages
        for k in range(0, len(ids), chunk_size)
    ]


@dataclass
class Stage:
    """What a stage needs besides the model: subclasses give :meth:`rows` and :meth:`summarize`."""

    table: str
    store: Store
    fingerprint: dict[str, Any]
    meta: dict[str, Any]
    units: list[Unit]

    def begin(self) -> None:
        """Record (or check) the fingerprint, then do the once-per-stage work (call under the lock)."""
        self.store.begin(self.table, self.fingerprint, self.meta)
        self.prepare()

    def prepare(self) -> None:
        """Work shared by all units that must exist before any of them runs (default: none)."""

    def pending(self) -> list[Unit]:
        done = self.store.done_units(self.table)
        return [u for u in self.units if u.name not in done]

    def unit(self, name: str) -> Unit:
        return next(u for u in self.units if u.name == name)

    def rows(self, unit: Unit) -> pd.DataFrame:
        raise NotImplementedError

    def write(self, unit: Unit) -> None:
        self.store.write_unit(self.table, unit.name, self.rows(unit))

    def summarize(self) -> dict[str, Any]:
        raise NotImplementedError


def run_stage(stage: Stage, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run ``stage`` in this process: every missing unit in order, then the summary.

    ``progress`` is called with the number of items of each unit, finished or skipped.
    """
    with stage.store.lock(stage.table):
        stage.begin()
        done = stage.store.done_units(stage.table)
        for unit in stage.units:
            if unit.name not in done:
                stage.write(unit)
            if progress:
                progress(len(unit.item_ids))
    return stage.summarize()
