"""Metrics of the paper's section 2.1: hand-computed cases for every equation, the NaN policy, and
property tests against a naive, loop-and-scipy reference implementation kept here on purpose."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from crosslens.scoring import metrics as M

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rec(language: str, item_id: str, ranks: list[int], gold: int = 0) -> dict:
    """One record; the prediction is the top-ranked choice, as the evaluator produces it."""
    pred = int(np.argmin(ranks))
    return {
        "language": language,
        "item_id": item_id,
        "ranks": ranks,
        "pred": pred,
        "gold": gold,
        "correct": pred == gold,
    }


def answers(language: str, preds: dict[str, int], n_choices: int = 4, gold: int = 0) -> list[dict]:
    """Records whose prediction is ``preds[item]`` (ranks: the prediction first, then the others in order)."""
    out = []
    for item, p in preds.items():
        order = [p] + [j for j in range(n_choices) if j != p]
        ranks = [order.index(j) + 1 for j in range(n_choices)]
        out.append(rec(language, item, ranks, gold))
    return out


# --- the naive reference: literal set/loop definitions of Eqs. 1-3 -------------------------------


def naive(df: pd.DataFrame, l1: str, l2: str) -> dict[str, float]:
    a = df[df["language"] == l1].set_index("item_id")
    b = df[df["language"] == l2].set_index("item_id")
    common = sorted(set(a.index) & set(b.index))
    ka = np.concatenate([np.asarray(a.at[i, "ranks"], float) for i in common] or [np.zeros(0)])
    kb = np.concatenate([np.asarray(b.at[i, "ranks"], float) for i in common] or [np.zeros(0)])
    rho = math.nan
    if len(ka) >= 2 and np.ptp(ka) > 0 and np.ptp(kb) > 0:
        rho = float(spearmanr(ka, kb).statistic)
    f1 = {i for i in common if a.at[i, "correct"]}
    f2 = {i for i in common if b.at[i, "correct"]}
    wrong1 = [i for i in common if i not in f1]
    same_wrong = [i for i in wrong1 if i not in f2 and a.at[i, "pred"] == b.at[i, "pred"]]
    return {
        "consistency": rho,
        "tr_plus": len(f1 & f2) / len(f1) if f1 else math.nan,
        "tr_minus": len(same_wrong) / len(wrong1) if wrong1 else math.nan,
    }


def naive_matrices(df: pd.DataFrame) -> dict[str, np.ndarray]:
    langs = sorted(df["language"].unique())
    cells = [[naive(df, a, b) for b in langs] for a in langs]
    return {key: np.array([[c[key] for c in row] for row in cells]) for key in METRICS}


@st.composite
def records(draw, max_langs: int = 4, max_items: int = 6, ties: bool = True) -> pd.DataFrame:
    """Random parallel records: some items missing in some languages, 1-4 choices, optional rank ties."""
    n_lang = draw(st.integers(2, max_langs))
    n_items = draw(st.integers(1, max_items))
    n_choices = draw(st.lists(st.integers(1, 4), min_size=n_items, max_size=n_items))
    rows = []
    for i, j in enumerate(n_choices):
        gold = draw(st.integers(0, j - 1))
        for lang in range(n_lang):
            if draw(st.integers(0, 4)) == 0:
                continue  # this language did not answer this item
            if ties and draw(st.booleans()):
                ranks = draw(st.lists(st.integers(1, j), min_size=j, max_size=j))
            else:
                ranks = [r + 1 for r in draw(st.permutations(range(j)))]
            rows.append(rec(f"l{lang}", f"q{i}", ranks, gold))
    if not rows:
        rows.append(rec("l0", "q0", [1], 0))
    return pd.DataFrame(rows)


METRICS = {"consistency": M.consistency, "tr_plus": M.positive_transfer, "tr_minus": M.negative_transfer}
EXPECTED = {
    "consistency": M.expected_consistency,
    "tr_plus": M.expected_positive_transfer,
    "tr_minus": M.expected_negative_transfer,
}


def close(a, b) -> None:
    np.testing.assert_allclose(
        np.asarray(a, float), np.asarray(b, float), rtol=1e-9, atol=1e-12, equal_nan=True
    )


# --- Eq. 1 -----------------------------------------------------------------------------------


def test_eq1_consistency_by_hand():
    # en: a=[1,2,3], b=[1,2,3] -> k_en = [1,2,3,1,2,3]; fr: a=[1,2,3], b=[2,1,3] -> k_fr = [1,2,3,2,1,3].
    # Average ranks: en [1.5,3.5,5.5,1.5,3.5,5.5], fr [1.5,3.5,5.5,3.5,1.5,5.5]; centred (mean 3.5):
    # en [-2,0,2,-2,0,2], fr [-2,0,2,0,-2,2]; dot = 4+0+4+0+0+4 = 12; |en|^2 = |fr|^2 = 16 -> rho = 12/16.
    # Item c exists only in en, so it is not "answered by both" and is left out.
    df = pd.DataFrame(
        [
            rec("en", "a", [1, 2, 3]),
            rec("en", "b", [1, 2, 3]),
            rec("en", "c", [3, 2, 1]),
            rec("fr", "a", [1, 2, 3]),
            rec("fr", "b", [2, 1, 3]),
        ]
    )
    assert M.consistency(df, "en", "fr") == pytest.approx(0.75)
    assert M.consistency(df, "fr", "en") == pytest.approx(0.75)
    assert M.consistency(df, "en", "en") == pytest.approx(1.0)


def test_eq1_constant_rank_vector_is_nan_not_zero():
    # Every choice tied at rank 1 in fr: k_fr = [1,1,1,1] is constant, rho undefined.
    df = pd.DataFrame(
        [rec("en", "a", [1, 2]), rec("en", "b", [2, 1]), rec("fr", "a", [1, 1]), rec("fr", "b", [1, 1])]
    )
    assert math.isnan(M.consistency(df, "en", "fr"))
    assert math.isnan(M.consistency(df, "fr", "fr"))
    # One choice per item: k = [1, 1] is constant as well.
    single = pd.DataFrame([rec(lang, i, [1]) for lang in ("en", "fr") for i in ("a", "b")])
    assert math.isnan(M.consistency(single, "en", "fr"))


def test_eq1_different_number_of_choices_names_the_item():
    df = pd.DataFrame(
        [
            rec("en", "a", [1, 2]),
            rec("en", "q7", [1, 2, 3]),
            rec("fr", "a", [2, 1]),
            rec("fr", "q7", [1, 2, 3, 4]),
        ]
    )
    with pytest.raises(ValueError, match="'q7'"):
        M.consistency(df, "en", "fr")
    # Transfer does not read ranks, so the same records still give it.
    assert M.positive_transfer(df, "en", "fr") == pytest.approx(0.5)


# --- Eqs. 2 and 3 ------------------------------------------------------------------------------


def test_eq2_positive_transfer_by_hand():
    # gold 0 everywhere. en correct on {a, b, d}, wrong on c; fr correct on {a, c}, wrong on b, d.
    # Item e exists only in en (correct): not answered by both, so it is excluded.
    # tr+(en, fr) = |{a,b,d} n {a,c}| / |{a,b,d}| = 1/3;  tr+(fr, en) = |{a}| / |{a,c}| = 1/2.
    df = pd.DataFrame(
        answers("en", {"a": 0, "b": 0, "c": 1, "d": 0, "e": 0})
        + answers("fr", {"a": 0, "b": 2, "c": 0, "d": 3})
    )
    assert M.positive_transfer(df, "en", "fr") == pytest.approx(1 / 3)
    assert M.positive_transfer(df, "fr", "en") == pytest.approx(1 / 2)
    assert M.positive_transfer(df, "en", "en") == 1.0


def test_eq3_negative_transfer_by_hand():
    # gold 0. en preds a0 b2 c1 d3 -> wrong on {b, c, d}; fr preds a0 b2 c3 d0 -> wrong on {b, c}.
    # Wrong in both with the same answer: b (2 = 2); c is wrong in both but 1 != 3.
    # tr-(en, fr) = 1 / |{b,c,d}| = 1/3;  tr-(fr, en) = 1 / |{b,c}| = 1/2.
    df = pd.DataFrame(
        answers("en", {"a": 0, "b": 2, "c": 1, "d": 3}) + answers("fr", {"a": 0, "b": 2, "c": 3, "d": 0})
    )
    assert M.negative_transfer(df, "en", "fr") == pytest.approx(1 / 3)
    assert M.negative_transfer(df, "fr", "en") == pytest.approx(1 / 2)
    assert M.negative_transfer(df, "en", "en") == 1.0


def test_transfer_nan_when_denominator_empty():
    never_right = pd.DataFrame(answers("en", {"a": 1, "b": 2}) + answers("fr", {"a": 0, "b": 0}))
    assert math.isnan(M.positive_transfer(never_right, "en", "fr"))  # |F_en| = 0
    assert M.positive_transfer(never_right, "fr", "en") == 0.0  # defined, genuinely zero
    assert math.isnan(M.negative_transfer(never_right, "fr", "en"))  # fr is never wrong
    assert math.isnan(M.pairwise(never_right, M.positive_transfer).at["en", "en"])


# --- accuracy, pairwise, Eqs. 4-6 ------------------------------------------------------------------


def test_accuracy_and_pairwise_by_hand():
    df = pd.DataFrame(
        answers("en", {"a": 0, "b": 0, "c": 1, "d": 0}) + answers("fr", {"a": 0, "b": 2, "c": 0, "d": 3})
    )
    acc = M.accuracy(df)
    assert acc.to_dict() == {"en": 0.75, "fr": 0.5}
    m = M.pairwise(df, M.positive_transfer)
    # Rows are the source l1: tr+(en, fr) = |{a,b,d} n {a,c}| / 3 = 1/3, tr+(fr, en) = |{a}| / 2.
    close(m.to_numpy(), [[1, 1 / 3], [1 / 2, 1]])
    assert list(m.index) == list(m.columns) == ["en", "fr"]
    with pytest.raises(ValueError, match="pairwise supports"):
        M.pairwise(df, M.accuracy)


def test_eqs4to6_mean_offdiag_by_hand():
    # Off-diagonal, NaN skipped: .2 + .4 + .6 + .8 + .1 = 2.1 over 5 ordered pairs = .42.
    m = np.array([[1, 0.2, 0.4], [0.6, 1, np.nan], [0.8, 0.1, 1]])
    mean, n = M.mean_offdiag(m)
    assert mean == pytest.approx(0.42) and n == 5
    assert M.mean_offdiag(pd.DataFrame(m)) == (mean, n)
    nan_mean, zero = M.mean_offdiag(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    assert math.isnan(nan_mean) and zero == 0
    assert math.isnan(M.mean_offdiag(np.ones((1, 1)))[0])


def test_column_names_are_parameters_for_lens_records():
    df = pd.DataFrame(answers("en", {"a": 0, "b": 2, "c": 1}) + answers("fr", {"a": 0, "b": 2, "c": 3}))
    lens = df.rename(columns={"ranks": "lens_ranks", "pred": "lens_pred", "correct": "lens_correct"})
    assert M.consistency(lens, "en", "fr", ranks_col="lens_ranks") == M.consistency(df, "en", "fr")
    assert M.negative_transfer(lens, "en", "fr", correct_col="lens_correct", pred_col="lens_pred") == 0.5
    cols = {"correct_col": "lens_correct", "pred_col": "lens_pred", "ranks_col": "lens_ranks"}
    assert M.summarize(lens, "en", n_boot=5, **cols) == M.summarize(df, "en", n_boot=5)
    with pytest.raises(ValueError, match="lack column"):
        M.consistency(lens, "en", "fr")


def test_bad_records_fail_loudly():
    df = pd.DataFrame(answers("en", {"a": 0}) * 2 + answers("fr", {"a": 0}))
    with pytest.raises(ValueError, match="duplicate records for language 'en', item 'a'"):
        M.accuracy(df)
    with pytest.raises(ValueError, match="not in the records"):
        M.positive_transfer(df.drop_duplicates("language"), "en", "de")


# --- summarize, table1_line, to_jsonable ---------------------------------------------------------


def three_languages() -> pd.DataFrame:
    # gold 0. en: a0 b0 c1 d0 (acc .75); fr: a0 b2 c0 d3 (acc .5); sw: a1 b1 c1 d1 (acc 0, never right).
    return pd.DataFrame(
        answers("en", {"a": 0, "b": 0, "c": 1, "d": 0})
        + answers("fr", {"a": 0, "b": 2, "c": 0, "d": 3})
        + answers("sw", {"a": 1, "b": 1, "c": 1, "d": 1})
    )


def test_summarize_by_hand():
    s = M.summarize(three_languages(), "en", n_boot=0)
    json.dumps(s, allow_nan=False)  # strictly JSON: NaN became null
    assert s["accuracy"] == {"en": 0.75, "fr": 0.5, "sw": 0.0}
    # mean 5/12; sample std (ddof=1): deviations (1/3, 1/12, -5/12), squares 1/9 + 1/144 + 25/144 = 0.29167,
    # / (3 - 1) -> sqrt = 0.38188.
    assert s["accuracy_mean"] == pytest.approx(5 / 12)
    assert s["accuracy_std"] == pytest.approx(math.sqrt((1 / 9 + 1 / 144 + 25 / 144) / 2))
    assert s["accuracy_std_ddof"] == 1
    # tr+: en->fr 1/3, en->sw 0, fr->en 1/2, fr->sw 0, sw->* NaN (sw is never right):
    # E = (1/3 + 0 + 1/2 + 0) / 4 over 4 defined pairs.
    assert s["tr_plus"] == {"mean": pytest.approx((1 / 3 + 1 / 2) / 4), "n_pairs": 4}
    assert s["pairwise"]["tr_plus"]["sw"]["en"] is None
    assert s["tr_plus_from_pivot"] == {"fr": pytest.approx(1 / 3), "sw": 0.0}
    # Incoming tr+ of en: mean of tr+(fr, en) = 1/2 and tr+(sw, en) = NaN -> 1/2; of sw: (0 + 0) / 2.
    assert s["incoming_tr_plus"] == {"en": 0.5, "fr": pytest.approx(1 / 3), "sw": 0.0}
    # tr-: en wrong {c:1}; fr wrong {b:2, d:3}; sw wrong everywhere with 1.
    # en->fr 0/1, en->sw 1/1 (c: 1 = 1), fr->en 0/2, fr->sw 0/2, sw->en 1/4, sw->fr 0/4 -> E = 1.25 / 6.
    assert s["tr_minus"] == {"mean": pytest.approx(1.25 / 6), "n_pairs": 6}
    cons = s["pairwise"]["consistency"]
    assert s["consistency_with_pivot"] == {"fr": cons["en"]["fr"], "sw": cons["en"]["sw"]}
    assert s["mean_consistency"]["fr"] == pytest.approx((cons["fr"]["en"] + cons["fr"]["sw"]) / 2)
    assert s["bootstrap"] is None and s["pivot"] == "en"
    assert M.summarize(three_languages(), None, n_boot=0)["consistency_with_pivot"] is None
    with pytest.raises(ValueError, match="pivot 'xx'"):
        M.summarize(three_languages(), "xx")


def test_summarize_population_std_on_request():
    s = M.summarize(three_languages(), None, n_boot=0, std_ddof=0)
    assert s["accuracy_std"] == pytest.approx(math.sqrt((1 / 9 + 1 / 144 + 25 / 144) / 3))


def test_summarize_bootstrap_block():
    s = M.summarize(three_languages(), "en", n_boot=50, seed=3)
    b = s["bootstrap"]
    assert (b["n_boot"], b["seed"], b["level"]) == (50, 3, 0.95)
    assert set(b["accuracy"]) == {"en", "fr", "sw"} and b["accuracy"]["sw"] == [0.0, 0.0]
    for key in ("consistency", "tr_plus", "tr_minus"):
        low, high = b[key]
        assert low <= high
    assert M.summarize(three_languages(), "en", n_boot=50, seed=3) == s


def test_table1_line():
    s = {
        "accuracy_mean": 0.4714,
        "accuracy_std": 0.1381,
        "consistency": {"mean": 0.3812},
        "tr_plus": {"mean": 0.6231},
        "tr_minus": {"mean": 0.3719},
    }
    assert M.table1_line(s) == "acc 47.1 ± 13.8 | cons. .381 | tr+ .623 | tr− .372"
    s |= {
        "accuracy_std": None,
        "consistency": {"mean": -0.05},
        "tr_plus": {"mean": 1.0},
        "tr_minus": {"mean": None},
    }
    assert M.table1_line(s) == "acc 47.1 ± n/a | cons. -.050 | tr+ 1.000 | tr− n/a"
    assert M.table1_line(M.summarize(three_languages(), None, n_boot=0)).startswith(
        "acc 41.7 ± 38.2 | cons. "
    )


def test_to_jsonable():
    obj = {
        "a": np.float64("nan"),
        1: [np.int64(2), (np.bool_(True), float("inf"))],
        "m": np.array([[0.5]]),
        "s": pd.Series({"x": 1.0}),
        "f": pd.DataFrame([[1.0, np.nan]], index=["r"], columns=["c", "d"]),
    }
    assert M.to_jsonable(obj) == {
        "a": None,
        "1": [2, [True, None]],
        "m": [[0.5]],
        "s": {"x": 1.0},
        "f": {"r": {"c": 1.0, "d": None}},
    }
    with pytest.raises(TypeError):
        M.to_jsonable(object())


# --- bootstrap ---------------------------------------------------------------------------------


def test_bootstrap_ci_deterministic_and_degenerate():
    df = three_languages()
    first = M.bootstrap_ci(df, M.expected_positive_transfer, n_boot=100, seed=7)
    assert M.bootstrap_ci(df, M.expected_positive_transfer, n_boot=100, seed=7) == first
    assert M.bootstrap_ci(df, M.accuracy_of("sw"), n_boot=20) == (0.0, 0.0)  # never right in any resample
    low, high = M.bootstrap_ci(df, M.accuracy_of("en"), n_boot=200, level=0.9)
    assert 0.0 <= low <= 0.75 <= high <= 1.0
    with pytest.raises(ValueError, match="n_boot"):
        M.bootstrap_ci(df, M.expected_consistency, n_boot=0)
    with pytest.raises(ValueError, match="level"):
        M.bootstrap_ci(df, M.expected_consistency, n_boot=5, level=95)


def test_bootstrap_resamples_items_with_multiplicity_weights():
    # A replicate drawing items (a, a, c) must equal the metric on records holding a twice and c once.
    df = three_languages()
    table = M.ItemTable.from_records(df)
    assert table.item_ids == ("a", "b", "c", "d")
    w = np.array([[2.0, 0.0, 1.0, 0.0]])
    resampled = pd.concat(
        [
            df[df["item_id"] == "a"].assign(item_id="a#1"),
            df[df["item_id"] == "a"].assign(item_id="a#2"),
            df[df["item_id"] == "c"],
        ]
    )
    assert M.accuracy_of("en")(table, w)[0] == pytest.approx(M.accuracy(resampled)["en"])  # (1 + 1 + 0) / 3
    reference = naive_matrices(resampled)
    for key, stat in EXPECTED.items():
        close(stat(table, w)[0], M.mean_offdiag(reference[key])[0])


# --- across-language aggregates and Table 2 correlations ---------------------------------------------


def test_ci95_across_by_hand():
    # [1, 2, 3]: mean 2, sd 1, se 1/sqrt(3), t(.975, df=2) = 4.302653 -> half width 2.484138.
    mean, low, high = M.ci95_across([1.0, np.nan, 2.0, 3.0])
    assert (mean, low, high) == pytest.approx((2.0, 2 - 2.484138, 2 + 2.484138), abs=1e-6)
    one = M.ci95_across([0.5, np.nan])
    assert one[0] == 0.5 and math.isnan(one[1]) and math.isnan(one[2])
    assert all(math.isnan(v) for v in M.ci95_across([]))


def test_pearson_with_stars():
    perfect = M.pearson_with_stars([1, 2, 3, 4, np.nan], [-2, -4, -6, -8, 1])
    assert perfect["r"] == pytest.approx(-1.0) and perfect["n"] == 4 and perfect["stars"] == "***"
    # x = 1..5, y = (1, 3, 2, 5, 1): sum dx dy = 2, sum dx^2 = 10, sum dy^2 = 11.2
    # -> r = 2 / sqrt(112) = .189, t = r sqrt(3) / sqrt(1 - r^2) = .333 on 3 df, two-sided p = .761: no star.
    weak = M.pearson_with_stars([1, 2, 3, 4, 5], [1, 3, 2, 5, 1])
    assert weak["r"] == pytest.approx(2 / math.sqrt(112)) and weak["p"] == pytest.approx(0.7608, abs=1e-4)
    assert weak["stars"] == "" and 0 < weak["p"] < 1
    for x, y in (([1, 2], [1, 2]), ([1, 1, 1], [1, 2, 3])):
        res = M.pearson_with_stars(x, y)
        assert math.isnan(res["r"]) and math.isnan(res["p"]) and res["stars"] == ""
    assert [M.significance_stars(p) for p in (0.0009, 0.009, 0.049, 0.05, math.nan)] == [
        "***",
        "**",
        "*",
        "",
        "",
    ]
    with pytest.raises(ValueError, match="differ in length"):
        M.pearson_with_stars([1, 2, 3], [1, 2])


# --- properties --------------------------------------------------------------------------------


@FAST
@given(records())
def test_pairwise_matches_naive_reference(df):
    reference = naive_matrices(df)
    for key, metric in METRICS.items():
        close(M.pairwise(df, metric).to_numpy(), reference[key])
    langs = sorted(df["language"].unique())
    l1, l2 = langs[0], langs[-1]
    for key, metric in METRICS.items():
        close(metric(df, l1, l2), naive(df, l1, l2)[key])


@FAST
@given(records())
def test_ranges_symmetry_and_diagonal(df):
    cons = M.pairwise(df, M.consistency).to_numpy()
    close(cons, cons.T)
    finite = cons[~np.isnan(cons)]
    assert ((finite >= -1) & (finite <= 1)).all()
    for metric in (M.positive_transfer, M.negative_transfer):
        m = M.pairwise(df, metric).to_numpy()
        finite = m[~np.isnan(m)]
        assert ((finite >= 0) & (finite <= 1)).all()
    tr_plus = M.pairwise(df, M.positive_transfer)
    for lang, has_correct in df.groupby("language")["correct"].any().items():
        assert (tr_plus.at[lang, lang] == 1.0) if has_correct else math.isnan(tr_plus.at[lang, lang])


@FAST
@given(records(), st.randoms(use_true_random=False))
def test_item_order_permutation_invariance(df, rnd):
    order = list(range(len(df)))
    rnd.shuffle(order)
    shuffled = df.iloc[order].reset_index(drop=True)
    for metric in METRICS.values():
        pd.testing.assert_frame_equal(M.pairwise(shuffled, metric), M.pairwise(df, metric))
    pivot = sorted(df["language"])[0]
    assert M.summarize(shuffled, pivot, n_boot=10) == M.summarize(df, pivot, n_boot=10)


@FAST
@given(records(), st.integers(0, 2**32 - 1))
def test_bootstrap_deterministic_with_seed(df, seed):
    for stat in EXPECTED.values():
        first = M.bootstrap_ci(df, stat, n_boot=20, seed=seed)
        assert M.bootstrap_ci(df, stat, n_boot=20, seed=seed) == pytest.approx(first, nan_ok=True)


@FAST
@given(records(max_items=4), st.lists(st.integers(0, 3), min_size=4, max_size=4))
def test_weighted_statistics_equal_metrics_on_resampled_records(df, counts):
    table = M.ItemTable.from_records(df)
    w = np.array([counts[: len(table.item_ids)]], dtype=float)
    parts = [
        df[df["item_id"] == item].assign(item_id=f"{item}#{k}")
        for item, n in zip(table.item_ids, w[0], strict=True)
        for k in range(int(n))
    ]
    resampled = pd.concat(parts) if parts else df.iloc[:0]
    reference = naive_matrices(resampled) if len(resampled) else {}
    for key, stat in EXPECTED.items():
        expected = M.mean_offdiag(reference[key])[0] if reference else math.nan
        close(stat(table, w)[0], expected)
