"""A stage of work into one output folder: a fingerprint, units of rows keyed by item, a summary.

Evaluation, the logit lens, PCA and steering have one shape: check what the folder already holds,
cut the selected items into units (a language x a fixed chunk of item ids x the stage's settings,
such as lens layers or steering (layer, gamma) pairs), compute what is missing and write it
atomically, then summarise the selected rows. Keeping that shape here lets the local loop
(:func:`run_stage`) and the Ray backend (:mod:`crosslens.ray_runner`) run the very same units.

What is reused, and when (the rules every stage inherits):

* every shard carries, in its own metadata, the stage's **fingerprint** (model, revision, dtype,
  data source, prompt template, scoring and stage options), its language, the **content digest**
  of each item it holds and the **settings** it covers;
* a shard whose fingerprint differs from the current one, or whose item digest differs from the
  current data, refuses the whole stage with one line naming what differs: results are never mixed;
* what is done is known per (language, item, setting), so a larger ``--limit``, more languages or
  more layers / gammas compute only what is missing, and a smaller selection reads a subset;
  summaries cover exactly the selected items, languages and settings.

:mod:`crosslens.stages.registry` declares every stage once; the runners, the report and the CLI
iterate it.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import pandas as pd

from crosslens import __version__
from crosslens.data.schema import ParallelDataset
from crosslens.store import RunMismatchError, Store, same_fingerprint, unit_name

__all__ = ["Unit", "plan_units", "Stage", "run_stage", "command_line"]

NO_SETTING: tuple[Any, ...] = (None,)  # a stage whose rows depend on the item alone


def setting_key(setting: Any) -> str:
    """A setting (None, a layer, a (layer, gamma) pair) as the text shard metadata compares."""
    return json.dumps(list(setting) if isinstance(setting, tuple) else setting)


@dataclass(frozen=True)
class Unit:
    """A fixed chunk of item ids of one dataset and language, under some settings: the unit of
    work and of resume."""

    dataset: str
    language: str
    chunk: int
    item_ids: tuple[str, ...]
    settings: tuple[Any, ...] = NO_SETTING

    @property
    def name(self) -> str:
        return unit_name(self.dataset, self.language, self.chunk, self.item_ids, self.settings)


def plan_units(
    ds: ParallelDataset,
    languages: Sequence[str],
    chunk_size: int,
    exclude: Sequence[str] = (),
    settings: Sequence[Any] = NO_SETTING,
) -> list[Unit]:
    """Cut every language's aligned item list (minus ``exclude``) into fixed chunks."""
    skip = set(exclude)
    ids = [i for i in ds.item_ids() if i not in skip]
    return [
        Unit(ds.name, lang, k // chunk_size, tuple(ids[k : k + chunk_size]), tuple(settings))
        for lang in languages
        for k in range(0, len(ids), chunk_size)
    ]


Done = dict[tuple[str, str], tuple[str, set[str]]]  # (language, item) -> (digest, setting keys)


def held_items(index: Sequence[tuple[Any, dict[str, Any] | None]]) -> Done:
    """What a table's shards hold, from their metadata (``Store.index``): per (language, item) its
    digest and every setting held (a shard without metadata holds nothing reusable)."""
    held: Done = {}
    for _, meta in index:
        for item, digest in (meta or {}).get("items", {}).items():
            held.setdefault((meta["language"], item), (digest, set()))[1].update(meta["settings"])
    return held


@dataclass
class Stage:
    """What a stage needs besides the model: subclasses give :meth:`rows` and :meth:`summarize`.

    ``setting_columns`` name the row columns that hold a unit's setting (``layer``; ``layer`` and
    ``gamma``), so the selected rows can be read back.
    """

    table: str
    store: Store
    fingerprint: dict[str, Any]
    meta: dict[str, Any]
    units: list[Unit]
    ds: ParallelDataset = field(kw_only=True)
    setting_columns: tuple[str, ...] = field(default=(), kw_only=True)

    # -- what the folder holds --------------------------------------------------------------------
    def digest(self, language: str, item_id: str) -> str:
        """Content digest of what a row of (language, item) depends on (override to add more)."""
        return self.ds.item(language, item_id).digest

    def done(self) -> Done:
        """What the folder holds, after checking every shard against this stage (no writes)."""
        index = self.store.index(self.table)
        for path, meta in index:
            held = self.store.fingerprint_of(path, meta)
            if not self.reusable(held):
                raise self.store.mismatch(self.table, held, self.fingerprint)
        done = held_items(index)
        self._check_items(done)
        return done

    def reusable(self, held: dict[str, Any]) -> bool:
        """Whether rows made under fingerprint ``held`` may be reused or extended by this stage (override
        where part of a fingerprint is compared piece by piece)."""
        return same_fingerprint(held, self.fingerprint)

    def _check_items(self, done: Done) -> None:
        for unit in self.units:
            for item in unit.item_ids:
                held = done.get((unit.language, item))
                if held is not None and held[0] != self.digest(unit.language, item):
                    raise self._changed(unit.language, item, held[0])

    def _changed(self, language: str, item: str, held: str) -> RunMismatchError:
        """The refusal of rows of ``item`` made from data of digest ``held`` (override to say more)."""
        return RunMismatchError(
            f"{self.store.root} holds '{self.table}' results for item {item!r} ({language}) "
            f"made from different data: the item (or the items it depends on) changed under "
            f"dataset '{self.fingerprint.get('dataset')}'; use another --out folder or delete it"
        )

    def check(self) -> Done:
        """Refuse (one line) anything in the folder this stage must not reuse; nothing is written.

        Subclasses with artefacts (activations, vectors) check those too.
        """
        return self.done()

    def todo(self, unit: Unit, done: Done) -> list[Unit]:
        """The parts of ``unit`` still missing: items grouped by the settings they lack."""
        groups: dict[tuple[Any, ...], list[str]] = {}
        for item in unit.item_ids:
            have = done.get((unit.language, item), ("", set()))[1]
            missing = tuple(s for s in unit.settings if setting_key(s) not in have)
            if missing:
                groups.setdefault(missing, []).append(item)
        return [replace(unit, item_ids=tuple(ids), settings=s) for s, ids in groups.items()]

    def unit(self, name: str) -> Unit:
        return next(u for u in self.units if u.name == name)

    # -- running ----------------------------------------------------------------------------------
    def begin(self) -> Done:
        """Check the folder, record the fingerprint, then do the once-per-stage work (under the lock)."""
        done = self.check()
        selection = {"items": list(self.selected_items()), "settings": self.selected_settings()}
        provenance = {"command": command_line(), "crosslens_version": __version__, "selection": selection}
        self.store.begin(self.table, self.fingerprint, self.meta | provenance)
        self.prepare()
        return done

    def prepare(self) -> None:
        """Work shared by all units that must exist before any of them runs (default: none)."""

    def rows(self, unit: Unit) -> pd.DataFrame:
        raise NotImplementedError

    def write(self, unit: Unit, done: Done | None = None) -> None:
        """Compute and write the missing parts of ``unit``, each as one atomic shard."""
        for part in self.todo(unit, self.done() if done is None else done):
            self.store.write_unit(self.table, part.name, self.rows(part), self.shard_meta(part))

    def shard_meta(self, part: Unit) -> dict[str, Any]:
        """What a shard of ``part`` records of itself: the stage, its fingerprint, its language, the
        digest of each item it holds and the settings it covers."""
        return {
            "stage": self.table,
            "fingerprint": self.fingerprint,
            "language": part.language,
            "items": {i: self.digest(part.language, i) for i in part.item_ids},
            "settings": [setting_key(s) for s in part.settings],
        }

    # -- reading back -----------------------------------------------------------------------------
    def selected_items(self) -> list[str]:
        return list(dict.fromkeys(i for u in self.units for i in u.item_ids))

    def selected_settings(self) -> list[Any]:
        return list(dict.fromkeys(s for u in self.units for s in u.settings))

    def read(self) -> pd.DataFrame:
        """The rows of the current selection: its languages, items and settings, nothing else."""
        df = self.store.read(self.table)
        if df.empty:
            return df
        keep = df["item_id"].isin(self.selected_items())
        languages = {u.language for u in self.units}
        if "language" in df and "*" not in languages:
            keep &= df["language"].isin(languages)
        if self.setting_columns:
            wanted = [s if isinstance(s, tuple) else (s,) for s in self.selected_settings()]
            rows = pd.MultiIndex.from_frame(df[list(self.setting_columns)])
            keep &= rows.isin(pd.MultiIndex.from_tuples(wanted, names=rows.names))
        return df[keep].reset_index(drop=True)

    def summarize(self) -> dict[str, Any]:
        raise NotImplementedError


def run_stage(stage: Stage, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run ``stage`` in this process: every missing part in order, then the summary.

    ``progress`` is called with the number of items of each unit, finished or skipped.
    """
    with stage.store.lock(stage.table):
        done = stage.begin()
        for unit in stage.units:
            stage.write(unit, done)
            if progress:
                progress(len(unit.item_ids))
    return stage.summarize()


def command_line() -> str:
    """The command that started this process, as a shell would re-run it (recorded with every stage)."""
    return shlex.join(sys.argv)
