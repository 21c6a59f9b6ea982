"""The neurons stage's part of the report: neurons per language and layer, the paired effects of
deactivating them against a random control, and their figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.ticker import MaxNLocator
from pydantic import model_validator

from crosslens.files import Schema, require
from crosslens.render.figures import floats, language_colors, new_figure, save
from crosslens.render.tables import Table, ci, missing
from crosslens.stages.neurons import FIGURES
from crosslens.stages.reporting import Change, Column, Figure, ReportPart, ResultFolder, Summary

__all__ = ["PART", "NeuronsSummary", "neurons_figure", "ablation_figure"]


class AccuracyChange(Change):
    p_mcnemar: float


class LanguageEffect(Schema):
    accuracy: AccuracyChange
    gold_score: Change | None = None
    consistency_pivot: Change | None = None
    tr_plus_from_pivot: Change | None = None


class Effect(Schema):
    """Deactivating one set of neurons (a language's, or a control): the change in every language."""

    n_neurons: int
    cloze: dict[str, LanguageEffect] = {}
    letters: dict[str, LanguageEffect] = {}


class LapeSelection(Schema):
    n_kept: int
    n_neurons: int
    top_rate: float


class NeuronsSummary(Summary):
    """``neurons_summary.json``: what the neurons and ablation tables and figures read."""

    languages: list[str]
    pivot: str | None = None
    n_layers: int
    n_text_items: int
    n_eval_items: int
    selection: LapeSelection
    n_specific: dict[str, int]
    per_layer: dict[str, dict[str, int]]
    overlap: dict[str, dict[str, int]]
    effects: dict[str, dict[str, Effect]]  # ablated language -> kind (lape, random) -> effect

    @model_validator(mode="after")
    def _every_language(self) -> NeuronsSummary:
        require(self.per_layer, self.n_specific, "per_layer")
        require(self.overlap, self.n_specific, "overlap")
        every = [e for kinds in self.effects.values() for e in kinds.values()]
        scores = sorted({s for e in every for s in ("cloze", "letters") if s in e.model_fields_set})
        for m, kinds in self.effects.items():
            for kind, e in kinds.items():
                key = f"effects.{m}.{kind}"
                require(e.model_fields_set, scores, key)  # the figure reads one score of every effect
                for score in scores:
                    require(getattr(e, score), [m, *self.languages], f"{key}.{score}")
        return self


CAPTIONS = {
    "neurons": "Language-specific neurons (LAPE) per layer, one line per language.",
    "ablation": (
        "Change in accuracy of every language when one language's specific neurons are deactivated (red) "
        "and when as many random neurons of the same layers are (grey); bars: paired bootstrap 95 % CI."
    ),
}


def neurons_figure(
    per_layer: Mapping[str, Mapping[Any, int]], n_layers: int, path: str | Path, title: str | None = None
) -> Path:
    """Language-specific neurons (LAPE) per layer, one line per language (``per_layer``: language ->
    {layer: count}, layers without any left out)."""
    langs = list(per_layer)
    colors = language_colors(langs)
    fig = new_figure(6.4, 3.4)
    ax = fig.subplots()
    layers = np.arange(1, n_layers + 1)
    for lang in langs:
        counts = [per_layer[lang].get(str(x), per_layer[lang].get(int(x), 0)) for x in layers]
        ax.plot(layers, counts, marker="o", markersize=3, color=colors[lang], label=lang)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("language-specific neurons")
    fig.legend(loc="outside right center", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return save(fig, path)


def _control_bars(
    effects: Mapping[str, Any], score: str, langs: Sequence[str], key: str, scale: float
) -> tuple[np.ndarray, np.ndarray, str] | None:
    """The grey bars of one panel: the one random set's change with its CI, or with K random sets
    their mean change ± sd. None where no control was scored."""
    null = (effects.get("lape") or {}).get("controls", {})
    if null.get("n", 1) > 1 and score in null:
        cells = [null[score].get(lang, {}).get(key) or {} for lang in langs]
        mean = scale * floats(c.get("null_mean") for c in cells)
        sd = scale * floats(c.get("null_std") for c in cells)
        label = f"random ({null['n']} sets, mean ± sd)"
        return np.nan_to_num(mean), np.vstack([np.nan_to_num(sd)] * 2), label
    entry = effects.get("random")
    if entry is None:
        return None
    cells = [entry[score][lang].get(key) or {} for lang in langs]
    delta = np.nan_to_num(scale * floats(c.get("delta") for c in cells))
    low = scale * floats(c.get("ci_low") for c in cells)
    high = scale * floats(c.get("ci_high") for c in cells)
    return delta, np.vstack([np.nan_to_num(delta - low), np.nan_to_num(high - delta)]), "random"


def ablation_figure(summary: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Per ablated language (rows): the change in every language's accuracy (left) and in its gold
    answer's score (right: its cloze score under the run's normalisation for cloze, the gold letter's
    log-probability otherwise) when its LAPE neurons are deactivated (red, with paired bootstrap CIs)
    and for the random control (grey: the one set with its CI, or K sets' mean ± sd). Cloze where
    scored, else letters."""
    effects = summary["effects"]
    ablated = [m for m in effects if effects[m]]
    score = "cloze" if any("cloze" in e for m in ablated for e in effects[m].values()) else "letters"
    langs = list(summary["languages"])
    panels = (("accuracy", 100.0, f"Δ {score} accuracy (points)"), ("gold_score", 1.0, "Δ gold-answer score"))
    fig = new_figure(2 * max(4.5, 0.45 * len(langs) + 1.5) + 0.5, 2.5 * len(ablated) + 0.6)
    axes = fig.subplots(len(ablated), 2, squeeze=False)
    x = np.arange(len(langs))
    for row, m in enumerate(ablated):
        for col, (key, scale, label) in enumerate(panels):
            ax = axes[row, col]
            entry = effects[m].get("lape")
            if entry is not None:
                cells = [entry[score][lang].get(key) or {} for lang in langs]
                delta = np.nan_to_num(scale * floats(c.get("delta") for c in cells))
                low, high = (
                    scale * floats(c.get("ci_low") for c in cells),
                    scale * floats(c.get("ci_high") for c in cells),
                )
                err = np.vstack([np.nan_to_num(delta - low), np.nan_to_num(high - delta)])
                name = f"lape ({entry['n_neurons']} neurons)"
                ax.bar(x - 0.2, delta, 0.4, color="tab:red", label=name, yerr=err, capsize=2, ecolor="0.3")
            bars = _control_bars(effects[m], score, langs, key, scale)
            if bars is not None:
                delta, err, name = bars
                ax.bar(x + 0.2, delta, 0.4, color="tab:gray", label=name, yerr=err, capsize=2, ecolor="0.3")
            ax.axhline(0, color="0.4", linewidth=0.6)
            ax.set_xticks(x, langs, rotation=90 if len(langs) > 12 else 0, fontsize=8)
            if m in langs:
                ax.get_xticklabels()[langs.index(m)].set_fontweight("bold")
            ax.set_title(f"{m}-specific neurons off", fontsize=9)
            ax.set_ylabel(label, fontsize=8)
            if col == 0:
                ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, path)


def _effect(e: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    """A paired change with its CI: ``-3.1 [-6.2, 0.0]`` (points) or ``-0.051 [...]`` (rho)."""
    if not e or missing(e.get("delta")):
        return "–"
    return f"{scale * e['delta']:+.{digits}f} {ci(e['ci_low'], e['ci_high'], scale, digits)}"


def _tables(n: Mapping[str, Any]) -> list[Table]:
    """Language-specific neurons per language, and the effects of deactivating them."""
    sel = n["selection"]
    overlap = n["overlap"]
    rows = [
        [
            lang,
            str(count),
            ", ".join(f"{layer}: {k}" for layer, k in n["per_layer"][lang].items() if k) or "–",
            ", ".join(f"{b} {k}" for b, k in overlap[lang].items() if b != lang and k) or "–",
        ]
        for lang, count in n["n_specific"].items()
    ]
    out = [
        Table(
            f"Language-specific neurons (LAPE: {sel['n_kept']} of {sel['n_neurons']} neurons kept, top rate "
            f"{sel['top_rate']}, from {n['n_text_items']} held-out items)",
            ["language", "neurons", "per layer (layer: count)", "shared with"],
            rows,
        )
    ]
    pivot = n.get("pivot") or "pivot"  # none: the columns anchored on English are empty
    k = n.get("controls", 1)
    rows = []
    for m, kinds in n["effects"].items():
        for kind, e in kinds.items():
            if k > 1 and kind != "lape":
                continue  # the K random sets are one row below: their mean ± sd
            row = [m, kind, str(e["n_neurons"])]
            for score in ("cloze", "letters"):
                if score not in e:
                    row += ["–"] * 5
                    continue
                own = e[score][m]
                others = [v["accuracy"]["delta"] for lang, v in e[score].items() if lang != m]
                others = [x for x in others if not missing(x)]
                p = e.get("controls", {}).get(score, {}).get(m, {}).get("gold_score", {}).get("p_empirical")
                against = "" if k == 1 or missing(p) else f" (p {p:.2g})"
                row += [
                    _effect(own["accuracy"]) + f" (p {own['accuracy']['p_mcnemar']:.2g})",
                    _effect(own.get("gold_score"), 1.0, 3) + against,
                    _effect(own.get("consistency_pivot"), 1.0, 3),
                    _effect(own.get("tr_plus_from_pivot")),
                    f"{100 * sum(others) / len(others):+.1f}" if others else "–",
                ]
            rows.append(row)
            if k > 1 and "controls" in e:
                rows.append(_null_row(m, e, k))
    if rows:
        cols = [
            "Δ acc (p McNemar)",
            "Δ gold score",
            f"Δ cons. w/ {pivot}",
            f"Δ tr+ from {pivot}",
            "Δ acc others",
        ]
        out.append(
            Table(
                f"Deactivating the neurons of one language: paired change in that language on "
                f"{n['n_eval_items']} held-out items [95 % bootstrap CI]",
                ["ablated", "neurons", "n", *(f"cloze {c}" for c in cols), *(f"letters {c}" for c in cols)],
                rows,
                note=_note(n),
            )
        )
    return out


def _spread(null: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    """``-0.4 ± 1.2``: the random controls' mean change ± sd."""
    if not null or missing(null.get("null_mean")):
        return "–"
    sd = null.get("null_std")
    return f"{scale * null['null_mean']:+.{digits}f}" + ("" if missing(sd) else f" ± {scale * sd:.{digits}f}")


def _null_row(m: str, lape: Mapping[str, Any], k: int) -> list[str]:
    """The K random sets of one ablated language as one row: each change's mean ± sd over the sets."""
    row = [m, f"random ×{k}", str(lape["n_neurons"])]
    for score in ("cloze", "letters"):
        null = lape["controls"].get(score, {})
        own = null.get(m, {})
        others = [v["accuracy"]["null_mean"] for lang, v in null.items() if lang != m and "accuracy" in v]
        others = [x for x in others if not missing(x)]
        row += [
            _spread(own.get("accuracy")),
            _spread(own.get("gold_score"), 1.0, 3),
            _spread(own.get("consistency_pivot"), 1.0, 3),
            _spread(own.get("tr_plus_from_pivot")),
            f"{100 * sum(others) / len(others):+.1f}" if others else "–",
        ] if null else ["–"] * 5  # fmt: skip
    return row


def _note(n: Mapping[str, Any]) -> str:
    """What the effects table's columns mean, with the run's cloze normalisation and controls."""
    norm = n.get("cloze_norm") or "char"  # folders written before it was recorded: the default
    per = {"char": "per character", "byte": "per UTF-8 byte", "token": "per token", "none": "summed",
           "pmi": "minus its log-likelihood after an empty prompt (pmi)"}.get(norm, norm)  # fmt: skip
    k = n.get("controls", 1)
    control = (
        "random: as many random neurons of the same layers (the control)"
        if k == 1
        else f"random ×{k}: {k} random sets of as many neurons of the same layers, each change's mean ± sd "
        "over the sets; (p …) after the LAPE gold score: its empirical p among the sets' changes"
    )
    return (
        f"{control}. Accuracy and tr+ in points, consistency as Spearman's rho; gold score: the gold "
        f"answer's cloze score (its log-likelihood {per}, --cloze-norm {norm}) for cloze, its letter's "
        "log-probability for letters, in nats; 'others': mean change over the other languages."
    )


class NeuronsReport(ReportPart):
    schema = NeuronsSummary

    def sections(self, folder: ResultFolder, columns: Sequence[Column] = ()) -> list[Any]:
        n = folder.summaries.get("neurons")
        if not n:
            return []
        tables = _tables(n)
        path = neurons_figure(n["per_layer"], n["n_layers"], folder.path / FIGURES["neurons"], folder.title)
        out: list[Any] = [tables[0], Figure("neurons", path, CAPTIONS["neurons"])]
        if n["effects"]:
            ablation = ablation_figure(n, folder.path / FIGURES["ablation"], folder.title)
            out += [*tables[1:], Figure("ablation", ablation, CAPTIONS["ablation"])]
        return out


PART = NeuronsReport()
