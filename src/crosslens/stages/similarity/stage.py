"""The similarity stage: CKA and cosine between every pair of languages per layer, from one activation
file shared with PCA (the maths: :mod:`crosslens.stages.similarity.compute`)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from crosslens.data.prompts import get_template
from crosslens.data.schema import ParallelDataset
from crosslens.models.loading import LoadedModel
from crosslens.options import OptionError, check_seed
from crosslens.scoring import metrics
from crosslens.stages.activations import POOLS, Activations, SampleStage
from crosslens.stages.api import runner
from crosslens.stages.base import Unit
from crosslens.stages.context import JobContext
from crosslens.stages.fingerprints import data_fingerprint
from crosslens.stages.sampling import sample_items
from crosslens.stages.similarity import FIGURES, SUMMARY, TABLE
from crosslens.stages.similarity.compute import (
    ESTIMATORS,
    LEVEL,
    bootstrap_weights,
    cka_table,
    cosine_summary,
)
from crosslens.stages.similarity.config import DEFAULTS, SimilarityConfig, check_sample
from crosslens.store import Store

__all__ = ["SimilarityStage", "similarity_stage", "run_similarity", "build"]


@dataclass(kw_only=True)
class SimilarityStage(SampleStage):
    """CKA (both estimators) between every pair of languages, per layer, from one activation file.

    One unit, like PCA: all languages of a seeded item sample, (layer, pool) pairs as settings. The
    sample, languages and bootstrap are part of the fingerprint; more layers or another pooling
    extend the table (the summary and figures describe the run's own pooling).
    """

    n_boot: int
    matrix_layer: int | None = None

    @cached_property
    def weights(self) -> np.ndarray | None:
        return bootstrap_weights(len(self.chosen), self.n_boot, self.seed) if self.n_boot else None

    def _states(self, acts: Activations, layer: int) -> np.ndarray:
        return np.stack([acts.of(layer, lang) for lang in self.languages])

    def rows(self, unit: Unit) -> pd.DataFrame:
        layers = [layer for layer, _ in unit.settings]
        acts = self.acts.get(layers)
        rows = []
        pairs = list(itertools.combinations(range(len(self.languages)), 2))
        for layer in layers:
            states = self._states(acts, layer)
            for estimator in ESTIMATORS:
                point, low, high = cka_table(states, estimator, self.weights)
                rows += [
                    {
                        "layer": int(layer),
                        "language_a": self.languages[a],
                        "language_b": self.languages[b],
                        "estimator": estimator,
                        "pool": self.pool,
                        "cka": float(point[a, b]),
                        "ci_low": float(low[a, b]),
                        "ci_high": float(high[a, b]),
                        "n_items": len(self.chosen),
                    }
                    for a, b in pairs
                ]
        return pd.DataFrame(rows)

    def read(self) -> pd.DataFrame:
        """The rows of the selected layers and pooling (the items and languages are fixed by the
        fingerprint)."""
        df = self.store.read(self.table)
        if df.empty:
            return df
        return df[df["layer"].isin(self.layers) & (df["pool"] == self.pool)].reset_index(drop=True)

    def summarize(self) -> dict[str, Any]:
        table = self.read()
        acts = self.acts.get(self.layers)
        pivot = self.ds.pivot if self.ds.pivot in self.languages else None
        matrix_layer = self.matrix_layer if self.matrix_layer is not None else _middle(self.layers)
        summary: dict[str, Any] = {
            "languages": self.languages,
            "pivot": pivot,
            "layers": self.layers,
            "pool": self.pool,
            "n_items": len(self.chosen),
            "n_boot": self.n_boot,
            "level": LEVEL,
            "seed": self.seed,
            "estimators": list(ESTIMATORS),
            "cka_with_pivot": _with_pivot(table, pivot) if pivot else None,
            "mean_cka": _mean_cka(table),
            "cosine": {
                int(layer): cosine_summary(self._states(acts, layer), self.languages, pivot, self.weights)
                for layer in self.layers
            },
            "matrix_layer": matrix_layer,
            # drawn by the report part (crosslens.stages.similarity.report)
            "figures": {key: str(self.store.root / name) for key, name in FIGURES.items()},
        }
        self.store.write_json(SUMMARY, metrics.to_jsonable(summary))
        return summary


def _middle(layers: Sequence[int]) -> int:
    return sorted(layers)[len(layers) // 2]


def _with_pivot(table: pd.DataFrame, pivot: str) -> dict[str, Any]:
    """{estimator: {language: {layer: {cka, ci_low, ci_high}}}} for every pair that includes ``pivot``."""
    out: dict[str, Any] = {}
    sub = table[(table["language_a"] == pivot) | (table["language_b"] == pivot)]
    for row in sub.itertuples():
        other = row.language_b if row.language_a == pivot else row.language_a
        cell = {"cka": row.cka, "ci_low": row.ci_low, "ci_high": row.ci_high}
        out.setdefault(row.estimator, {}).setdefault(other, {})[int(row.layer)] = cell
    return out


def _mean_cka(table: pd.DataFrame) -> dict[str, Any]:
    """Per estimator and layer: mean CKA over all pairs of languages (t-based 95 % CI across pairs)."""
    out: dict[str, Any] = {}
    for (estimator, layer), grp in table.groupby(["estimator", "layer"]):
        mean, low, high = metrics.ci95_across(grp["cka"])
        out.setdefault(estimator, {})[int(layer)] = {
            "mean": mean,
            "ci_low": low,
            "ci_high": high,
            "n_pairs": len(grp),
        }
    return out


def similarity_stage(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    layers: Sequence[int],
    n_items: int,
    pool: str = DEFAULTS.pool,
    n_boot: int = DEFAULTS.n_boot,
    template: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
    matrix_layer: int | None = None,
) -> SimilarityStage:
    """Representation similarity of ``lm`` on ``ds`` into ``out``, planned but not run."""
    check_seed(seed)
    if pool not in POOLS:
        raise OptionError("pool", f"must be one of {', '.join(POOLS)}, got {pool!r}")
    if n_items < 4:
        raise OptionError(
            "n_items", f"must be >= 4 (the debiased CKA estimator needs 4 items), got {n_items}"
        )
    if n_boot < 0:
        raise OptionError("n_boot", f"must be >= 0, got {n_boot}")
    layers = lm.anatomy.check_layers(layers)
    if not layers:
        raise OptionError("layers", "is empty: give at least one layer")
    if matrix_layer is not None and matrix_layer not in layers:
        raise OptionError("matrix_layer", f"{matrix_layer} is not one of the layers read ({layers})")
    languages = list(ds.languages)
    check_sample(ds, languages, n_items, seed)
    tmpl = get_template(template or ds.template)
    chosen = sample_items(ds, n_items, seed)
    fp = data_fingerprint(lm, ds, tmpl) | {
        "languages": languages,
        "items": chosen,
        "seed": seed,
        "n_boot": n_boot,
    }
    meta = {
        "model": lm.describe(),
        "languages": languages,
        "layers": layers,
        "n_items": len(chosen),
        "pool": pool,
        "n_boot": n_boot,
    }
    return SimilarityStage(
        ds=ds,
        table=TABLE,
        store=Store(out),
        fingerprint=fp,
        meta=meta,
        units=[Unit(ds.name, "*", 0, tuple(chosen), tuple((layer, pool) for layer in layers))],
        setting_columns=("layer", "pool"),
        lm=lm,
        template=tmpl,
        languages=languages,
        layers=layers,
        chosen=chosen,
        pool=pool,
        n_boot=n_boot,
        seed=seed,
        batch_size=batch_size,
        matrix_layer=matrix_layer,
    )


def build(ctx: JobContext) -> SimilarityStage:
    """Similarity of one model x dataset (the registry's builder): the run's layers, the sample PCA reads
    unless the section sets its own size."""
    section = ctx.section
    assert isinstance(section, SimilarityConfig)
    opts = ctx.eval_options()
    return similarity_stage(
        ctx.lm, ctx.data, ctx.out, ctx.read_layers(), section.items(ctx), section.pool, section.n_boot,
        opts.template, opts.batch_size, ctx.seed, section.matrix_layer,
    )  # fmt: skip


#: CKA (debiased and plain) and cosine similarity between languages per layer, with bootstrap CIs:
#: :func:`similarity_stage`'s arguments, and ``progress``.
run_similarity = runner(similarity_stage, "run_similarity")
