"""The divergence stage: per item and language, where the native and English lens readings part, and
whether that predicts the final answer, computed from the results already in the folder.

It reads two tables by name (never the stages that write them): the lens readings through one lens
kind (``lens/``, ``lens_<kind>/``) and the evaluation records (``records/``). Their fingerprints are
part of its own, so rows computed from other readings are never mixed with these; they are known
once those tables exist, which in an experiment is after the lens stage has run (the stage refuses
in :meth:`DivergenceStage.begin` what it cannot know when it is planned). An item is done once its
row is written, which needs its readings at every layer read and the records of its language and of
English: items without them are left for a later run, and counted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from crosslens.data.prompts import get_template
from crosslens.data.schema import ParallelDataset
from crosslens.errors import CrosslensError
from crosslens.lenses.kinds import lens_kinds
from crosslens.models.anatomy import paper_layers
from crosslens.models.loading import LoadedModel, model_depth
from crosslens.options import OptionError
from crosslens.scoring import metrics
from crosslens.scoring.options import CHUNK_SIZE
from crosslens.stages.api import runner
from crosslens.stages.base import Done, Stage, Unit, held_items, plan_units, setting_key
from crosslens.stages.context import Plan
from crosslens.stages.divergence import divergence_table
from crosslens.stages.divergence.compute import agreement, divergence_layer, summary_of
from crosslens.stages.divergence.config import DEFAULTS, DivergenceConfig, sources
from crosslens.stages.fingerprints import prompt_fingerprint
from crosslens.stages.options import EveryLayers
from crosslens.store import RunMismatchError, Store, describe_mismatch

__all__ = ["DivergenceStage", "MissingResultsError", "divergence_stage", "run_divergence", "build_for"]


class MissingResultsError(CrosslensError, ValueError):
    """The folder lacks the results (lens readings, evaluation records) a divergence is computed from."""


OWN_KEYS = {"lens", "cloze", "cloze_norm"}  # what only one of the two source tables' fingerprints holds
ANSWERS = {"": ("pred", "correct"), "cloze_": ("cloze_pred", "cloze_correct")}  # the records' columns


@dataclass(kw_only=True)
class DivergenceStage(Stage):
    """Per-item divergence through one lens kind: one row per (language, item), the pivot excluded."""

    kind: str
    layers: list[int]
    expected: dict[str, Any]  # what the readings and records must have been made with (model, data, prompt)
    n_boot: int
    seed: int
    languages: list[str]
    agreement: str
    min_rho: float
    resolved: bool = False
    _coverage: set[tuple[str, str]] | None = field(default=None, repr=False)

    @property
    def sources(self) -> tuple[str, str]:
        return sources(self.kind)

    def digest(self, language: str, item_id: str) -> str:
        """A row reads the item's English answers and records too: both items' content counts."""
        return f"{self.ds.item(language, item_id).digest}+{self.ds.item(self.ds.pivot, item_id).digest}"

    # -- the results it is computed from ------------------------------------------------------------
    def _resolve(self) -> bool:
        """Complete the fingerprint with the readings' and records' own once both tables exist
        (False while one is missing): rows computed from other results are then refused."""
        if self.resolved:
            return True
        found = {}
        for table in self.sources:
            index = self.store.index(table)
            if not index:
                return False
            self.store.precheck(table, self.expected)  # another model, dtype, data or template: one line
            prints = [self.store.fingerprint_of(path, meta) for path, meta in index]
            if any(fp != prints[0] for fp in prints):
                other = next(fp for fp in prints if fp != prints[0])
                raise RunMismatchError(
                    f"{self.store.root}/{table} holds shards made with different settings "
                    f"({describe_mismatch(prints[0], other)}); make it again in a folder of its own"
                )
            found[table] = prints[0]
        readings, records = (found[t] for t in self.sources)
        shared = (set(readings) | set(records)) - OWN_KEYS  # the model, the data and the prompt
        old, new = ({k: fp.get(k) for k in shared} for fp in (records, readings))
        if old != new:
            raise RunMismatchError(
                f"{self.store.root}: the {self.kind}-lens readings and the evaluation records were made "
                f"with different prompts ({describe_mismatch(old, new)}); make both with the same options"
            )
        self.fingerprint = self.fingerprint | {"sources": found}
        self.resolved = True
        return True

    def coverage(self) -> set[tuple[str, str]]:
        """The selected (language, item) pairs whose row can be computed: readings at every layer read,
        the records of the language and of English, all made from the current items."""
        if self._coverage is not None:
            return self._coverage
        readings, records = self.sources
        layers = {setting_key(layer) for layer in self.layers}
        read = held_items(self.store.index(readings))
        answered = held_items(self.store.index(records))
        pivot = self.ds.pivot
        ok = set()
        for unit in self.units:
            for item in unit.item_ids:
                lang = unit.language
                now = {
                    (readings, lang): self.digest(lang, item),
                    (records, lang): self.ds.item(lang, item).digest,
                    (records, pivot): self.ds.item(pivot, item).digest,
                }
                found = {}
                for (table, language), digest in now.items():
                    held = (read if table == readings else answered).get((language, item))
                    if held is not None:
                        self._same_data(table, item, language, held[0], digest)
                        found[(table, language)] = held[1]
                if len(found) == len(now) and layers <= found[(readings, lang)]:
                    ok.add((lang, item))
        self._coverage = ok
        return ok

    def _same_data(self, table: str, item: str, language: str, held: str, now: str) -> None:
        if held != now:
            raise RunMismatchError(
                f"{self.store.root} holds '{table}' results for item {item!r} ({language}) made from "
                f"different data: the item changed under dataset '{self.ds.name}'; make them again first"
            )

    def _read(self, table: str, language: str, items: Sequence[str]) -> pd.DataFrame:
        """The rows of ``table`` for ``items`` of one language, from the shards that hold them."""
        wanted = set(items)
        frames = [
            pd.read_parquet(path)
            for path, meta in self.store.index(table)
            if meta["language"] == language and wanted & set(meta["items"])
        ]
        df = pd.concat(frames, ignore_index=True)
        return df[(df["language"] == language) & df["item_id"].isin(wanted)]

    # -- the stage's protocol -------------------------------------------------------------------------
    def done(self) -> Done:
        self._resolve()
        return super().done()

    def check(self) -> Done:
        if not self._resolve():
            if self.store.has_rows(self.table):
                raise RunMismatchError(
                    f"{self.store.root} holds '{self.table}' results but not the lens readings and "
                    f"evaluation records they were computed from ({', '.join(self.sources)}); delete "
                    f"{self.table}/ or make those again"
                )
            return {}  # they are made by a stage that runs before this one; checked again in begin()
        return super().check()

    def begin(self) -> Done:
        """Refuse (nothing written) a folder without the results to compute any selected row from."""
        if not self._resolve():
            missing = " and no ".join(t for t in self.sources if not self.store.has_rows(t))
            raise MissingResultsError(
                f"{self.store.root} holds no {missing} results to compute the divergence from; make them "
                "first (crosslens lens, eval)"
            )
        self._coverage = None
        if not self.coverage():
            raise MissingResultsError(self._nothing_covered())
        return super().begin()

    def _nothing_covered(self) -> str:
        """Why no selected row can be computed, as one line."""
        readings, records = self.sources
        read, answered = held_items(self.store.index(readings)), held_items(self.store.index(records))
        pairs = [(u.language, i) for u in self.units for i in u.item_ids]
        if not any(p in read for p in pairs):
            return f"{readings}/ holds no readings of the selected items and languages; read them first"
        layers = sorted(
            {json.loads(s) for p in pairs if p in read for s in read[p][1]}, key=lambda x: (x is None, x)
        )
        if not any({setting_key(x) for x in self.layers} <= read[p][1] for p in pairs if p in read):
            return (
                f"{readings}/ holds layers {layers}, not every one of {self.layers}; read the layers "
                "the lens read"
            )
        if not any((self.ds.pivot, i) in answered for _, i in pairs):
            return f"{records}/ holds no English ({self.ds.pivot}) answers of these items; evaluate it too"
        return f"{records}/ holds no answers of the selected items and languages; evaluate them first"

    def write(self, unit: Unit, done: Done | None = None) -> None:
        """Write the missing rows of ``unit`` that can be computed now (an item without its readings
        or records is not marked done: a later run computes it)."""
        if not self._resolve():
            raise MissingResultsError(f"{self.store.root} holds no {self.kind}-lens readings or records")
        for part in self.todo(unit, self.done() if done is None else done):
            frame = self.rows(part)
            ready = set(frame["item_id"]) if len(frame) else set()
            if ready:
                part = replace(part, item_ids=tuple(i for i in part.item_ids if i in ready))
                self.store.write_unit(self.table, part.name, frame, self.shard_meta(part))

    def rows(self, unit: Unit) -> pd.DataFrame:
        lang, pivot = unit.language, self.ds.pivot
        covered = self.coverage()
        items = [i for i in unit.item_ids if (lang, i) in covered]
        if not items:
            return pd.DataFrame()
        readings, records = self.sources
        lens = self._read(readings, lang, items)
        lens = lens[lens["layer"].isin(self.layers) & lens["form"].isin(("native", "en"))]
        scores = lens.pivot(index=["item_id", "layer"], columns=["form", "choice"], values="logprob")
        mine = self._read(records, lang, items).set_index("item_id")
        english = self._read(records, pivot, items).set_index("item_id")
        rows = []
        for item in items:
            it = self.ds.item(lang, item)
            n = len(it.choices)
            grid = scores.loc[item].reindex(self.layers)
            agree = agreement(
                grid["native"].to_numpy()[:, :n], grid["en"].to_numpy()[:, :n], self.agreement, self.min_rho
            )
            same = sum(
                a.strip() == b.strip() for a, b in zip(it.choices, self.ds.english_choices(item) or ())
            )
            row = {
                "dataset": self.ds.name,
                "language": lang,
                "item_id": item,
                "lens": self.kind,
                "gold": it.gold,
                "n_choices": n,
                "same_text": same,
                "agree": [bool(a) for a in agree],
                "divergence_layer": divergence_layer(self.layers, agree),
            }
            for prefix, (pred, correct) in ANSWERS.items():
                if pred not in mine or pd.isna(mine.at[item, pred]) or pd.isna(english.at[item, pred]):
                    continue
                ok, en_ok = bool(mine.at[item, correct]), bool(english.at[item, correct])
                row |= {
                    f"{prefix}pred": int(mine.at[item, pred]),
                    f"en_{prefix}pred": int(english.at[item, pred]),
                    f"{prefix}correct": ok,
                    f"en_{prefix}correct": en_ok,
                    f"{prefix}inconsistent": int(mine.at[item, pred]) != int(english.at[item, pred]),
                    f"{prefix}no_transfer": (not ok) if en_ok else None,
                }
            rows.append(row)
        df = pd.DataFrame(rows)
        df["divergence_layer"] = df["divergence_layer"].astype("Int64")
        for col in [c for c in df if c.endswith("no_transfer")]:
            df[col] = df[col].astype("boolean")
        return df

    def summarize(self) -> dict[str, Any]:
        self._resolve()
        df = self.read()
        if df.empty:
            raise MissingResultsError(f"{self.store.root} holds no divergence rows of the selected items")
        selected = {(u.language, i) for u in self.units for i in u.item_ids}
        have = set(zip(df["language"], df["item_id"]))
        summary = {
            "lens": self.kind,
            "pivot": self.ds.pivot,
            "agreement": self.agreement,
            "min_rho": self.min_rho if self.agreement == "rank" else None,
            "seed": self.seed,
            **summary_of(df, self.layers, self.n_boot, self.seed),
            "not_computed": {
                lang: sum(1 for lg, i in selected - have if lg == lang) for lang in self.languages
            },
        }
        self.store.write_json(f"{self.table}_summary.json", metrics.to_jsonable(summary))
        return summary


def divergence_stage(
    model: LoadedModel | str,
    ds: ParallelDataset,
    out: str | Path,
    layers: Sequence[int] | None = None,
    lens: str = "logit",
    agreement: str = DEFAULTS.agreement,
    min_rho: float = DEFAULTS.min_rho,
    n_boot: int = DEFAULTS.n_boot,
    seed: int = 0,
    template: str | None = None,
    dtype: str = "float32",
    chunk_size: int = CHUNK_SIZE,
) -> DivergenceStage:
    """The divergence through ``lens`` of the readings and records ``model`` (a loaded model, or its
    spec with ``dtype``: nothing is loaded) left in ``out`` for ``ds``, planned but not run.

    ``layers``: those the lens read (default: the paper's schedule for the model's depth).
    """
    if isinstance(model, LoadedModel):
        spec, dtype, depth = model.spec, model.precision, model.anatomy.n_layers
    else:
        spec, depth = model, (model_depth(model) if layers is None else None)
    if layers is None and depth is None:
        raise OptionError("layers", f"cannot read the depth of {spec} from its config; name the layers read")
    DivergenceConfig(lenses=[lens], agreement=agreement, min_rho=min_rho, n_boot=n_boot)  # one line if bad
    return _plan(spec, dtype, ds, out, list(layers) if layers is not None else paper_layers(depth or 0), lens,
                 agreement, min_rho, n_boot, seed, template, chunk_size)  # fmt: skip


def _plan(
    spec: str,
    dtype: str,
    ds: ParallelDataset,
    out: str | Path,
    layers: Sequence[int],
    kind: str,
    agreement: str,
    min_rho: float,
    n_boot: int,
    seed: int,
    template: str | None,
    chunk_size: int,
) -> DivergenceStage:
    if ds.pivot is None:
        raise OptionError("enabled", f"{ds.name} has no English pivot, which divergence compares with")
    if kind not in lens_kinds():
        raise OptionError("lenses", f"unknown lens {kind!r}")
    layers = sorted(set(layers))
    if not layers:
        raise OptionError("layers", "is empty: give at least one layer")
    expected = prompt_fingerprint(spec, dtype, ds, get_template(template or ds.template))
    options = {"agreement": agreement} | ({"min_rho": min_rho} if agreement == "rank" else {})
    languages = [lang for lang in ds.languages if lang != ds.pivot]
    missing_pivot = [i for i in ds.item_ids() if ds.english_choices(i) is None]
    return DivergenceStage(
        ds=ds,
        table=divergence_table(kind),
        store=Store(out),
        fingerprint=expected | {"lens": kind, "layers": layers} | options,
        meta={
            "model": {"spec": spec, "dtype": dtype},
            "lens": kind,
            "languages": languages,
            "layers": layers,
            "n_boot": n_boot,
        }
        | options,
        units=plan_units(ds, languages, chunk_size, exclude=missing_pivot),
        kind=kind,
        layers=layers,
        expected=expected,
        n_boot=n_boot,
        seed=seed,
        languages=languages,
        agreement=agreement,
        min_rho=min_rho,
    )


def build_for(ctx: Plan, kind: str) -> DivergenceStage:
    """The divergence through lens ``kind`` of one model x dataset (the registry's builder): from a
    plan alone, as it loads nothing; the run's layers, which the lens read."""
    section = ctx.section
    assert isinstance(section, DivergenceConfig)
    if ctx.depth is None and isinstance(ctx.layers, EveryLayers):
        raise OptionError(
            "layers", f"cannot read the depth of {ctx.spec} from its config; name the layers read"
        )
    return _plan(
        ctx.spec, ctx.model.dtype, ctx.data, ctx.out, ctx.layers_for(ctx.depth or 0), kind, section.agreement,
        section.min_rho, section.n_boot, ctx.seed, ctx.dataset.template, ctx.run.chunk_size,
    )  # fmt: skip


#: Compute the divergence (resuming what is done) and summarise: :func:`divergence_stage`'s
#: arguments, and ``progress``.
run_divergence = runner(divergence_stage, "run_divergence")
