"""The evaluation's part of the report: Table 1 across folders, each folder's per-language table
(with the columns other stages add, e.g. the lens's mean log ratio), Table 1 per item tag, and Fig. 1."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import matplotlib
import numpy as np
from pydantic import Field, model_validator

from crosslens.files import Schema, require
from crosslens.render.figures import new_figure, save
from crosslens.render.tables import Table, ci, pct, rate
from crosslens.stages.reporting import Column, Figure, PairMean, ReportPart, ResultFolder, Summary, model_grid

__all__ = ["PART", "EvalSummary", "transfer_heatmap"]

Rates = dict[str, float | None]  # language -> a rate (null where undefined)


class ClozeTag(Schema):
    accuracy: dict[str, float] = {}
    consistency: PairMean = PairMean(mean=None)


class TagSummary(Schema):
    """Table 1 over one tag's items."""

    n_items: int
    accuracy_mean: float | None = None
    accuracy_std: float | None = None
    cloze: ClozeTag | None = None
    consistency: PairMean
    tr_plus: PairMean
    tr_minus: PairMean


class Bootstrap(Schema):
    """Item-bootstrap CIs: per language, the accuracy's [low, high]."""

    accuracy: dict[str, Annotated[list[float | None], Field(min_length=2, max_length=2)] | None] = {}


class EvalSummary(Summary):
    """``summary.json``: what Table 1, the per-language table, the tag table and Fig. 1 read."""

    dataset: str | None = None
    languages: list[str]
    n_items: int | None = None
    pivot: str | None = None
    accuracy: Rates
    accuracy_mean: float | None = None
    accuracy_std: float | None = None
    cloze_accuracy: dict[str, float] | None = None
    cloze_norm: str = "char"
    consistency: PairMean
    tr_plus: PairMean
    tr_minus: PairMean
    bootstrap: Bootstrap | None = None
    consistency_with_pivot: Rates | None = None
    tr_plus_from_pivot: Rates | None = None
    mean_consistency: Rates = {}
    incoming_tr_plus: Rates = {}
    pairwise: dict[str, dict[str, Rates]]
    by_tag: dict[str, TagSummary] | None = None

    @model_validator(mode="after")
    def _every_pair(self) -> EvalSummary:
        """Fig. 1 reads tr+ for every ordered pair of languages."""
        require(self.pairwise, ["tr_plus"], "pairwise")
        for a in self.languages:
            require(self.pairwise["tr_plus"], [a], "pairwise.tr_plus")
            require(self.pairwise["tr_plus"][a], self.languages, f"pairwise.tr_plus.{a}")
        return self


FIG1 = "fig1_transfer.png"
CAPTION = (
    "Fig. 1. Positive transfer tr+(l1, l2) = |F_l1 ∩ F_l2| / |F_l1| for every ordered language pair "
    "(row: source l1, column: target l2)."
)


def norm_mark(summary: Mapping[str, Any]) -> str:
    """`` (byte)`` etc. after a cloze accuracy not normalised per character (the default)."""
    norm = summary.get("cloze_norm", "char")
    return "" if norm == "char" else f" ({norm})"


def transfer_heatmap(
    summary: Mapping[str, Any], path: str | Path, title: str | None = None, metric: str = "tr_plus"
) -> Path:
    """Fig. 1: the directed pairwise matrix ``metric`` (default tr+) of an evaluation ``summary.json``.

    Row = source language l1, column = target l2, cell = tr+(l1, l2); the trivial diagonal is greyed.
    """
    langs = list(summary["languages"])
    table = summary["pairwise"][metric]
    m = np.array(
        [[np.nan if table[a][b] is None else table[a][b] for b in langs] for a in langs], dtype=float
    )
    np.fill_diagonal(m, np.nan)
    n = len(langs)
    side = max(4.0, 0.45 * n + 2.0)
    fig = new_figure(side + 1.2, side)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="#dddddd")
    vmin = -1.0 if metric == "consistency" else 0.0
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, vmin=vmin, vmax=1.0)
    ax.set_xticks(range(n), langs, rotation=90 if n > 12 else 0)
    ax.set_yticks(range(n), langs)
    ax.set_xlabel("target language $l_2$")
    ax.set_ylabel("source language $l_1$")
    if n <= 16:
        for i in range(n):
            for j in range(n):
                if not np.isnan(m[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{m[i, j]:.2f}".replace("0.", ".", 1),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if m[i, j] < vmin + 0.6 * (1 - vmin) else "black",
                    )
    names = {"tr_plus": "tr$^+(l_1, l_2)$", "tr_minus": "tr$^-(l_1, l_2)$", "consistency": "consistency"}
    fig.colorbar(im, ax=ax, shrink=0.8, label=names.get(metric, metric))
    ax.set_title(title or f"{summary.get('dataset', '')}: pairwise {names.get(metric, metric)}", fontsize=10)
    return save(fig, path)


def _tag_table(s: Mapping[str, Any]) -> Table:
    """Table 1 per item tag (Global-MMLU: culturally sensitive CS / agnostic CA)."""
    rows = []
    for tag, t in s["by_tag"].items():
        cloze = list(((t.get("cloze") or {}).get("accuracy") or {}).values())
        rows.append([
            tag, str(t["n_items"]), f"{pct(t.get('accuracy_mean'))} ± {pct(t.get('accuracy_std'))}",
            pct(sum(cloze) / len(cloze)) if cloze else "–", rate(t["consistency"]["mean"]),
            rate(t["tr_plus"]["mean"]), rate(t["tr_minus"]["mean"]),
            rate((t.get("cloze") or {}).get("consistency", {}).get("mean")),
        ])  # fmt: skip
    return Table(
        "By tag (Table 1 over each tag's items)",
        ["tag", "items", "acc. (%)", f"cloze acc. (%){norm_mark(s)}", "cons.", "tr+", "tr−", "cloze cons."],
        rows,
        note="Global-MMLU: CS = culturally sensitive, CA = culturally agnostic (the annotated subset).",
    )


class EvalReport(ReportPart):
    schema = EvalSummary

    def summary_tables(self, folders: Sequence[ResultFolder]) -> list[Table]:
        """Table 1: rows are models, column groups datasets, as in the paper; '–' where missing."""
        models, datasets, by = model_grid(folders)
        cols = ["acc.", "cloze acc.", "cons.", "tr+", "tr−"]
        rows = []
        for m in models:
            row = [m]
            for d in datasets:
                s = by[(m, d)].summaries.get("eval") if (m, d) in by else None
                if not s:
                    row += ["–"] * len(cols)
                    continue
                cloze = list((s.get("cloze_accuracy") or {}).values())
                row += [
                    f"{pct(s.get('accuracy_mean'))} ± {pct(s.get('accuracy_std'))}",
                    pct(sum(cloze) / len(cloze)) + norm_mark(s) if cloze else "–",
                    rate(s["consistency"]["mean"]),
                    rate(s["tr_plus"]["mean"]),
                    rate(s["tr_minus"]["mean"]),
                ]
            rows.append(row)
        return [
            Table(
                "Table 1. Mean accuracy (%, ± std across languages), cloze accuracy, consistency, "
                "positive and "
                "negative transfer (means over ordered language pairs)",
                ["model"] + cols * len(datasets),
                rows,
                [("", 1)] + [(d, len(cols)) for d in datasets],
                "acc.: letter choice at the final layer; cloze acc.: full-answer log-likelihood per "
                "character (lm-eval's acc_norm), or as marked: (byte) per UTF-8 byte, (token) per token, "
                "(pmi) minus the answer's log-likelihood after an empty prompt, (none) the total.",
            )
        ]

    def meta_rows(self, folder: ResultFolder) -> list[tuple[str, Any]]:
        rec = folder.stage("records")
        if not rec:
            return []
        fp = rec.get("fingerprint", {})
        labels = rec.get("label_tokens") or {}
        return [
            (
                "answer-letter tokens",
                f"form {labels.get('form', fp.get('label_form', '–'))}: "
                f"{', '.join(repr(t) for t in labels.get('tokens', []))}"
                if labels
                else None,
            ),
            ("cloze continuation", rec.get("cloze_separator") if fp.get("cloze", True) else "not scored"),
            ("cloze normalisation", (rec.get("cloze_norm") or "char") if fp.get("cloze", True) else None),
            (
                "batching",
                f"batch size {rec.get('batch_size', '–')}, padding {rec.get('padding_side', '–')}, "
                f"chunk size {rec.get('chunk_size', '–')}",
            ),
            ("evaluated items", f"{rec.get('n_items', '?')}; {rec.get('excluded_items', 0)} excluded"),
        ]

    def sections(self, folder: ResultFolder, columns: Sequence[Column] = ()) -> list[Table | Figure]:
        s = folder.summaries.get("eval")
        if not s:
            return []
        boot = (s.get("bootstrap") or {}).get("accuracy", {})
        cloze = s.get("cloze_accuracy") or {}
        cons, trp = s.get("consistency_with_pivot") or {}, s.get("tr_plus_from_pivot") or {}
        rows = [
            [
                lang,
                pct(s["accuracy"].get(lang)),
                ci(*(boot.get(lang) or (None, None))),
                pct(cloze.get(lang)),
                rate(cons.get(lang)),
                rate(trp.get(lang)),
                rate(s.get("mean_consistency", {}).get(lang)),
                rate(s.get("incoming_tr_plus", {}).get(lang)),
                *(cells.get(lang, "–") for _, cells in columns),
            ]
            for lang in s["languages"]
        ]
        pivot = s.get("pivot") or "pivot"
        header = ["language", "acc. (%)", "95 % CI", f"cloze acc. (%){norm_mark(s)}", f"cons. with {pivot}",
                  f"tr+ from {pivot}", "mean cons.", "→tr+", *(name for name, _ in columns)]  # fmt: skip
        languages = Table(
            f"Per-language results ({s.get('n_items', '?')} items per language)",
            header,
            rows,
            note="95 % CI: item bootstrap; mean cons. and →tr+: over the other languages.",
        )
        fig1 = transfer_heatmap(s, folder.path / FIG1, f"{folder.title}: tr+(l1, l2)")
        return [languages, Figure("fig1", fig1, CAPTION), *([_tag_table(s)] if s.get("by_tag") else [])]


PART = EvalReport()
