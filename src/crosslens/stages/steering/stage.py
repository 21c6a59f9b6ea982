"""The steering stage (paper §2.3, Eq. 8, §4.3): vectors from N held-out items, then every other
item under every (layer, gamma, positions) setting and control, resumable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from crosslens.data.prompts import Template, get_template, render
from crosslens.data.schema import ParallelDataset
from crosslens.models.loading import LoadedModel
from crosslens.options import check_seed
from crosslens.scoring.answers import cloze_fields, label_fields
from crosslens.scoring.choices import LabelPlan, encode_continuation, label_plan, require_finite
from crosslens.scoring.options import EvalOptions
from crosslens.stages.api import runner
from crosslens.stages.base import Done, Stage, Unit, plan_units
from crosslens.stages.context import JobContext
from crosslens.stages.fingerprints import data_fingerprint, scoring_fingerprint
from crosslens.stages.sampling import held_out_sample, items_digest
from crosslens.stages.steering import TABLE
from crosslens.stages.steering.config import DEFAULTS, SteeringConfig, check_steering
from crosslens.stages.steering.controls import WRONG_LANGUAGE, control_names, control_vector, wrong_language
from crosslens.stages.steering.grid import Scored, add_at_positions, full_scores, steer_grid
from crosslens.stages.steering.summary import summarize_steering
from crosslens.stages.steering.vectors import (
    VECTORS_FILE,
    SteeringVectors,
    build_vectors,
    vectors_fingerprint,
)
from crosslens.store import Store

__all__ = ["SteerStage", "steer_stage", "run_steering", "build"]


@dataclass(kw_only=True)
class SteerStage(Stage):
    """Steering records of one dataset: every held-out item under every (layer, gamma) setting."""

    lm: LoadedModel
    languages: list[str]  # the pivot first
    layers: list[int]
    vector_items: list[str]
    template: Template
    plan: LabelPlan
    opts: EvalOptions
    seed: int = 0
    _vectors: SteeringVectors | None = field(default=None, init=False, repr=False)

    @property
    def vectors_path(self) -> Path:
        return self.store.root / VECTORS_FILE

    @cached_property
    def vector_digests(self) -> dict[str, str]:
        return {m: items_digest(self.ds, m, self.vector_items) for m in self.languages}

    def digest(self, language: str, item_id: str) -> str:
        """A steered row depends on its item and on v_m, i.e. the vector items in m and the pivot."""
        d = self.vector_digests
        return f"{self.ds.item(language, item_id).digest}+{d[language]}+{d[self.ds.pivot]}"

    def vectors_fingerprint(self) -> dict[str, Any]:
        return vectors_fingerprint(self.lm, self.ds, self.template, self.vector_items)

    def check(self) -> Done:
        done = super().check()
        if self.vectors_path.is_file():
            SteeringVectors.load(self.vectors_path).check(
                self.vectors_path, self.vectors_fingerprint(), self.vector_digests
            )
        return done

    def prepare(self) -> None:
        """Build the vectors once; on a rerun reuse the saved ones and build only missing ones."""
        self.vectors()

    def vectors(self) -> SteeringVectors:
        """The saved vectors (checked), extended by any (language, layer) this run needs and lacks."""
        if self._vectors is not None:
            return self._vectors
        path, digests = self.vectors_path, self.vector_digests
        sv = None
        if path.is_file():
            sv = SteeringVectors.load(path)
            sv.check(path, self.vectors_fingerprint(), digests)
        langs = [m for m in self.languages if sv is None or any(not sv.has(m, x) for x in self.layers)]
        if langs:
            layers = [x for x in self.layers if sv is None or any(not sv.has(m, x) for m in langs)]
            new = build_vectors(
                self.lm,
                self.ds,
                [m for m in langs if m != self.ds.pivot],
                layers,
                self.vector_items,
                self.opts.template,
                self.opts.batch_size,
            )
            if sv is None:
                sv = new
            else:  # never replace a vector already on disk: rows may already have used it
                for m, per in new.vectors.items():
                    for layer, v in per.items():
                        if not sv.has(m, layer):
                            sv.vectors.setdefault(m, {})[layer] = v
                sv.digests |= new.digests
            sv.save(path)
        self._vectors = sv
        return sv

    def delta(self, language: str, layer: int, gamma: float, control: str) -> torch.Tensor:
        """gamma times the vector a setting adds: v(m -> en), or one of its controls."""
        sv = self.vectors()
        v = sv.get(language, layer)
        if control:
            other = wrong_language(self.languages, self.ds.pivot, language)
            v = control_vector(
                v, control, self.seed, language, layer, sv.get(other, layer) if other else None
            )
        return gamma * v

    def rows(self, unit: Unit) -> pd.DataFrame:
        ds = self.ds
        items = [ds.item(unit.language, i) for i in unit.item_ids]
        texts = [render(it, self.template) for it in items]
        pids = [self.lm.tokenizer(t).input_ids for t in texts]
        lids = [self.plan.for_n(len(it.choices)) for it in items]
        conts = None
        if self.opts.cloze:
            conts = [
                [encode_continuation(self.lm.tokenizer, t, p, c)[0] for c in it.choices]
                for it, t, p in zip(items, texts, pids)
            ]
        steered = unit.language != ds.pivot
        deltas = {
            s: self.delta(unit.language, s[0], s[1], s[3])
            if steered
            else torch.zeros(self.lm.anatomy.d_model)
            for s in unit.settings
        }
        zero = [s for s in unit.settings if not torch.any(deltas[s] != 0)]
        last = [s for s in unit.settings if s not in zero and s[2] == "last"]
        scored: dict[tuple, list[Scored]] = {}
        if zero:  # every unsteered setting (gamma = 0, the pivot) has the same scores: computed once
            (unsteered,) = steer_grid(
                self.lm, pids, lids, [(1, deltas[zero[0]])], conts, self.opts.batch_size
            )
            scored |= {s: unsteered for s in zero}
        grid = steer_grid(self.lm, pids, lids, [(s[0], deltas[s]) for s in last], conts, self.opts.batch_size)
        scored |= dict(zip(last, grid))
        for s in unit.settings:
            if s not in scored:  # positions "all": a full forward with gamma * v at every position
                with add_at_positions(self.lm.anatomy, s[0], deltas[s], None):
                    scored[s] = full_scores(self.lm, pids, lids, conts, self.opts)
        other = wrong_language(self.languages, ds.pivot, unit.language) or ""
        rows = []
        for s in unit.settings:
            layer, g, positions, control = s
            for it, (lp, texts_lp) in zip(items, scored[s]):
                where = (
                    f"item {it.item_id!r} ({it.language}), layer {layer}, gamma {g:+g}, {control or 'vector'}"
                )
                require_finite(lp, where)
                row = {
                    "dataset": ds.name,
                    "language": it.language,
                    "item_id": it.item_id,
                    "layer": layer,
                    "gamma": g,
                    "positions": positions,
                    "control": control,
                    "control_language": other if control == WRONG_LANGUAGE else "",
                    "steered": steered,
                    "gold": it.gold,
                    **label_fields(lp, it.gold),
                }
                if texts_lp is not None:
                    for x in texts_lp:
                        require_finite(x, where)
                    row |= cloze_fields(texts_lp, it.choices, it.gold, self.opts.cloze_norm)
                rows.append(row)
        return pd.DataFrame(rows)

    def summarize(self) -> dict[str, Any]:
        return summarize_steering(self.store, self.ds.pivot, self.read(), seed=self.seed)


def steer_stage(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    languages: Sequence[str],
    layers: Sequence[int],
    gammas: Sequence[float],
    n_vectors: int = DEFAULTS.n_vectors,
    seed: int = 0,
    opts: EvalOptions = EvalOptions(),
    controls: int = DEFAULTS.controls,
    positions: Sequence[str] = tuple(DEFAULTS.positions),
) -> SteerStage:
    """Steering of ``lm`` on ``ds`` into ``out``, planned but not run (vectors are built in ``begin``).

    ``controls``: K random directions with the norm of each vector, plus the wrong language's
    vector (when two or more languages are steered), through the same grid. ``positions``: where
    gamma * v is added, ``last`` (the last prompt token, the paper's) and / or ``all``.
    """
    check_seed(seed)
    section = check_steering(layers, gammas, n_vectors, controls, positions, opts, ds)
    layers = lm.anatomy.check_layers(section.layers)
    positions = list(dict.fromkeys(section.positions))
    gammas = sorted({float(g) for g in gammas} | {0.0})  # gamma = 0 is the unsteered baseline
    template = get_template(opts.template or ds.template)
    plan = label_plan(lm.tokenizer, max(5, ds.max_choices()))
    vec_items = held_out_sample(ds.item_ids(), n_vectors, seed, "n_vectors")
    langs = [ds.pivot] + [m for m in languages if m != ds.pivot]
    fp = (
        data_fingerprint(lm, ds, template)
        | scoring_fingerprint(plan, opts, lm.tokenizer)
        | {
            "vector_items": vec_items,
            "seed": seed,  # draws the random controls
            "settings": "layer, gamma, positions, control",
        }
    )
    names = control_names(controls, controls > 0 and len([m for m in langs if m != ds.pivot]) > 1)
    meta = {
        "model": lm.describe(),
        "languages": langs,
        "vector_items": vec_items,
        "pivot_rows": "evaluated unsteered (v_en->en = 0), repeated per setting",
        "layers": layers,
        "gammas": gammas,
        "n_vectors": n_vectors,
        "seed": seed,
        "positions": positions,
        "controls": names,
        "control_seeds": "random:k: a normal direction seeded by sha256('seed:language:layer:random:k') "
        "at the norm of v; wrong-language: the next steered language's vector at the same norm",
    }
    settings = [
        (layer, g, where, control)
        for layer in layers
        for g in gammas
        for where in positions
        for control in ([""] + (names if g != 0.0 else []))
    ]
    return SteerStage(
        ds=ds,
        table=TABLE,
        store=Store(out),
        fingerprint=fp,
        meta=meta,
        units=plan_units(ds, langs, opts.chunk_size, exclude=vec_items, settings=settings),
        setting_columns=("layer", "gamma", "positions", "control"),
        lm=lm,
        languages=langs,
        layers=layers,
        vector_items=vec_items,
        template=template,
        plan=plan,
        opts=opts,
        seed=seed,
    )


def build(ctx: JobContext) -> SteerStage:
    """Steering of one model x dataset (the registry's builder)."""
    s, ds = ctx.section, ctx.data
    assert isinstance(s, SteeringConfig)
    return steer_stage(
        ctx.lm, ds, ctx.out, ds.languages, s.layers_for(ctx.spec), s.gammas, s.n_vectors, ctx.seed,
        ctx.eval_options(), s.controls, s.positions,
    )  # fmt: skip


#: Build vectors from held-out items, evaluate the rest under every (layer, gamma, positions) and every
#: control: :func:`steer_stage`'s arguments, and ``progress``.
run_steering = runner(steer_stage, "run_steering")
