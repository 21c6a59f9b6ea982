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
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ESTIMATORS",
    "LEVEL",
    "hsic",
    "cka_matrix",
    "linear_cka",
    "bootstrap_weights",
    "cka_table",
    "cosine_summary",
]

ESTIMATORS = ("debiased", "linear")
LEVEL = 0.95


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
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_boot).astype(np.float64)


def _percentile(reps: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
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
