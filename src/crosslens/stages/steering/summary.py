"""The steering summary: per setting, the change against gamma = 0 in accuracy, consistency with
English and transfer from English (letters and cloze), paired tests with Holm's correction over the
grid, and the random controls' null."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from crosslens.scoring import metrics
from crosslens.stages.steering import SUMMARY, TABLE
from crosslens.stages.steering.controls import WRONG_LANGUAGE
from crosslens.store import Store

__all__ = ["summarize_steering"]


FORMS = (("", "correct", "ranks", "label_logprobs"), ("cloze_", "cloze_correct", "cloze_ranks", "cloze_norm"))
METRICS = ("accuracy", "consistency_en", "tr_plus_from_en")
Setting = tuple[int, float, str]  # (layer, gamma, positions)
Form = tuple[str, str, str, str]


def _forms(df: pd.DataFrame) -> list[Form]:
    return [f for f in FORMS if f[1] in df]


def _language_metrics(grp: pd.DataFrame, pivot: str, forms: list[Form]) -> dict[str, dict]:
    """Accuracy, consistency with and tr+ from the pivot, per steered language, for every form."""
    out: dict[str, dict[str, float]] = {}
    for prefix, correct, ranks, _ in forms:
        acc = grp.groupby("language")[correct].mean()
        for m in (m for m in acc.index if m != pivot):
            out.setdefault(m, {}).update(
                {
                    f"{prefix}accuracy": float(acc[m]),
                    f"{prefix}consistency_en": metrics.consistency(grp, pivot, m, ranks_col=ranks),
                    f"{prefix}tr_plus_from_en": metrics.positive_transfer(grp, pivot, m, correct_col=correct),
                }
            )
    return out


def _add_paired_tests(df: pd.DataFrame, per: dict[Setting, dict], pivot: str, n_boot: int, seed: int) -> None:
    """Add to each steered (language, setting) its change against gamma = 0 on the same items, for
    every form: paired bootstrap CIs (accuracy, consistency with and tr+ from English, the gold
    answer's score), the exact McNemar p-value and its Holm adjustment over the whole grid of
    gamma != 0 settings (one family per form; gamma = 0 itself gets p = 1 and changes of 0)."""
    real = df[df["control"] == ""]
    for prefix, correct, ranks, scores in _forms(df):
        tests: list[dict[str, Any]] = []
        for layer, g, where in per:
            at = (real["layer"] == layer) & (real["positions"] == where)
            base, treated = real[at & (real["gamma"] == 0.0)], real[at & (real["gamma"] == g)]
            effects = metrics.paired_effects(
                base, treated, pivot, n_boot=n_boot, seed=seed,
                correct_col=correct, ranks_col=ranks, scores_col=scores,
            )  # fmt: skip
            for m, values in per[(layer, g, where)].items():
                e = effects[m]
                values[f"{prefix}paired"] = {
                    k: e[k] for k in ("accuracy", "consistency_pivot", "tr_plus_from_pivot", "gold_score")
                }
                values[f"{prefix}p_mcnemar"] = e["accuracy"]["p_mcnemar"]
                if g == 0.0:  # the baseline against itself: p = 1, every change 0; not a test of the family
                    values[f"{prefix}p_holm"] = 1.0
                else:
                    tests.append(values)
        for values, adjusted in zip(tests, metrics.holm([t[f"{prefix}p_mcnemar"] for t in tests])):
            values[f"{prefix}p_holm"] = adjusted


def _add_controls(
    df: pd.DataFrame, per: dict[Setting, dict], pivot: str, keys: list[str]
) -> dict[Setting, dict]:
    """Compare every steering effect with its controls' effects (random directions of the same norm)
    and report the wrong language's; per language, and for the mean over languages per setting."""
    out: dict[Setting, dict] = {}
    forms = _forms(df)
    for (layer, g, where), langs in per.items():
        at = df[(df["layer"] == layer) & (df["gamma"] == g) & (df["positions"] == where)]
        names = sorted(set(at["control"]) - {""})
        if g == 0.0 or not names:
            continue
        base = per[(layer, 0.0, where)]
        ctl = {c: _language_metrics(at[at["control"] == c], pivot, forms) for c in names}
        randoms = [c for c in names if c.startswith("random:")]
        setting: dict[str, Any] = {"n_controls": len(randoms), "wrong_language": {}}
        for key in keys:
            deltas = {m: langs[m][key] - base[m][key] for m in langs}
            null = {c: {m: ctl[c][m][key] - base[m][key] for m in langs} for c in names}
            for m in langs:
                null_m = [null[c][m] for c in randoms]
                langs[m].setdefault("controls", {})[key] = metrics.against_controls(deltas[m], null_m)
                if WRONG_LANGUAGE in null:
                    langs[m].setdefault("wrong_language", {})[key] = null[WRONG_LANGUAGE][m]
            mean = float(np.nanmean(list(deltas.values())))
            means = [float(np.nanmean(list(null[c].values()))) for c in randoms]
            setting[key] = metrics.against_controls(mean, means)
            if WRONG_LANGUAGE in null:
                setting["wrong_language"][key] = float(np.nanmean(list(null[WRONG_LANGUAGE].values())))
        out[(layer, g, where)] = setting
    return out


def summarize_steering(
    store: Store, pivot: str, rows: pd.DataFrame | None = None, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Per (layer, gamma, positions): accuracy, consistency with English and tr+(en, m) per language
    for letters and (when scored) cloze, their change against gamma = 0, and means with 95 % CIs
    across the steered languages (Figs. 4, 5, 7-11). Per steered language, also the paired tests
    of :func:`_add_paired_tests` (``n_boot`` replicates; ``p_mcnemar``, ``p_holm``); per setting,
    how many languages survive Holm, and the comparison with the controls (:func:`_add_controls`).

    ``rows``: the steering rows to summarise (default: every row of the folder's table).
    """
    df = store.read(TABLE) if rows is None else rows
    if df.empty:
        raise ValueError(f"{store.root} has no steering records")
    forms = _forms(df)
    keys = [f"{prefix}{k}" for prefix, *_ in forms for k in METRICS]
    real = df[df["control"] == ""]
    per: dict[Setting, dict] = {
        (int(layer), float(g), str(where)): _language_metrics(grp, pivot, forms)
        for (layer, g, where), grp in real.groupby(["layer", "gamma", "positions"])
    }
    _add_paired_tests(df, per, pivot, n_boot, seed)
    controls = _add_controls(df, per, pivot, keys)
    settings = []
    for (layer, g, where), langs in sorted(per.items()):
        base = per[(layer, 0.0, where)]
        entry: dict[str, Any] = {"layer": layer, "gamma": g, "positions": where, "per_language": langs}
        for prefix, *_ in forms:
            entry[f"{prefix}n_significant_holm"] = sum(
                1 for v in langs.values() if v.get(f"{prefix}p_holm", 1.0) < 0.05
            )
        for key in keys:
            vals = np.array([langs[m][key] for m in langs], dtype=float)
            delta = np.array([langs[m][key] - base[m][key] for m in langs], dtype=float)
            entry[key] = dict(zip(("mean", "ci_low", "ci_high"), metrics.ci95_across(vals)))
            entry[f"delta_{key}"] = dict(zip(("mean", "ci_low", "ci_high"), metrics.ci95_across(delta)))
        if (layer, g, where) in controls:
            entry["controls"] = controls[(layer, g, where)]
        settings.append(entry)
    first = min(per)
    summary = {
        "pivot": pivot,
        "n_boot": n_boot,
        "forms": [prefix.rstrip("_") or "letters" for prefix, *_ in forms],
        "multiple_testing": "Holm over every (language, layer, gamma != 0, positions) of the grid, per form; "
        "exact McNemar",
        "settings": settings,
        "unsteered_accuracy": {m: v["accuracy"] for m, v in per[(first[0], 0.0, first[2])].items()},
    }
    store.write_json(SUMMARY, metrics.to_jsonable(summary))
    return summary
