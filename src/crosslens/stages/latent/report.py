"""The latent stage's part of the report: the "thinking language" curves (English, native, other and
none mass per layer, per prompt language and lens), a per-layer table per lens, the token table's
coverage and each language's peak English mass."""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from matplotlib.ticker import MaxNLocator
from pydantic import model_validator

from crosslens.files import Schema, require
from crosslens.render.figures import at, band, grid, new_figure, save
from crosslens.render.tables import Table, missing, pct
from crosslens.stages.latent import FIGURE
from crosslens.stages.reporting import Column, Estimate, Figure, ReportPart, ResultFolder, Summary

__all__ = ["PART", "LatentSummary", "latent_figure"]

Group = Literal["last", "answer"]  # the position groups of the curves (GROUPS)


class LatentCell(Schema):
    """One (lens, prompt language, layer): the shares of the distribution and its entropy."""

    en: Estimate
    native: Estimate
    other: Estimate
    none: Estimate
    entropy: Estimate
    native_elsewhere: Estimate


class TokenTable(Schema):
    """The token -> language table the masses were read with, and how much of the mass it assigns."""

    method: str
    wordfreq: str
    vocab_size: int
    vocab_share: float
    assigned_mass: dict[str, dict[str, float]]  # lens -> layer -> share


class LatentSummary(Summary):
    """``latent_summary.json``: what the curves, the per-layer tables, the peak column and the metadata
    line read."""

    lenses: list[str]
    languages: list[str]
    layers: list[int]
    native: dict[str, str | None]
    unidentified: list[str]
    table: TokenTable
    curves: dict[Group, dict[str, dict[str, dict[str, LatentCell]]]]  # group -> lens -> language -> layer

    @model_validator(mode="after")
    def _every_curve(self) -> LatentSummary:
        """Each lens's curves in every group, each at every layer; the table's share at every layer."""
        require(self.curves, ["last"] if self.lenses else [], "curves")
        for group, by_lens in self.curves.items():
            require(by_lens, self.lenses, f"curves.{group}")
            for lens, by_language in by_lens.items():
                for lang, cells in by_language.items():
                    require(cells, self.layers, f"curves.{group}.{lens}.{lang}")
        for lens, shares in self.table.assigned_mass.items():
            require(shares, self.layers, f"table.assigned_mass.{lens}")
        return self


STYLE = {  # share -> (colour, legend label)
    "en": ("tab:blue", "English"),
    "native": ("tab:orange", "prompt's language"),
    "other": ("tab:green", "other languages"),
    "none": ("0.55", "no language"),
}
CONTROL = "prompt's language, from the\nother languages' prompts"
GROUPS = {"last": "the last prompt token", "answer": "the gold answer's tokens (mean per item)"}
CAPTION = (
    "Latent language: the lens's next-token probability mass on English tokens, on tokens of the "
    "prompt's own language, of other languages and of no identifiable language, per layer, at {where}; "
    "dashed: the mass on the prompt's language when the same items are read in the other languages (a "
    "lens that decodes every prompt to words of one language gives it mass for any prompt); shaded: "
    "95 % CI over items. Token languages come from word frequencies and scripts (docs/latent.md)."
)


def latent_figure(
    summary: Mapping[str, Any], path: str | Path, title: str | None = None, group: str = "last"
) -> Path:
    """One panel per prompt language (and lens): English, native, other and none mass per layer."""
    curves = summary["curves"][group]
    lenses = [k for k in summary["lenses"] if k in curves]
    languages = list(summary["languages"])
    layers = [int(x) for x in summary["layers"]]
    panels = list(itertools.product(lenses, languages))
    cols = min(5, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = new_figure(2.5 * cols + 1.8, 2.1 * rows + (0.5 if title else 0.2))
    axes = grid(fig, len(panels), cols, sharey=True)
    handles: dict[str, Any] = {}
    for ax, (lens, lang) in zip(axes, panels, strict=True):
        cells = curves[lens].get(lang)
        if cells is None:
            ax.set_visible(False)
            continue
        english = summary["native"].get(lang) == "en"
        for share, (color, label) in STYLE.items():
            if share == "native" and english:
                continue  # the same readings as English
            band(ax, layers, [at(cells, layer)[share] for layer in layers], 100.0, color, label)
        if not english:
            control = [at(cells, layer)["native_elsewhere"] for layer in layers]
            band(ax, layers, control, 100.0, STYLE["native"][0], CONTROL, linestyle="--")
        for line, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, line)
        native = "" if summary["native"].get(lang) else " (native: unidentified)"
        ax.set_title(f"{lang} prompts{native}" + (f", {lens} lens" if len(lenses) > 1 else ""), fontsize=9)
        ax.set_ylim(0, 100)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[::cols]:
        ax.set_ylabel("mass (%)")
    for ax in axes[-cols:]:
        ax.set_xlabel("layer")
    order = [label for _, label in STYLE.values() if label in handles] + [CONTROL] * (CONTROL in handles)
    fig.legend([handles[k] for k in order], order, loc="outside right center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return save(fig, path)


def _cell(cells: Mapping[str, Any] | None, layer: int, share: str) -> float | None:
    if cells is None:
        return None
    value = at(cells, layer)[share]["mean"]
    return None if missing(value) else value


def _layer_table(s: Mapping[str, Any], lens: str, group: str) -> Table:
    """Per layer: each prompt language's English / native mass (%), the entropy and the table's share."""
    curves = s["curves"][group][lens]
    langs = [lang for lang in s["languages"] if lang in curves]
    assigned = s["table"]["assigned_mass"].get(lens, {}) if group == "last" else {}
    rows = []
    for layer in s["layers"]:
        cells = []
        for lang in langs:
            en, nat = _cell(curves[lang], layer, "en"), _cell(curves[lang], layer, "native")
            control = _cell(curves[lang], layer, "native_elsewhere")
            english = s["native"].get(lang) == "en"
            cells.append(pct(en) if english else f"{pct(en)} / {pct(nat)} ({pct(control)})")
        entropy = [_cell(curves[lang], layer, "entropy") for lang in langs]
        entropy = [e for e in entropy if e is not None]
        mean_h = f"{sum(entropy) / len(entropy):.2f}" if entropy else "–"
        rows.append([str(layer), *cells, mean_h, pct(at(assigned, layer)) if assigned else "–"])
    return Table(
        f"Latent language per layer ({lens} lens, {GROUPS[group]}): English / native mass (%)",
        ["layer", *langs, "entropy (nats)", "assigned (%)"],
        rows,
        note="Means over items; in parentheses: the mass on the same language when the items are read in "
        "the other languages (native mass above it is the prompt's own); entropy: mean over languages; "
        "assigned: the share of the distributions' mass on tokens the table gives a language (the rest "
        "is 'none'). English prompts: one number.",
    )


class LatentReport(ReportPart):
    schema = LatentSummary

    def meta_rows(self, folder: ResultFolder) -> list[tuple[str, Any]]:
        s = folder.summaries.get("latent")
        if not s:
            return []
        t = s["table"]
        rows: list[tuple[str, Any]] = [
            (
                "token-language table",
                f"{t['method']} (wordfreq {t['wordfreq']}): {100 * t['vocab_share']:.1f} % of "
                f"{t['vocab_size']} tokens assigned a language",
            )
        ]
        if s["unidentified"]:
            rows.append(
                ("latent: no token table for", ", ".join(s["unidentified"]) + " (native mass missing)")
            )
        return rows

    def columns(self, folder: ResultFolder) -> list[Column]:
        s = folder.summaries.get("latent")
        if not s or not s["lenses"]:
            return []
        curves = s["curves"]["last"][s["lenses"][0]]
        cells = {}
        for lang, by_layer in curves.items():
            peak = max(s["layers"], key=lambda layer: _cell(by_layer, layer, "en") or -1.0)
            cells[lang] = f"{pct(_cell(by_layer, peak, 'en'))} (layer {peak})"
        return [("peak English mass, % (latent)", cells)]

    def sections(self, folder: ResultFolder, columns: Sequence[Column] = ()) -> list[Table | Figure]:
        s = folder.summaries.get("latent")
        if not s:
            return []
        out: list[Table | Figure] = []
        for group in s["curves"]:
            name = FIGURE if group == "last" else FIGURE.replace(".png", f"_{group}.png")
            path = latent_figure(s, folder.path / name, folder.title, group)
            out.append(Figure(f"latent_{group}", path, CAPTION.format(where=GROUPS[group])))
            out += [_layer_table(s, lens, group) for lens in s["lenses"]]
        return out


PART = LatentReport()
