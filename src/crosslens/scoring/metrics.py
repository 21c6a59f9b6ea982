"""Cross-lingual metrics of the paper's section 2.1: consistency (Eq. 1), transfer (Eqs. 2-3), means (4-6).

Input is the tidy per-item records frame: one row per (``language``, ``item_id``) with the rank of each
choice (1 = most probable), the predicted choice and whether it is correct. Column names are parameters
so the same functions score the model's output and the logit lens's per-layer predictions.

Every metric is computed from one :class:`ItemTable` (per-item arrays on a sorted item axis) weighted by
item multiplicities, so a point estimate is "weights = 1" and a bootstrap replicate is "weights = how often
each item was drawn": the bootstrap never touches a DataFrame, and no row order can change a result.

NaN policy: a quantity whose denominator is empty (no correct items for tr+, no wrong items for tr-, a
constant rank vector for Spearman's rho) is NaN, never 0; means skip NaN and report how many values they
averaged. See ``docs/metrics.md``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "ItemTable",
    "Statistic",
    "accuracy",
    "consistency",
    "positive_transfer",
    "negative_transfer",
    "pairwise",
    "mean_offdiag",
    "accuracy_of",
    "expected_consistency",
    "expected_positive_transfer",
    "expected_negative_transfer",
    "bootstrap_ci",
    "replicate_weights",
    "mcnemar_exact",
    "holm",
    "paired_effects",
    "against_controls",
    "summarize",
    "ci95_across",
    "pearson_with_stars",
    "significance_stars",
    "table1_line",
    "to_jsonable",
]

#: Bootstrap replicates are evaluated in chunks of at most this many floats per (language x item axis).
_CHUNK_FLOATS = 2**23


@dataclass(frozen=True, eq=False)
class ItemTable:
    """Per-item arrays of several languages on one sorted item axis (the unit the bootstrap resamples).

    ``present[l, i]`` says language ``l`` answered item ``i``. Choices are laid out item by item (items
    sorted by id, choices in their order within the item), so ``rank_codes[l]`` is the paper's rank vector
    k_l of Eq. 1 with ranks replaced by order-preserving integer codes. Arrays not requested are ``None``.
    """

    languages: tuple[str, ...]
    item_ids: tuple[str, ...]
    present: np.ndarray  # (L, I) bool
    correct: np.ndarray | None  # (L, I) bool, False where absent
    pred_codes: np.ndarray | None  # (L, I) int code of the predicted choice, -1 where absent
    n_pred_values: int
    rank_codes: np.ndarray | None  # (L, C) int code of each choice's rank, 0 where absent
    n_rank_values: int
    choice_item: np.ndarray | None  # (C,) item index of each choice

    @classmethod
    def from_records(
        cls,
        df: pd.DataFrame,
        *,
        languages: Sequence[str] | None = None,
        correct_col: str | None = "correct",
        pred_col: str | None = "pred",
        ranks_col: str | None = "ranks",
    ) -> ItemTable:
        """Align ``df`` on sorted item ids; a ``*_col`` of ``None`` skips that column.

        Raises ValueError on duplicate (language, item_id) rows, unknown languages, missing values, and
        (when ranks are read) on an item whose number of choices differs between languages.
        """
        wanted = [c for c in ("language", "item_id", correct_col, pred_col, ranks_col) if c is not None]
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            raise ValueError(f"records lack column(s) {missing}; columns are {list(df.columns)}")
        known = sorted(df["language"].astype(str).unique())
        langs = known if languages is None else list(dict.fromkeys(str(lang) for lang in languages))
        unknown = [lang for lang in langs if lang not in known]
        if unknown:
            raise ValueError(f"language(s) {unknown} not in the records; they have {known}")
        sub = df.loc[df["language"].astype(str).isin(langs), wanted]
        lang_s, item_s = sub["language"].astype(str), sub["item_id"].astype(str)
        dup = pd.concat([lang_s, item_s], axis=1).duplicated()
        if dup.any():
            first = sub.loc[dup.to_numpy()].iloc[0]
            lang, item = first["language"], first["item_id"]
            raise ValueError(f"duplicate records for language {lang!r}, item {item!r}")
        for col in wanted[2:]:
            if sub[col].isna().any():
                raise ValueError(f"column {col!r} has missing values; drop or fill those rows first")
        items = sorted(item_s.unique())
        li = pd.Index(langs).get_indexer(lang_s)
        ii = pd.Index(items).get_indexer(item_s)
        shape = (len(langs), len(items))
        present = np.zeros(shape, dtype=bool)
        present[li, ii] = True

        correct = None
        if correct_col is not None:
            correct = np.zeros(shape, dtype=bool)
            correct[li, ii] = sub[correct_col].to_numpy().astype(bool)

        pred_codes, n_pred = None, 0
        if pred_col is not None:
            pred_values, codes = np.unique(sub[pred_col].to_numpy(), return_inverse=True)
            pred_codes = np.full(shape, -1, dtype=np.int64)
            pred_codes[li, ii] = codes
            n_pred = len(pred_values)

        rank_codes, n_rank, choice_item = None, 0, None
        if ranks_col is not None:
            rank_lists = [np.asarray(r).ravel() for r in sub[ranks_col]]
            lengths = np.array([len(r) for r in rank_lists], dtype=np.int64)
            n_choices = np.zeros(shape, dtype=np.int64)
            n_choices[li, ii] = lengths
            per_item = n_choices.max(axis=0)
            bad = present & (n_choices != per_item)
            if bad.any():
                i = int(np.nonzero(bad.any(axis=0))[0][0])
                counts = {langs[lang]: int(n_choices[lang, i]) for lang in np.nonzero(present[:, i])[0]}
                raise ValueError(f"item {items[i]!r} has different numbers of choices per language: {counts}")
            offsets = np.cumsum(per_item) - per_item
            choice_item = np.repeat(np.arange(len(items)), per_item)
            flat = np.concatenate(rank_lists) if rank_lists else np.zeros(0)
            rank_values, codes = np.unique(flat, return_inverse=True)
            within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            rank_codes = np.zeros((len(langs), len(choice_item)), dtype=np.int64)
            rank_codes[np.repeat(li, lengths), np.repeat(offsets[ii], lengths) + within] = codes
            n_rank = len(rank_values)

        return cls(
            tuple(langs), tuple(items), present, correct, pred_codes, n_pred, rank_codes, n_rank, choice_item
        )

    def index(self, language: str) -> int:
        """Position of ``language`` on the language axis."""
        try:
            return self.languages.index(language)
        except ValueError:
            raise ValueError(f"language {language!r} not in {list(self.languages)}") from None

    def _need(self, name: str) -> np.ndarray:
        arr = getattr(self, name)
        if arr is None:
            raise ValueError(f"this ItemTable was built without the column behind {name!r}")
        return arr

    @property
    def _row_width(self) -> int:
        """Largest per-language axis a kernel expands to (items x pred values, or choices)."""
        n_items = len(self.item_ids)
        n_choices = 0 if self.choice_item is None else len(self.choice_item)
        return max(1, n_items * max(1, self.n_pred_values), n_choices)


#: A bootstrappable statistic: (table, item weights of shape (B, I)) -> one value per replicate, shape (B,).
Statistic = Callable[[ItemTable, np.ndarray], np.ndarray]
#: A pair kernel: (table, item weights (B, I)) -> metric(l1, l2) for all pairs, shape (B, L, L).
_Kernel = Callable[[ItemTable, np.ndarray], np.ndarray]


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where the denominator is empty (the NaN policy, never 0)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def _accuracy_kernel(t: ItemTable, w: np.ndarray) -> np.ndarray:
    right = t._need("correct") & t.present
    return _ratio(w @ right.T.astype(float), w @ t.present.T.astype(float))


def _positive_transfer_kernel(t: ItemTable, w: np.ndarray) -> np.ndarray:
    """Eq. 2 for all pairs: |F_a n F_c| / |F_a| over the items both a and c answered."""
    right = (t._need("correct") & t.present).astype(float)
    present = t.present.astype(float)
    n_lang = len(t.languages)
    num = np.empty((w.shape[0], n_lang, n_lang))
    den = np.empty_like(num)
    for a in range(n_lang):
        wa = w * right[a]
        num[:, a] = wa @ right.T
        den[:, a] = wa @ present.T
    return _ratio(num, den)


def _negative_transfer_kernel(t: ItemTable, w: np.ndarray) -> np.ndarray:
    """Eq. 3 for all pairs: |wrong in both with the same prediction| / |wrong in a|, common items."""
    wrong = t.present & ~t._need("correct")
    pred = t._need("pred_codes")
    n_lang, n_items = wrong.shape
    # wrong_with[l, i, k]: l answered i wrongly with choice k; sharing k is sharing the wrong answer.
    wrong_with = (wrong[:, :, None] & (pred[:, :, None] == np.arange(t.n_pred_values))).astype(float)
    flat = wrong_with.reshape(n_lang, -1)
    present = t.present.astype(float)
    num = np.empty((w.shape[0], n_lang, n_lang))
    den = np.empty_like(num)
    for a in range(n_lang):
        num[:, a] = (w[:, :, None] * wrong_with[a]).reshape(w.shape[0], -1) @ flat.T
        den[:, a] = (w * wrong[a]) @ present.T
    return _ratio(num, den)


def _standardised_ranks(codes: np.ndarray, w: np.ndarray, n_values: int) -> np.ndarray:
    """Average-tie ranks of ``codes`` (C,) under choice weights ``w`` (B, C), centred and scaled.

    With integer weights this equals ``scipy.stats.rankdata`` of the vector with each choice repeated
    ``w`` times, so sum(z_a * z_c) is Spearman's rho of the resampled vectors. Rows whose weighted vector
    is constant (or empty) are NaN.
    """
    counts = w @ np.eye(n_values)[codes]  # (B, V): weighted count of each rank value
    avg_rank = np.cumsum(counts, axis=1) - counts + (counts + 1) / 2
    x = avg_rank[:, codes]
    with np.errstate(invalid="ignore", divide="ignore"):
        centred = x - (w * x).sum(axis=1, keepdims=True) / w.sum(axis=1, keepdims=True)
        z = np.sqrt(w) * centred / np.sqrt((w * centred**2).sum(axis=1, keepdims=True))
    z[(counts > 0).sum(axis=1) < 2] = np.nan
    return z


def _consistency_kernel(t: ItemTable, w: np.ndarray) -> np.ndarray:
    """Eq. 1 for all pairs: Spearman's rho of the rank vectors over the items both languages answered.

    Pairs are grouped by their set of common items (one group when every language answered every item),
    so each language's ranks are standardised once per group.
    """
    codes = t._need("rank_codes")
    choice_item = t._need("choice_item")
    n_lang = len(t.languages)
    out = np.full((w.shape[0], n_lang, n_lang), np.nan)
    groups: dict[bytes, list[tuple[int, int]]] = {}
    for a in range(n_lang):
        for c in range(a, n_lang):
            groups.setdefault((t.present[a] & t.present[c]).tobytes(), []).append((a, c))
    w_choice = w[:, choice_item]
    for key, pairs in groups.items():
        common = np.frombuffer(key, dtype=bool)
        wg = w_choice * common[choice_item]
        langs = {x for pair in pairs for x in pair}
        z = {lang: _standardised_ranks(codes[lang], wg, t.n_rank_values) for lang in langs}
        for a, c in pairs:
            out[:, a, c] = out[:, c, a] = np.einsum("bc,bc->b", z[a], z[c])
    return np.clip(out, -1.0, 1.0)  # rounding can overshoot |rho| = 1 by an ulp


def _offdiag(m: np.ndarray) -> np.ndarray:
    """Values of the last two (square) axes with the diagonal removed: (..., L * (L - 1))."""
    n = m.shape[-1]
    return m[..., ~np.eye(n, dtype=bool)]


def _nanmean(x: np.ndarray, axis: int | None = None) -> np.ndarray:
    """np.nanmean without the all-NaN warning (an all-NaN mean is NaN by our policy, not an accident)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis)


def accuracy(df: pd.DataFrame, *, correct_col: str = "correct") -> pd.Series:
    """Fraction of answered items that are correct, per language (index sorted by language)."""
    t = ItemTable.from_records(df, correct_col=correct_col, pred_col=None, ranks_col=None)
    acc = _accuracy_kernel(t, np.ones((1, len(t.item_ids))))[0]
    return pd.Series(acc, index=pd.Index(t.languages, name="language"), name="accuracy")


def consistency(df: pd.DataFrame, l1: str, l2: str, *, ranks_col: str = "ranks") -> float:
    """Eq. 1: Spearman's rho between the rank vectors of ``l1`` and ``l2`` over the items both answered.

    NaN when either vector is constant; ValueError when an item's number of choices differs.
    """
    return _pair_value(df, consistency, l1, l2, ranks_col=ranks_col)


def positive_transfer(df: pd.DataFrame, l1: str, l2: str, *, correct_col: str = "correct") -> float:
    """Eq. 2: tr+(l1, l2) = |F_l1 n F_l2| / |F_l1| over the items both answered; NaN if |F_l1| = 0."""
    return _pair_value(df, positive_transfer, l1, l2, correct_col=correct_col)


def negative_transfer(
    df: pd.DataFrame, l1: str, l2: str, *, correct_col: str = "correct", pred_col: str = "pred"
) -> float:
    """Eq. 3: tr-(l1, l2) = |wrong in both, same prediction| / |not F_l1|; NaN if l1 is never wrong."""
    return _pair_value(df, negative_transfer, l1, l2, correct_col=correct_col, pred_col=pred_col)


#: The pair metrics ``pairwise`` knows, with their kernel and the record columns the kernel reads.
_PAIR_METRICS: dict[Callable[..., float], tuple[_Kernel, frozenset[str]]] = {
    consistency: (_consistency_kernel, frozenset({"ranks"})),
    positive_transfer: (_positive_transfer_kernel, frozenset({"correct"})),
    negative_transfer: (_negative_transfer_kernel, frozenset({"correct", "pred"})),
}


def pairwise(
    df: pd.DataFrame,
    metric: Callable[..., float],
    *,
    languages: Sequence[str] | None = None,
    correct_col: str = "correct",
    pred_col: str = "pred",
    ranks_col: str = "ranks",
) -> pd.DataFrame:
    """Square matrix ``m.loc[l1, l2] = metric(df, l1, l2)`` over ``languages`` (default: all, sorted).

    ``metric`` is :func:`consistency`, :func:`positive_transfer` or :func:`negative_transfer`; the
    diagonal is included (1 where defined). All pairs come from one vectorised pass, not a loop of calls.
    """
    try:
        kernel, needs = _PAIR_METRICS[metric]
    except (KeyError, TypeError):
        names = ", ".join(f.__name__ for f in _PAIR_METRICS)
        raise ValueError(f"pairwise supports {names}; got {metric!r}") from None
    t = ItemTable.from_records(
        df,
        languages=languages,
        correct_col=correct_col if "correct" in needs else None,
        pred_col=pred_col if "pred" in needs else None,
        ranks_col=ranks_col if "ranks" in needs else None,
    )
    index = pd.Index(t.languages, name="language")
    return pd.DataFrame(kernel(t, np.ones((1, len(t.item_ids))))[0], index=index, columns=index)


def _pair_value(df: pd.DataFrame, metric: Callable[..., float], l1: str, l2: str, **cols: str) -> float:
    return float(pairwise(df, metric, languages=[l1, l2], **cols).at[l1, l2])


def mean_offdiag(matrix: pd.DataFrame | np.ndarray) -> tuple[float, int]:
    """Eqs. 4-6: mean over ordered pairs l1 != l2, skipping NaN; returns (mean, number of pairs averaged)."""
    values = _offdiag(np.asarray(matrix, dtype=float))
    n = int(np.count_nonzero(~np.isnan(values)))
    return (float(np.nanmean(values)) if n else math.nan), n


def accuracy_of(language: str) -> Statistic:
    """Statistic: the accuracy of one language (for :func:`bootstrap_ci`)."""

    def statistic(table: ItemTable, weights: np.ndarray) -> np.ndarray:
        return _accuracy_kernel(table, weights)[:, table.index(language)]

    statistic.__name__ = f"accuracy_of({language!r})"
    return statistic


def expected_consistency(table: ItemTable, weights: np.ndarray) -> np.ndarray:
    """Statistic: E[consistency] (Eq. 4) per weight row."""
    return _nanmean(_offdiag(_consistency_kernel(table, weights)), axis=1)


def expected_positive_transfer(table: ItemTable, weights: np.ndarray) -> np.ndarray:
    """Statistic: E[tr+] (Eq. 5) per weight row."""
    return _nanmean(_offdiag(_positive_transfer_kernel(table, weights)), axis=1)


def expected_negative_transfer(table: ItemTable, weights: np.ndarray) -> np.ndarray:
    """Statistic: E[tr-] (Eq. 6) per weight row."""
    return _nanmean(_offdiag(_negative_transfer_kernel(table, weights)), axis=1)


def replicate_weights(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_items) draw counts: each row resamples items with replacement, shared by all languages
    (the item bootstrap of every CI here, and of any statistic a stage computes from weighted items)."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if n_items < 1:
        raise ValueError("no items to resample")
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_items, np.full(n_items, 1.0 / n_items), size=n_boot).astype(float)


def _percentile_ci(
    table: ItemTable, statistic: Statistic, weights: np.ndarray, level: float
) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over the weight rows, skipping NaN replicates."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    chunk = max(1, _CHUNK_FLOATS // (len(table.languages) * table._row_width))
    reps = np.concatenate([statistic(table, weights[s : s + chunk]) for s in range(0, len(weights), chunk)])
    reps = reps[~np.isnan(reps)]
    if reps.size == 0:
        return math.nan, math.nan
    low, high = np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def bootstrap_ci(
    df: pd.DataFrame,
    statistic: Statistic,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    *,
    correct_col: str | None = "correct",
    pred_col: str | None = "pred",
    ranks_col: str | None = "ranks",
) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic``, resampling items (the same draws for every language).

    ``statistic`` is e.g. ``accuracy_of("sw")`` or :func:`expected_consistency`. Deterministic for a seed;
    replicates where the statistic is undefined (NaN) are dropped.
    """
    table = ItemTable.from_records(df, correct_col=correct_col, pred_col=pred_col, ranks_col=ranks_col)
    return _percentile_ci(table, statistic, replicate_weights(len(table.item_ids), n_boot, seed), level)


def _row_means(m: np.ndarray, axis: int) -> np.ndarray:
    """Per-language mean of a pair matrix over the other languages (axis=1: rows, axis=0: columns)."""
    off = np.where(np.eye(m.shape[0], dtype=bool), np.nan, m)
    return _nanmean(off, axis=axis)


def summarize(
    df: pd.DataFrame,
    pivot: str | None,
    *,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    std_ddof: int = 1,
    correct_col: str = "correct",
    pred_col: str = "pred",
    ranks_col: str = "ranks",
) -> dict[str, Any]:
    """JSON-ready summary of one (model, benchmark): Table 1 numbers, pair matrices, Table 2 inputs.

    ``pivot`` (e.g. ``"en"``) adds the views anchored on it; ``n_boot=0`` skips the bootstrap CIs.
    Accuracy std uses ``std_ddof`` (1: sample std across languages, see docs/metrics.md). Accuracies are
    fractions; NaN becomes null.
    """
    t = ItemTable.from_records(df, correct_col=correct_col, pred_col=pred_col, ranks_col=ranks_col)
    if pivot is not None and pivot not in t.languages:
        raise ValueError(f"pivot {pivot!r} not in the records' languages {list(t.languages)}")
    ones = np.ones((1, len(t.item_ids)))
    langs = t.languages
    acc = _accuracy_kernel(t, ones)[0]
    kernels = {
        "consistency": _consistency_kernel,
        "tr_plus": _positive_transfer_kernel,
        "tr_minus": _negative_transfer_kernel,
    }
    mats = {name: kernel(t, ones)[0] for name, kernel in kernels.items()}
    finite_acc = acc[~np.isnan(acc)]
    summary: dict[str, Any] = {
        "languages": list(langs),
        "n_items_per_language": dict(zip(langs, t.present.sum(axis=1).tolist(), strict=True)),
        "accuracy": dict(zip(langs, acc, strict=True)),
        "accuracy_mean": float(finite_acc.mean()) if finite_acc.size else math.nan,
        "accuracy_std": float(finite_acc.std(ddof=std_ddof)) if finite_acc.size > std_ddof else math.nan,
        "accuracy_std_ddof": std_ddof,
        **{name: dict(zip(("mean", "n_pairs"), mean_offdiag(m), strict=True)) for name, m in mats.items()},
        "pairwise": {name: pd.DataFrame(m, index=langs, columns=langs) for name, m in mats.items()},
        "pivot": pivot,
        "consistency_with_pivot": None,
        "tr_plus_from_pivot": None,
        "mean_consistency": dict(zip(langs, _row_means(mats["consistency"], axis=1), strict=True)),
        "incoming_tr_plus": dict(zip(langs, _row_means(mats["tr_plus"], axis=0), strict=True)),
        "bootstrap": None,
    }
    if pivot is not None:
        p = t.index(pivot)
        others = [i for i, lang in enumerate(langs) if lang != pivot]
        summary["consistency_with_pivot"] = {langs[i]: mats["consistency"][p, i] for i in others}
        summary["tr_plus_from_pivot"] = {langs[i]: mats["tr_plus"][p, i] for i in others}
    if n_boot:
        w = replicate_weights(len(t.item_ids), n_boot, seed)
        summary["bootstrap"] = {
            "n_boot": n_boot,
            "seed": seed,
            "level": level,
            "accuracy": {lang: _percentile_ci(t, accuracy_of(lang), w, level) for lang in langs},
            "consistency": _percentile_ci(t, expected_consistency, w, level),
            "tr_plus": _percentile_ci(t, expected_positive_transfer, w, level),
            "tr_minus": _percentile_ci(t, expected_negative_transfer, w, level),
        }
    return to_jsonable(summary)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order; NaN stays NaN and is not counted): controls
    the family-wise error rate over a grid of tests without assuming they are independent."""
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def against_controls(effect: float, null: Sequence[float]) -> dict[str, Any]:
    """An effect against the effects of K control interventions (random directions, random neurons):
    their mean and spread (sample sd), and the two-sided empirical p-value (1 + #{|null| >= |effect|})
    / (K + 1). NaN controls are left out; ``n`` is how many count."""
    v = np.array([x for x in null if not np.isnan(x)], dtype=float)
    out: dict[str, Any] = {
        "effect": effect,
        "null_mean": math.nan,
        "null_std": math.nan,
        "p_empirical": math.nan,
    }
    if v.size and not np.isnan(effect):
        out["null_mean"] = float(v.mean())
        out["null_std"] = float(v.std(ddof=1)) if v.size > 1 else math.nan
        out["p_empirical"] = (1 + int(np.sum(np.abs(v) >= abs(effect) - 1e-12))) / (v.size + 1)
    return out | {"n": int(v.size)}


def mcnemar_exact(base: Sequence[bool], treated: Sequence[bool]) -> float:
    """Exact McNemar p-value (two-sided) for paired right/wrong outcomes: a binomial test of the
    discordant pairs; 1.0 when there are none (nothing changed)."""
    b = np.asarray(base, dtype=bool)
    t = np.asarray(treated, dtype=bool)
    gained, lost = int((~b & t).sum()), int((b & ~t).sum())
    if gained + lost == 0:
        return 1.0
    return float(stats.binomtest(gained, gained + lost, 0.5).pvalue)


def paired_effects(
    base: pd.DataFrame,
    treated: pd.DataFrame,
    pivot: str | None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    correct_col: str = "correct",
    ranks_col: str = "ranks",
    scores_col: str | None = None,
) -> dict[str, dict[str, Any]]:
    """How an intervention (``treated``) changes each language's records against ``base`` on the
    same items: accuracy, consistency with ``pivot`` and tr+ from ``pivot``, each as base, treated,
    delta and a paired bootstrap CI of the delta (the same item draws for both sides, and for the
    pivot), plus an exact McNemar p-value for the accuracy change. Items are those both hold.

    ``scores_col`` (per-choice scores, e.g. ``cloze_norm``) adds ``gold_score``: the mean change in
    the gold choice's score, a continuous effect that moves even where accuracy is at chance, with
    its paired bootstrap CI and a Wilcoxon signed-rank p-value.
    """
    common = set(base["item_id"]) & set(treated["item_id"])
    both = pd.concat(
        [
            base[base["item_id"].isin(common)].assign(language="0|" + base["language"].astype(str)),
            treated[treated["item_id"].isin(common)].assign(language="1|" + treated["language"].astype(str)),
        ],
        ignore_index=True,
    )
    t = ItemTable.from_records(both, correct_col=correct_col, pred_col=None, ranks_col=ranks_col)
    n_items = len(t.item_ids)
    w = np.ones((1, n_items))
    if n_boot:
        w = np.vstack([w, replicate_weights(n_items, n_boot, seed)])
    acc = _accuracy_kernel(t, w)
    cons = _consistency_kernel(t, w) if pivot is not None else None
    trp = _positive_transfer_kernel(t, w) if pivot is not None else None
    correct = t._need("correct")

    def effect(b: np.ndarray, a: np.ndarray) -> dict[str, Any]:
        delta = a - b
        low, high = (math.nan, math.nan)
        reps = delta[1:][~np.isnan(delta[1:])]
        if reps.size:
            low, high = (float(x) for x in np.percentile(reps, [50 * (1 - level), 50 * (1 + level)]))
        return {
            "base": float(b[0]),
            "treated": float(a[0]),
            "delta": float(delta[0]),
            "ci_low": low,
            "ci_high": high,
        }

    out: dict[str, dict[str, Any]] = {}
    languages = sorted({lang.split("|", 1)[1] for lang in t.languages})
    for lang in languages:
        i0, i1 = t.index(f"0|{lang}"), t.index(f"1|{lang}")
        answered = t.present[i0] & t.present[i1]
        entry = {
            "n_items": int(answered.sum()),
            "accuracy": effect(acc[:, i0], acc[:, i1])
            | {"p_mcnemar": mcnemar_exact(correct[i0, answered], correct[i1, answered])},
        }
        if scores_col is not None:
            entry["gold_score"] = _gold_score_effect(base, treated, lang, t.item_ids, w, scores_col, effect)
        if pivot is not None and lang != pivot and f"0|{pivot}" in t.languages:
            p0, p1 = t.index(f"0|{pivot}"), t.index(f"1|{pivot}")
            assert cons is not None and trp is not None
            entry["consistency_pivot"] = effect(cons[:, p0, i0], cons[:, p1, i1])
            entry["tr_plus_from_pivot"] = effect(trp[:, p0, i0], trp[:, p1, i1])
        out[lang] = entry
    return out


def _gold_score_effect(
    base: pd.DataFrame,
    treated: pd.DataFrame,
    language: str,
    items: Sequence[str],
    w: np.ndarray,
    scores_col: str,
    effect: Callable[[np.ndarray, np.ndarray], dict[str, Any]],
) -> dict[str, Any]:
    """Mean gold-choice score of ``language`` in both frames on ``items`` under weight rows ``w``."""

    def gold(df: pd.DataFrame) -> pd.Series:
        rows = df[df["language"].astype(str) == language]
        values = [float(np.asarray(s)[g]) for s, g in zip(rows[scores_col], rows["gold"])]
        return pd.Series(values, index=rows["item_id"].astype(str).to_numpy()).reindex(list(items))

    b, a = gold(base).to_numpy(), gold(treated).to_numpy()
    have = ~(np.isnan(b) | np.isnan(a))
    wh = w * have
    means = [np.where(have, x, 0.0) @ wh.T / wh.sum(axis=1) for x in (b, a)]
    diff = (a - b)[have]
    p = 1.0 if not np.any(diff != 0) else float(stats.wilcoxon(diff).pvalue)
    return effect(*means) | {"p_wilcoxon": p}


def ci95_across(values: Iterable[float]) -> tuple[float, float, float]:
    """(mean, low, high): t-based 95% CI of the mean across languages, NaN skipped (Fig. 2's shaded areas).

    One value gives (value, NaN, NaN); none gives all NaN.
    """
    v = np.asarray(list(values), dtype=float).ravel()
    v = v[~np.isnan(v)]
    if v.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(v.mean())
    if v.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return mean, mean - half, mean + half


def significance_stars(p: float) -> str:
    """Table 2's marks: '***' p < .001, '**' p < .01, '*' p < .05, else '' (also for NaN)."""
    for threshold, stars in ((0.001, "***"), (0.01, "**"), (0.05, "*")):
        if p < threshold:
            return stars
    return ""


def pearson_with_stars(x: Iterable[float], y: Iterable[float]) -> dict[str, Any]:
    """Pearson's r between paired values with Table 2's stars and a 95 % CI (Fisher z, needs 4
    pairs); pairs with a NaN are dropped.

    Fewer than 3 pairs, or a constant side, gives r = p = NaN (no correlation is defined or testable).
    """
    xa = np.asarray(list(x), dtype=float)
    ya = np.asarray(list(y), dtype=float)
    if xa.shape != ya.shape:
        raise ValueError(f"x and y differ in length: {xa.shape} vs {ya.shape}")
    keep = ~(np.isnan(xa) | np.isnan(ya))
    xa, ya = xa[keep], ya[keep]
    r = p = low = high = math.nan
    if xa.size >= 3 and np.ptp(xa) > 0 and np.ptp(ya) > 0:
        res = stats.pearsonr(xa, ya)
        r, p = float(res.statistic), float(res.pvalue)
        if xa.size > 3:  # Fisher z: atanh(r) ~ Normal(atanh(rho), 1 / sqrt(n - 3))
            ci = res.confidence_interval(0.95)
            low, high = float(ci.low), float(ci.high)
    return {"r": r, "p": p, "n": int(xa.size), "stars": significance_stars(p), "ci_low": low, "ci_high": high}


def _fmt_rate(x: float | None) -> str:
    """Table 1 style: three decimals without the leading zero (.381, -.050, 1.000)."""
    if x is None or math.isnan(x):
        return "n/a"
    s = f"{x:.3f}"
    return s.replace("0.", ".", 1) if abs(x) < 1 else s


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def table1_line(summary: dict[str, Any]) -> str:
    """One Table 1 cell group from a :func:`summarize` result: ``acc 47.1 ± 13.8 | cons. .381 | ...``."""
    s = summary
    return (
        f"acc {_fmt_pct(s['accuracy_mean'])} ± {_fmt_pct(s['accuracy_std'])}"
        f" | cons. {_fmt_rate(s['consistency']['mean'])}"
        f" | tr+ {_fmt_rate(s['tr_plus']['mean'])} | tr− {_fmt_rate(s['tr_minus']['mean'])}"
    )


def to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy/pandas values to JSON types; NaN and infinities become None (null)."""
    if isinstance(obj, pd.DataFrame):
        return to_jsonable(obj.to_dict(orient="index"))
    if isinstance(obj, pd.Series):
        return to_jsonable(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if obj is None or obj is pd.NA or isinstance(obj, str):
        return None if obj is pd.NA else obj
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON")
