"""Representation similarity across languages: linear CKA and parallel-vs-non-parallel cosine.

The question is the PCA picture's, as numbers with uncertainty: per layer, are the states of the
same items in two languages arranged alike (CKA), and is a state closer to its own translation
than to other items in the other language (cosine gap)?

**Linear CKA** (Kornblith et al. 2019) of two languages' (n items x d) states X, Y is
HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with Gram matrices K = X Xᵀ, L = Y Yᵀ.

* ``linear``: the plain estimator, HSIC = tr(H K H L) (H centres), i.e. centred features.
  With tens of items and hundreds of dimensions it is biased toward 1 even for unrelated states.
* ``debiased`` (the default): HSIC replaced by the unbiased estimator of Song et al. (2012), as in
  Nguyen, Raghu & Kornblith (2021). It needs n >= 4 and can be slightly negative or above 1 by
  sampling noise.

**Uncertainty**: a percentile bootstrap over items, the same draws for every language, layer and
measure. A replicate is a weighting of the items by how often each was drawn. Two copies of one
item are one item, not a pair: the debiased estimator averages over tuples of four *different*
items (a copy next to its twin would re-introduce the self-similarity the estimator removes, and
push every replicate toward 1); the cosine counts pairs of copies as parallel, never as
non-parallel. The plain estimator is a V-statistic and is resampled as one (copies are rows like
any other), so its replicates, having fewer distinct items, carry more of its bias toward 1: its
interval can sit above its point estimate. With every item drawn once, each replicate formula is
exactly the point estimate.
"""

from __future__ import annotations

import itertools
import math
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crosslens import __version__, metrics
from crosslens.activations import POOLS, Activations, SampleStage
from crosslens.data import ParallelDataset
from crosslens.evaluate import data_fingerprint
from crosslens.models import LoadedModel
from crosslens.pca import pca_items
from crosslens.prompts import get_template
from crosslens.stages import Unit, run_stage
from crosslens.store import Store

if TYPE_CHECKING:
    from crosslens.config import ExperimentConfig
    from crosslens.runner import Job

__all__ = [
    "ESTIMATORS",
    "hsic",
    "cka_matrix",
    "linear_cka",
    "bootstrap_weights",
    "cka_table",
    "cosine_summary",
    "SimilarityStage",
    "similarity_stage",
    "run_similarity",
    "SIMILARITY",
]

SIMILARITY = "similarity"
ESTIMATORS = ("debiased", "linear")
_LEVEL = 0.95


# -- the estimators (pure functions) ----------------------------------------------------------------
def _as_weights(n: int, weights: np.ndarray | None) -> np.ndarray:
    return np.ones((1, n)) if weights is None else np.atleast_2d(np.asarray(weights, dtype=np.float64))


def hsic(grams: np.ndarray, estimator: str, weights: np.ndarray | None = None) -> np.ndarray:
    """HSIC of every pair of Gram matrices (k, n, n), up to a factor shared by all pairs: (B, k, k).

    ``weights`` (B, n): how often each item is drawn in each bootstrap replicate (default: once).
    ``linear`` is the V-statistic of the weighted sample (a replicate's copies are rows like any
    other). ``debiased`` is the U-statistic of Song et al. over tuples of four *different items*,
    each tuple weighted by its items' draw counts; with every weight 1 it is exactly
    (n-1)(n-2) tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 - 2(n-1) 1ᵀK̃L̃1 (K̃: K with a zero diagonal), i.e. n(n-1)(n-2)(n-3)
    times the unbiased HSIC. Both reduce to sums of the form
    Σ_ij Ω_ij K_ij L_ij + α s_K s_L + Σ_i β_i r_K,i r_L,i + Σ_i γ_i (q_K,i r_L,i + r_K,i q_L,i)
    with s = wᵀKw, r = Kw, q = Kw², evaluated for all pairs and replicates at once.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown CKA estimator {estimator!r} (known: {', '.join(ESTIMATORS)})")
    k = np.array(grams, dtype=np.float64)
    n = k.shape[-1]
    w = _as_weights(n, weights)
    big_w = w.sum(axis=1)  # (B,)
    if estimator == "debiased":
        if n < 4:
            raise ValueError(f"the debiased CKA estimator needs at least 4 items, got {n}")
        k[:, np.arange(n), np.arange(n)] = 0.0
        q_w = (w**2).sum(axis=1)
        wi, wj, bw = w[:, :, None], w[:, None, :], big_w[:, None, None]
        rest = (bw**2 - q_w[:, None, None]) - 2 * bw * (wi + wj) + 2 * wi**2 + 2 * wj**2 + 2 * wi * wj
        three = wi * wj**2 * (bw - wi - 2 * wj)
        omega = wi * wj * rest + 2 * wi**2 * wj**2 + three + np.swapaxes(three, 1, 2)
        alpha = np.ones_like(big_w)
        beta = -2 * w * (big_w[:, None] + w)
        gamma = 2 * w
    else:
        omega = w[:, :, None] * w[:, None, :]
        alpha = 1.0 / big_w**2
        beta = -2 * w / big_w[:, None]
        gamma = np.zeros_like(w)
    r = np.einsum("aij,bj->bai", k, w)  # (B, k, n)
    s = np.einsum("bi,bai->ba", w, r)  # (B, k)
    q = np.einsum("aij,bj->bai", k, w**2)
    flat = k.reshape(k.shape[0], -1)
    out = np.einsum("ap,cp,bp->bac", flat, flat, omega.reshape(len(w), -1), optimize=True)
    out += alpha[:, None, None] * s[:, :, None] * s[:, None, :]
    out += np.einsum("bi,bai,bci->bac", beta, r, r)
    cross = np.einsum("bi,bai,bci->bac", gamma, q, r)
    return out + cross + np.swapaxes(cross, 1, 2)


def cka_matrix(grams: np.ndarray, estimator: str, weights: np.ndarray | None = None) -> np.ndarray:
    """Linear CKA of every pair of Gram matrices (k, n, n) per weight row: (B, k, k).

    NaN where a language's own HSIC is not positive or is rounding noise next to its Gram's size:
    states that do not vary across items (e.g. the same last token's embedding in every prompt)
    have no arrangement to compare.
    """
    h = hsic(grams, estimator, weights)
    w = _as_weights(grams.shape[-1], weights)
    own = np.diagonal(h, axis1=1, axis2=2).copy()
    size = np.einsum("bi,aij,bj->ba", w, np.abs(np.asarray(grams, dtype=np.float64)), w)
    tiny = 1e-10 * (size**2 if estimator == "debiased" else size**2 / w.sum(axis=1)[:, None] ** 2)
    own[own <= tiny] = 0.0
    scale = np.sqrt(own[:, :, None] * own[:, None, :])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(scale > 0, h / scale, np.nan)


def linear_cka(x: np.ndarray, y: np.ndarray, estimator: str = "debiased") -> float:
    """Linear CKA of two (n, d) arrays whose rows are the same n items (d may differ)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same items in both: {x.shape[0]} vs {y.shape[0]} rows")
    return float(cka_matrix(np.stack([x @ x.T, y @ y.T]), estimator)[0, 0, 1])


def bootstrap_weights(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_items) draw counts: each row resamples the items with replacement."""
    if n_boot < 1:
        raise ValueError(f"--n-boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_boot).astype(np.float64)


def _percentile(reps: np.ndarray, level: float = _LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over axis 0, ignoring NaN replicates."""
    with warnings.catch_warnings():  # an all-NaN cell (an undefined CKA) stays NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(reps, [50 * (1 - level), 50 * (1 + level)], axis=0)
    return low, high


def cka_table(
    states: np.ndarray, estimator: str, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CKA between every pair of languages of ``states`` (k languages, n items, d): the point
    estimate and percentile-bootstrap bounds over the replicate ``weights`` (NaN bounds without
    any), each (k, k)."""
    x = np.asarray(states, dtype=np.float64)
    grams = x @ np.swapaxes(x, -1, -2)  # (k, n, n)
    point = cka_matrix(grams, estimator)[0]
    if weights is None or len(weights) == 0:
        nan = np.full_like(point, np.nan)
        return point, nan, nan.copy()
    k, n = grams.shape[0], grams.shape[1]
    step = max(1, 2**22 // (n * n + k * k * n))  # replicates per chunk: bounded memory
    reps = np.concatenate(
        [cka_matrix(grams, estimator, weights[s : s + step]) for s in range(0, len(weights), step)]
    )
    low, high = _percentile(reps)
    return point, low, high


def _cosine_parts(xa: np.ndarray, xb: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted mean cosine of parallel and of non-parallel pairs; ``w`` (B, n) item draw counts."""
    c = xa @ xb.T
    diag = np.diagonal(c)
    total = w.sum(axis=1)
    parallel = (w * diag).sum(axis=1) / total
    cross = np.einsum("bi,ij,bj->b", w, c, w) - (w**2 * diag).sum(axis=1)
    pairs = total**2 - (w**2).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return parallel, np.where(pairs > 0, cross / pairs, np.nan)


def cosine_summary(
    states: np.ndarray, languages: Sequence[str], pivot: str | None, weights: np.ndarray | None
) -> dict[str, Any]:
    """Parallel vs non-parallel cosine of one layer's (k, n, d) states: the mean over every pair of
    languages, and each language against ``pivot``, each with percentile-bootstrap bounds."""
    x = np.asarray(states, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    n = x.shape[1]
    w = np.vstack([np.ones((1, n)), weights if weights is not None else np.empty((0, n))])
    parts = {
        (a, b): _cosine_parts(x[a], x[b], w) for a, b in itertools.combinations(range(len(languages)), 2)
    }

    def describe(keys: list[tuple[int, int]]) -> dict[str, Any]:
        par = np.mean([parts[k][0] for k in keys], axis=0)
        non = np.mean([parts[k][1] for k in keys], axis=0)
        out = {}
        for name, v in (("parallel", par), ("nonparallel", non), ("gap", par - non)):
            low, high = _percentile(v[1:]) if len(v) > 1 else (math.nan, math.nan)
            out[name] = {"mean": float(v[0]), "ci_low": float(low), "ci_high": float(high)}
        return out

    summary: dict[str, Any] = {"all_pairs": describe(list(parts)) if parts else None}
    if pivot is not None and pivot in languages:
        p = list(languages).index(pivot)
        summary["with_pivot"] = {
            lang: describe([(min(p, i), max(p, i))]) for i, lang in enumerate(languages) if i != p
        }
    return summary


# -- the stage --------------------------------------------------------------------------------------
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
        from crosslens.figures import cka_figure, cka_matrix_figure

        table = self.read()
        acts = self.acts.get(self.layers)
        pivot = self.ds.pivot if self.ds.pivot in self.languages else None
        matrix_layer = self.matrix_layer if self.matrix_layer is not None else _middle(self.layers)
        title = f"{self.lm.spec} — {self.ds.name}"
        summary: dict[str, Any] = {
            "languages": self.languages,
            "pivot": pivot,
            "layers": self.layers,
            "pool": self.pool,
            "n_items": len(self.chosen),
            "n_boot": self.n_boot,
            "level": _LEVEL,
            "seed": self.seed,
            "estimators": list(ESTIMATORS),
            "cka_with_pivot": _with_pivot(table, pivot) if pivot else None,
            "mean_cka": _mean_cka(table),
            "cosine": {
                int(layer): cosine_summary(self._states(acts, layer), self.languages, pivot, self.weights)
                for layer in self.layers
            },
            "matrix_layer": matrix_layer,
            "figures": {
                "cka": str(cka_figure(table, pivot, self.store.root / "fig6_cka.png", title)),
                "cka_matrix": str(
                    cka_matrix_figure(
                        table, matrix_layer, self.languages, self.store.root / "fig7_cka_matrix.png", title
                    )
                ),
            },
        }
        self.store.write_json("similarity_summary.json", metrics.to_jsonable(summary))
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
    n_items: int = 50,
    pool: str = "last",
    n_boot: int = 1000,
    template: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
    matrix_layer: int | None = None,
) -> SimilarityStage:
    """Representation similarity of ``lm`` on ``ds`` into ``out``, planned but not run."""
    if pool not in POOLS:
        raise ValueError(f"--pool must be one of {', '.join(POOLS)}, got {pool!r}")
    if n_items < 4:
        raise ValueError(f"--n-items must be >= 4 (the debiased CKA estimator needs 4 items), got {n_items}")
    if n_boot < 0:
        raise ValueError(f"--n-boot must be >= 0, got {n_boot}")
    layers = lm.anatomy.check_layers(layers)
    if not layers:
        raise ValueError("--layers is empty: give at least one layer")
    if matrix_layer is not None and matrix_layer not in layers:
        raise ValueError(f"--matrix-layer {matrix_layer} is not one of the layers read ({layers})")
    languages = list(ds.languages)
    if len(languages) < 2:
        raise ValueError(f"similarity needs at least 2 languages; {ds.name} has {languages}")
    tmpl = get_template(template or ds.template)
    chosen = pca_items(ds, n_items, seed)
    if len(chosen) < 4:
        raise ValueError(f"similarity needs at least 4 aligned items; {ds.name} has {len(chosen)}")
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
        "command": " ".join(sys.argv),
        "crosslens_version": __version__,
    }
    return SimilarityStage(
        ds=ds,
        table=SIMILARITY,
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


def job_stage(config: ExperimentConfig, lm: LoadedModel, spec: str, job: Job, out: Path) -> SimilarityStage:
    """Similarity of one model x dataset of an experiment (registry builder): the configured layers."""
    s = config.similarity
    assert s is not None
    opts = config.eval_options(job.index)
    return similarity_stage(
        lm, job.data, out, config.lens_layers(lm.anatomy.n_layers), s.items(config), s.pool, s.n_boot,
        opts.template, opts.batch_size, config.seed, s.matrix_layer,
    )  # fmt: skip


def run_similarity(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    layers: Sequence[int],
    n_items: int = 50,
    pool: str = "last",
    n_boot: int = 1000,
    template: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
    matrix_layer: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """CKA (debiased and plain) and cosine similarity between languages per layer, with bootstrap CIs.

    Writes the activation file (shared with PCA for the same sample), the ``similarity/`` table,
    ``similarity_summary.json``, ``fig6_cka.png`` and ``fig7_cka_matrix.png``.
    """
    stage = similarity_stage(
        lm, ds, out, layers, n_items, pool, n_boot, template, batch_size, seed, matrix_layer
    )
    return run_stage(stage, progress)
