"""The maths of per-item divergence, as pure functions (definitions: docs/divergence.md).

For one item in one language the lens stage holds, at each layer read, two score vectors over the
answer choices, both read from the item's own (native) prompt: the choices written in the native
language and the same choices written in English. The readings *agree* at a layer when they rank
the choices alike; the **divergence layer** is the first layer of the last run of disagreement: the
readings disagree there and at every later layer read. Readings that agree at the last layer read
never part (coded one past it, so "later" still orders every item).

Whether the divergence layer predicts an item-level outcome (the final answer differs from
English's; English's correct answer does not transfer) is measured by two statistics of the same
weighted cell counts (events and items per language and divergence layer), so the point estimate
(weights 1) and every bootstrap replicate (weights = how often each item was drawn) are one
computation: the within-language AUC and the slope of a logistic regression with one intercept per
language.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from crosslens.scoring.metrics import replicate_weights

__all__ = [
    "AGREEMENTS",
    "agreement",
    "divergence_layer",
    "Cells",
    "cells",
    "auc",
    "logistic_slope",
    "effect",
    "summary_of",
    "SCORINGS",
    "OUTCOMES",
]

AGREEMENTS = ("top", "rank")
MIN_GROUP = 5  # items with, and items without, the outcome an estimate needs (fewer: reported as none)
_NEWTON_STEPS = 100
_SEPARATED = 30.0  # |log-odds| across the codes' spread beyond which the fit is separation, not an estimate


def agreement(native: np.ndarray, english: np.ndarray, rule: str = "top", min_rho: float = 0.5) -> np.ndarray:
    """Whether the native and English readings of one item agree, per layer.

    ``native``, ``english``: (layers, choices) scores of the same choices in the two languages.
    ``top``: both readings score the same choice highest; ``rank``: Spearman's rho between the two
    score vectors is at least ``min_rho`` (a reading that ranks nothing, all scores equal, agrees
    with nothing).
    """
    native, english = np.asarray(native, dtype=float), np.asarray(english, dtype=float)
    if native.shape != english.shape or native.ndim != 2:
        raise ValueError(f"readings of different shapes: {native.shape} vs {english.shape}")
    if rule == "top":
        return native.argmax(axis=1) == english.argmax(axis=1)
    if rule != "rank":
        raise ValueError(f"unknown agreement rule {rule!r}; use one of {', '.join(AGREEMENTS)}")
    a, b = (stats.rankdata(x, axis=1) for x in (native, english))
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(np.isnan(rho), False, rho >= min_rho - 1e-12)


def divergence_layer(layers: Sequence[int], agree: Sequence[bool]) -> int | None:
    """The first layer of the last run of disagreement (the readings disagree there and at every
    later layer of ``layers``); None when they agree at the last layer (they never part)."""
    if len(layers) != len(agree) or not len(layers):
        raise ValueError(f"{len(layers)} layers for {len(agree)} agreement values")
    if agree[-1]:
        return None
    k = len(agree) - 1
    while k > 0 and not agree[k - 1]:
        k -= 1
    return int(layers[k])


@dataclass(frozen=True)
class Cells:
    """Weighted counts per (weight row, language, divergence code): items, and items with the outcome.

    ``codes``: the sorted divergence codes (layers; one past the last read layer for "never parts").
    """

    languages: tuple[str, ...]
    codes: np.ndarray  # (V,)
    events: np.ndarray  # (B, S, V)
    totals: np.ndarray  # (B, S, V)

    def language(self, language: str) -> Cells:
        s = self.languages.index(language)
        return Cells((language,), self.codes, self.events[:, s : s + 1], self.totals[:, s : s + 1])


def cells(frame: pd.DataFrame, codes: Sequence[int], items: Sequence[str], weights: np.ndarray) -> Cells:
    """The cell counts of ``frame`` (one row per language x item: ``language``, ``item_id``, ``code``,
    ``y`` in {0, 1}) under item weights (B, len(items)); every row of an item carries its weight."""
    langs = tuple(sorted(frame["language"].unique()))
    codes = np.asarray(sorted(codes))
    n_s, n_v = len(langs), len(codes)
    item = pd.Index(list(items)).get_indexer(frame["item_id"])
    if (item < 0).any():
        raise ValueError("rows of items outside the resampled ones")
    cell = pd.Index(langs).get_indexer(frame["language"]) * n_v + np.searchsorted(codes, frame["code"])
    y = frame["y"].to_numpy(dtype=float)
    members = np.zeros((len(items), n_s * n_v))
    hits = np.zeros_like(members)
    np.add.at(members, (item, cell), 1.0)
    np.add.at(hits, (item, cell), y)
    shape = (weights.shape[0], n_s, n_v)
    return Cells(langs, codes, (weights @ hits).reshape(shape), (weights @ members).reshape(shape))


def auc(c: Cells) -> np.ndarray:
    """Per weight row: the probability that an item with the outcome parts *earlier* than one of the
    same language without it (ties count one half), over all such pairs of every language. 0.5: the
    divergence layer tells nothing; NaN where a language set has no pair."""
    events = c.events
    quiet = c.totals - c.events
    later = np.cumsum(quiet[..., ::-1], axis=-1)[..., ::-1] - quiet  # items without it, strictly later
    concordant = (events * (later + 0.5 * quiet)).sum(axis=(1, 2))
    pairs = (events.sum(-1) * quiet.sum(-1)).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, concordant / np.where(pairs > 0, pairs, 1.0), np.nan)


def logistic_slope(c: Cells) -> np.ndarray:
    """Per weight row: the slope (log-odds per layer) of logit P(outcome) = a_language + b * code, the
    maximum-likelihood fit by Newton's method. Languages whose items all have (or all lack) the
    outcome carry no information on b and are left out; NaN where the fit does not exist (no spread
    of codes, or codes that separate the outcome perfectly)."""
    centre = float(c.codes.mean())
    scale = float(c.codes.std()) or 1.0
    x = (c.codes - centre) / scale  # (V,): Newton is better conditioned on standardised codes
    ev, tot = c.events, c.totals
    n_ev, n_tot = ev.sum(-1), tot.sum(-1)
    used = (n_ev > 0) & (n_ev < n_tot)  # (B, S)
    ev, tot = ev * used[..., None], tot * used[..., None]
    a = np.zeros(used.shape)
    b = np.zeros(used.shape[0])
    done = np.zeros(used.shape[0], dtype=bool)
    for _ in range(_NEWTON_STEPS):
        eta = a[..., None] + b[:, None, None] * x
        p = special.expit(eta)
        r = ev - tot * p
        w = tot * p * (1.0 - p)
        g_a, g_b = r.sum(-1), (r * x).sum(axis=(1, 2))
        h_aa, h_ab, h_bb = w.sum(-1), (w * x).sum(-1), (w * x * x).sum(axis=(1, 2))
        safe = np.where(used & (h_aa > 0), h_aa, 1.0)
        schur = h_bb - np.where(used, h_ab**2 / safe, 0.0).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            step_b = (g_b - np.where(used, h_ab * g_a / safe, 0.0).sum(-1)) / schur
        step_b = np.clip(np.nan_to_num(step_b), -5.0, 5.0)
        step_a = np.clip(np.where(used, (g_a - h_ab * step_b[:, None]) / safe, 0.0), -5.0, 5.0)
        step_b[done], step_a[done] = 0.0, 0.0
        a, b = a + step_a, b + step_b
        done |= (np.abs(step_b) < 1e-10) & (np.abs(step_a).max(axis=-1, initial=0.0) < 1e-10)
        if done.all():
            break
    informative = used.any(-1) & (schur > 1e-9)
    ok = done & informative & (np.abs(b) * np.ptp(x) < _SEPARATED)
    return np.where(ok, b / scale, np.nan)


def _interval(reps: np.ndarray, level: float) -> list[float | None]:
    reps = reps[~np.isnan(reps)]
    if not reps.size:
        return [None, None]
    low, high = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
    return [float(low), float(high)]


def _rate(events: np.ndarray, totals: np.ndarray) -> float | None:
    return float(events.sum() / totals.sum()) if totals.sum() > 0 else None


def _estimable(c: Cells, min_group: int) -> bool:
    """Whether the items themselves (weight row 0) hold ``min_group`` with and without the outcome."""
    events, totals = c.events[0].sum(), c.totals[0].sum()
    return bool(events >= min_group and totals - events >= min_group)


def _cell_summary(c: Cells, never: int, level: float, min_group: int) -> dict[str, Any]:
    """One cell of the effects table: counts, event rates of parting vs never-parting items, the AUC
    (also among the items that part: does parting *earlier* matter, beyond parting at all?) and the
    logistic slope, each with its bootstrap interval (weight rows after the first); none where fewer
    than ``min_group`` items have, or lack, the outcome (a CI from one or two items means nothing)."""
    ev, tot = c.events[0], c.totals[0]
    parted = c.codes != never
    among = Cells(c.languages, c.codes[parted], c.events[..., parted], c.totals[..., parted])
    out: dict[str, Any] = {
        "n": int(round(tot.sum())),
        "events": int(round(ev.sum())),
        "rate_parted": _rate(ev[:, parted], tot[:, parted]),
        "rate_never": _rate(ev[:, ~parted], tot[:, ~parted]),
    }
    for name, of, statistic in (("auc", c, auc), ("auc_parted", among, auc), ("slope", c, logistic_slope)):
        values = statistic(of) if _estimable(of, min_group) else np.full(1, np.nan)
        out[name] = None if math.isnan(values[0]) else float(values[0])
        out[f"{name}_ci"] = _interval(values[1:], level)
    return out


def effect(
    frame: pd.DataFrame,
    codes: Sequence[int],
    never: int,
    items: Sequence[str],
    weights: np.ndarray,
    level: float = 0.95,
    min_group: int = MIN_GROUP,
) -> dict[str, Any]:
    """Whether the divergence code predicts the outcome ``y``, pooled over languages (pairs and
    intercepts within each language) and per language. ``frame``: one row per language x item with
    ``language``, ``item_id``, ``code``, ``y`` (rows without an outcome left out); ``weights``:
    (1 + n_boot, len(items)) draw counts of ``items``, the point estimate's ones first."""
    if frame.empty:
        return {"pooled": None, "per_language": {}}
    c = cells(frame, codes, items, weights)
    return {
        "pooled": _cell_summary(c, never, level, min_group),
        "per_language": {
            lang: _cell_summary(c.language(lang), never, level, min_group) for lang in c.languages
        },
    }


SCORINGS = {"letters": "", "cloze": "cloze_"}  # the records' answers an outcome is read from
OUTCOMES = ("inconsistent", "no_transfer")


def summary_of(
    rows: pd.DataFrame, layers: Sequence[int], n_boot: int, seed: int, level: float = 0.95
) -> dict[str, Any]:
    """The divergence summary of a table's rows (one per language x item) read at ``layers``.

    Items whose choices read the same in both languages (every choice's text identical) agree by
    construction and are left out of every statistic (counted in ``identical``). Per language: how
    many items part and where. Per scoring the records hold (letters, cloze), pooled over languages:
    the share of items whose readings agree at each layer, for items whose final answer is consistent
    with English's and for the others; items and inconsistent items per divergence layer; and, per
    outcome, :func:`effect` with bootstrap CIs over items.
    """
    layers = [int(x) for x in layers]
    never = layers[-1] + 1
    identical = rows["same_text"] >= rows["n_choices"]
    used = rows[~identical].assign(code=rows["divergence_layer"].fillna(never).astype(int))
    items = sorted(used["item_id"].unique())
    weights = np.ones((1, len(items)))
    if n_boot and items:
        weights = np.vstack([weights, replicate_weights(len(items), n_boot, seed)])
    codes = [*layers, never]
    per_language = {}
    for lang, g in used.groupby("language"):
        parted = g["divergence_layer"].dropna()
        per_language[str(lang)] = {
            "n": len(g),
            "identical": int(identical[rows["language"] == lang].sum()),
            "parted": float(len(parted) / len(g)),
            "median_layer": float(parted.median()) if len(parted) else None,
        }
    agree = np.array([list(a) for a in used["agree"]], dtype=float).reshape(len(used), len(layers))
    effects: dict[str, Any] = {}
    agreement_by_layer: dict[str, Any] = {}
    by_divergence: dict[str, Any] = {}
    for scoring, prefix in SCORINGS.items():
        if f"{prefix}inconsistent" not in used or used[f"{prefix}inconsistent"].isna().all():
            continue
        effects[scoring] = {}
        for outcome in OUTCOMES:
            y = used[f"{prefix}{outcome}"]
            keep = y.notna().to_numpy()
            frame = used.loc[keep, ["language", "item_id", "code"]].assign(y=y[keep].astype(float).to_numpy())
            effects[scoring][outcome] = effect(frame, codes, never, items, weights, level)
        answer = used[f"{prefix}inconsistent"].astype("boolean")
        defined = answer.notna().to_numpy()
        inconsistent = answer.fillna(False).to_numpy(dtype=bool)
        agreement_by_layer[scoring] = {
            name: [float(x) for x in agree[mask].mean(axis=0)] if mask.any() else None
            for name, mask in (("consistent", defined & ~inconsistent), ("inconsistent", inconsistent))
        }
        at = used["code"].to_numpy()
        by_divergence[scoring] = {
            str(c): {
                "n": int((defined & (at == c)).sum()),
                "inconsistent": int((inconsistent & (at == c)).sum()),
            }
            for c in codes
        }
    return {
        "layers": layers,
        "never": never,
        "languages": sorted(per_language),
        "n_items": len(items),
        "n_rows": len(used),
        "identical": int(identical.sum()),
        "n_boot": n_boot,
        "level": level,
        "per_language": per_language,
        "agreement_by_layer": agreement_by_layer,
        "inconsistent_by_divergence": by_divergence,
        "effects": effects,
    }
