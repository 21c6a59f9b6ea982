"""The latent stage's maths, as pure functions: a lens distribution's mass per language and its
entropy, and the per-prompt-language curves (English, native, other, none) with their CIs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from crosslens.data.token_languages import TokenLanguages, table_code
from crosslens.scoring.metrics import ci95_across

__all__ = [
    "NONE",
    "MASS",
    "mass_column",
    "readout",
    "native_codes",
    "shares",
    "elsewhere",
    "curves",
    "SHARES",
]

NONE = "none"
MASS = "mass_"  # a row's column of the mass on one table language: mass_en, mass_zh, ..., mass_none
SHARES = ("en", "native", "other", NONE)  # what the curves split each distribution into


def mass_column(code: str) -> str:
    return MASS + code


def readout(logits: torch.Tensor, table: TokenLanguages) -> dict[str, torch.Tensor]:
    """The mass of ``softmax(logits)`` (rows x vocabulary) on every language of ``table`` and on
    "none", and its entropy in nats: ``{mass_<code>: (rows,), ..., mass_none, entropy}``, float32.

    The distribution is formed and reduced here, so nothing of vocabulary width outlives the call.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    masses = table.masses(p, table.languages)  # every table language is requested: "other" stays 0
    out = {mass_column(code): masses[code] for code in table.languages}
    out[mass_column(NONE)] = masses[NONE]
    out["entropy"] = -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)
    return out


def native_codes(languages: Sequence[str], table_languages: Sequence[str]) -> dict[str, str | None]:
    """Each prompt language's table column (None: a language the table cannot identify, whose native
    mass is then missing rather than counted as "other")."""
    out: dict[str, str | None] = {}
    for lang in languages:
        try:
            out[lang] = table_code(lang, table_languages)
        except ValueError:
            out[lang] = None
    return out


def shares(rows: pd.DataFrame, native: Mapping[str, str | None]) -> pd.DataFrame:
    """Each reading's mass on English, on its prompt's own language (``native``: language -> column),
    on every other identified language (``other``) and on none; NaN native (and other) where the
    table cannot identify the prompt's language. English prompts: native = English."""
    code = rows["language"].map(native)
    columns = [c for c in rows.columns if c.startswith(MASS)]
    values = rows[columns].to_numpy(dtype=np.float64)
    index = {c: j for j, c in enumerate(columns)}
    en = values[:, index[mass_column("en")]]
    none = values[:, index[mass_column(NONE)]]
    own = np.array([index.get(mass_column(c), -1) if isinstance(c, str) else -1 for c in code])
    nat = np.where(own >= 0, values[np.arange(len(values)), own], np.nan)
    other = 1.0 - none - np.where(code == "en", en, en + nat)
    return rows.assign(en=en, native=nat, other=other, none=none)


def elsewhere(rows: pd.DataFrame, native: Mapping[str, str | None]) -> pd.Series:
    """Each reading's control for its native mass: the mass on the prompt's language in the *other*
    languages' readings of the same item, lens and layer (their mean). A lens that decodes every prompt
    to the same words of one language (the middle layers of a small model) gives that language native
    mass for prompts in any language; native mass above this control is the prompt's own. NaN where
    the table cannot identify the language or no other language was read. ``rows``: one reading per
    (lens, language, layer, item): one position, or each item's mean over its answer positions."""
    keys = ["lens", "layer", "item_id"]
    code = rows["language"].map(native)
    out = pd.Series(np.nan, index=rows.index)
    for lang, own in native.items():
        if own is None:
            continue
        mine = rows["language"] == lang
        others = rows[~mine & (code != own)]
        if others.empty:
            continue
        control = others.groupby(keys)[mass_column(own)].mean()
        at = pd.MultiIndex.from_frame(rows.loc[mine, keys])
        out[mine] = control.reindex(at).to_numpy()
    return out


def _stats(values: Sequence[float]) -> dict[str, Any]:
    mean, low, high = ci95_across(values)
    return {"mean": mean, "ci_low": low, "ci_high": high}


def curves(readings: pd.DataFrame) -> dict[str, Any]:
    """``{lens: {language: {layer: {share, entropy or native_elsewhere: {mean, ci_low, ci_high}}}}}``:
    means over items with t-based 95 % CIs, from :func:`shares` rows (with :func:`elsewhere`'s
    ``native_elsewhere``) holding one value per (lens, language, layer, item)."""
    out: dict[str, Any] = {}
    keys = ["lens", "language", "layer"]
    for (lens, lang, layer), g in readings.groupby(keys, sort=True):
        cell = {name: _stats(g[name].to_numpy()) for name in (*SHARES, "entropy", "native_elsewhere")}
        cell["n_items"] = int(g["item_id"].nunique())
        out.setdefault(lens, {}).setdefault(lang, {})[int(layer)] = cell
    return out
