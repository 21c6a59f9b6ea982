"""The lens's part of the report: Table 2 across folders (one row per model and lens), each lens's
readings per layer, its mean log ratio per language, Fig. 2 per lens, and the tuned-vs-logit fidelity
figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import model_validator

from crosslens.files import Schema, require
from crosslens.lenses.kinds import lens_kinds
from crosslens.render.figures import at, band, new_figure, save
from crosslens.render.tables import Table, ci, corr, pct, signed
from crosslens.scoring.records import chance_level
from crosslens.stages.lens import lens_table, stage_key
from crosslens.stages.reporting import Column, Estimate, Figure, ReportPart, ResultFolder, Summary, model_grid

__all__ = ["LensReport", "LensSummary", "lens_figure", "fidelity_figure"]

PerLayer = dict[str, Estimate]  # layer -> estimate across languages


class LatentAccuracy(Schema):
    native: PerLayer
    en: PerLayer
    label: PerLayer


class Correlation(Schema):
    """A Table 2 cell: Pearson's r, its stars and CI, and the number of languages."""

    r: float | None
    stars: str = ""
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None


class Table2(Schema):
    acc: Correlation | None = None
    cons: Correlation | None = None
    tr_plus_in: Correlation | None = None


class LensSummary(Summary):
    """``lens_summary.json`` (and each lens kind's): what Table 2, the per-layer table, Fig. 2 and the
    fidelity figure read."""

    layers: list[int]
    log_ratio: PerLayer
    latent_accuracy: LatentAccuracy
    val_kl: dict[str, dict[str, float | None]] | None = None
    mean_log_ratio: dict[str, float | None] = {}
    table2: Table2 | None = None

    @model_validator(mode="after")
    def _every_layer(self) -> LensSummary:
        require(self.log_ratio, self.layers, "log_ratio")
        for form in ("native", "en", "label"):
            require(getattr(self.latent_accuracy, form), self.layers, f"latent_accuracy.{form}")
        return self


FORM_LABELS = {"native": "native answers", "en": "English answers", "label": "letters (A/B/C/D)"}
FORM_COLORS = {"native": "tab:orange", "en": "tab:blue", "label": "tab:gray"}
FIG2 = (
    "Fig. 2. (a) Mean log ratio of latent probabilities of native vs English answers per layer "
    "(above 0: the native subspace dominates); (b) latent accuracy of native answers, English answers "
    "and answer letters, dashed line = chance. Shaded: 95 % CI across languages."
)
FIDELITY = (
    "Tuned vs logit lens: (a) KL from the final-layer distribution per layer on the lens's held-out "
    "text (lower: the lens reads the layer more faithfully); (b) log ratio and (c) latent accuracy "
    "through each lens (solid: tuned, dashed: logit)."
)


def lens_figure(
    lens_summary: Mapping[str, Any], path: str | Path, title: str | None = None, chance: float | None = 0.25
) -> Path:
    """Fig. 2: (a) mean log p(native)/p(English) per layer, (b) latent accuracy per layer and form.

    Bands are 95 % CIs across languages; (a) marks zero (above: the native subspace dominates),
    (b) marks ``chance`` (1 / number of choices) with a dashed line.
    """
    layers = [int(x) for x in lens_summary["layers"]]
    fig = new_figure(10.0, 3.8)
    ax_a, ax_b = fig.subplots(1, 2)
    ratio = [at(lens_summary["log_ratio"], layer) for layer in layers]
    band(ax_a, layers, ratio, 1.0, "tab:purple", "mean over languages")
    ax_a.axhline(0.0, color="black", linewidth=0.8)
    ax_a.set_xlabel("layer")
    ax_a.set_ylabel("log p(native) / p(English)")
    ax_a.set_title("(a) log ratio of latent answer probabilities", fontsize=10)
    ax_a.legend(fontsize=8, loc="best")
    for form in ("native", "en", "label"):
        stats = [at(lens_summary["latent_accuracy"][form], layer) for layer in layers]
        band(ax_b, layers, stats, 100.0, FORM_COLORS[form], FORM_LABELS[form])
    if chance is not None:
        ax_b.axhline(
            100 * chance, color="black", linestyle="--", linewidth=0.9, label=f"chance ({100 * chance:.0f} %)"
        )
    ax_b.set_xlabel("layer")
    ax_b.set_ylabel("latent accuracy (%)")
    ax_b.set_title("(b) accuracy in the latent space", fontsize=10)
    ax_b.legend(fontsize=8, loc="best")
    for ax in (ax_a, ax_b):
        ax.set_xticks(layers)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, path)


def fidelity_figure(
    tuned: Mapping[str, Any], logit: Mapping[str, Any] | None, path: str | Path, title: str | None = None
) -> Path:
    """The two lenses side by side: (a) validation KL(final || lens) per layer (the tuned-lens paper's
    fidelity plot, from the lens's held-out text), (b) log ratio and (c) latent accuracy of native
    answers per layer through each lens (solid: tuned, dashed: logit; bands: 95 % CI across languages)."""
    fig = new_figure(14.0, 3.8)
    ax_a, ax_b, ax_c = fig.subplots(1, 3)
    kl = tuned.get("val_kl") or {}
    for name, style in (("tuned", "-"), ("logit", "--")):
        per = kl.get(name) or {}
        xs = sorted(int(k) for k in per)
        ax_a.plot(xs, [per[str(x)] for x in xs], style, marker="o", color="black", label=f"{name} lens")
    ax_a.set_yscale("log")
    ax_a.set_ylabel("KL(final || lens), nats/token")
    ax_a.set_title("(a) fidelity on held-out text", fontsize=10)
    for summary, style, name in ((tuned, "-", "tuned"), (logit, "--", "logit")):
        if not summary:
            continue
        layers = [int(x) for x in summary["layers"]]
        ratio = [at(summary["log_ratio"], layer) for layer in layers]
        band(ax_b, layers, ratio, 1.0, "tab:purple", f"{name} lens", linestyle=style)
        for form in ("native", "en"):
            stats = [at(summary["latent_accuracy"][form], layer) for layer in layers]
            band(
                ax_c, layers, stats, 100.0, FORM_COLORS[form], f"{FORM_LABELS[form]}, {name}", linestyle=style
            )
    ax_b.axhline(0.0, color="black", linewidth=0.8)
    ax_b.set_ylabel("log p(native) / p(English)")
    ax_b.set_title("(b) log ratio through each lens", fontsize=10)
    ax_c.set_ylabel("latent accuracy (%)")
    ax_c.set_title("(c) latent accuracy through each lens", fontsize=10)
    for ax in (ax_a, ax_b, ax_c):
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, path)


def _kl(kl: Mapping[str, Any], name: str, layer: Any) -> str:
    value = (kl.get(name) or {}).get(str(layer))
    return "–" if value is None else f"{value:.3f}"


def _layer_table(summary: Mapping[str, Any], name: str) -> Table:
    """One lens's readings per layer; a tuned lens adds its validation KL and the logit lens's."""
    acc, kl = summary["latent_accuracy"], summary.get("val_kl") or {}
    rows = []
    for layer in summary["layers"]:
        lr = summary["log_ratio"][str(layer)]
        rows.append(
            [
                str(layer),
                signed(lr["mean"]),
                ci(lr["ci_low"], lr["ci_high"], 1.0, 3),
                *(pct(acc[f][str(layer)]["mean"]) for f in ("native", "en", "label")),
                *([_kl(kl, k, layer) for k in ("tuned", "logit")] if kl else []),
            ]
        )
    cols = ["layer", "log p(nat.)/p(en)", "95 % CI", "acc. native (%)", "acc. en (%)", "acc. label (%)"]
    return Table(
        f"{name} per layer (means across languages)",
        cols + (["val. KL tuned", "val. KL logit"] if kl else []),
        rows,
        note="val. KL: KL(final || lens) in nats per token on the lens's held-out text (– at the last "
        "layer, which every lens reads as is)."
        if kl
        else "",
    )


class LensReport(ReportPart):
    """The part of one lens kind's readings (the logit lens's part also writes Table 2 for all kinds)."""

    schema = LensSummary

    def __init__(self, kind: str):
        self.kind = kind
        self.key = stage_key(kind)
        self.title = lens_kinds()[kind].title if kind in lens_kinds() else f"{kind} lens"

    def summary_tables(self, folders: Sequence[ResultFolder]) -> list[Table]:
        if self.kind != "logit":
            return []
        models, datasets, by = model_grid(folders)
        keys = [
            (stage_key(k), "" if k == "logit" else f" · {lens_kinds()[k].title.lower()}")
            for k in lens_kinds()
        ]
        keys = [
            (key, suffix)
            for key, suffix in keys
            if key == "lens" or any(r.summaries.get(key) for r in folders)
        ]
        cols = ["acc.", "cons.", "→tr+"]
        rows = []
        for m in models:
            for key, suffix in keys:
                row = [m + suffix]
                for d in datasets:
                    t2 = (by[(m, d)].summaries.get(key) or {}).get("table2") if (m, d) in by else None
                    row += [corr((t2 or {}).get(k)) for k in ("acc", "cons", "tr_plus_in")]
                rows.append(row)
        return [
            Table(
                "Table 2. Pearson's r between a language's mean log p(native)/p(English) and its accuracy, "
                "consistency and incoming positive transfer",
                ["model"] + cols * len(datasets),
                rows,
                [("", 1)] + [(d, len(cols)) for d in datasets],
                "* p < .05, ** p < .01, *** p < .001; correlations are across the non-English languages.",
            )
        ]

    def meta_rows(self, folder: ResultFolder) -> list[tuple[str, Any]]:
        entry = folder.stage(lens_table(self.kind))
        if self.kind != "logit" or "layers" not in entry:
            return []
        return [("lens layers", ", ".join(map(str, entry["layers"])))]

    def columns(self, folder: ResultFolder) -> list[Column]:
        s = folder.summaries.get(self.key)
        if not s:
            return []
        header = "mean log ratio" if self.kind == "logit" else f"mean log ratio ({self.kind})"
        return [(header, {lang: signed(v) for lang, v in s.get("mean_log_ratio", {}).items()})]

    def sections(self, folder: ResultFolder, columns: Sequence[Column] = ()) -> list[Table | Figure]:
        s = folder.summaries.get(self.key)
        if not s:
            return []
        name = f"fig2_{lens_table(self.kind)}.png" if self.kind != "logit" else "fig2_lens.png"
        title = f"{folder.title} ({self.title.lower()})"
        fig2 = lens_figure(s, folder.path / name, title, chance=chance_level(folder.path))
        caption = (
            FIG2
            if self.kind == "logit"
            else f"Fig. 2 through the {self.title.lower()} (the same readings, Eq. 7)."
        )
        out: list[Table | Figure] = [_layer_table(s, self.title), Figure(f"fig2_{self.kind}", fig2, caption)]
        if s.get("val_kl"):
            path = fidelity_figure(s, folder.summaries.get("lens"), folder.path / "fig10_lens_fidelity.png",
                                   f"{folder.title}: {self.title.lower()} vs logit lens")  # fmt: skip
            out.append(Figure("fidelity", path, FIDELITY))
        return out
