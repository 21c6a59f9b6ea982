"""The word tasks' part of the report: the tokenizer's filter, P(target) vs P(English) per layer (pooled
over targets), where each target's curves turn, the curves per task and target, and the
latent-language plot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator
from pydantic import model_validator

from crosslens.files import Schema, require
from crosslens.render.figures import at, band, grid, new_figure, save
from crosslens.render.tables import Table, missing
from crosslens.stages.reporting import Column, Estimate, Figure, ReportPart, ResultFolder, Summary
from crosslens.stages.words import FIGURES
from crosslens.stages.words.compute import ALL, FROM_ENGLISH
from crosslens.stages.words.config import ENGLISH

__all__ = ["PART", "WordsSummary", "curves_figure", "latent_figure", "targets_of", "group_title"]


class WordEstimate(Estimate):
    """A mean over concepts, its bootstrap CI and the number of concepts."""

    n: int


class WordCell(Schema):
    """One (task, group, lens, layer): the word probabilities, the language masses and the entropy."""

    p_target: WordEstimate
    p_english: WordEstimate
    mass_target: WordEstimate
    mass_english: WordEstimate
    entropy: WordEstimate


class Landmarks(Schema):
    """Where one curve turns (:func:`crosslens.stages.words.compute.landmarks`)."""

    english_peak_layer: int
    english_peak: float
    target_at_english_peak: float
    target_takes_over: int | None
    final_target: float
    final_english: float


class WordListInfo(Schema):
    """The word list read: its name, file, hash and size."""

    name: str
    source: str
    sha256: str
    concepts: int


class Screened(Schema):
    """One target's filter: concepts screened, kept, and the dropped ones by reason."""

    concepts: int
    kept: int
    dropped: dict[str, list[str]]


class LensTitle(Schema):
    title: str


class WordsSummary(Summary):
    """``words_summary.json``: what the filter, per-layer and landmark tables, both figures and the
    metadata lines read."""

    word_list: WordListInfo
    tasks: list[str]
    targets: list[str]
    pairs: list[str]
    layers: list[int]
    lenses: dict[str, LensTitle]
    shots: dict[str, int]
    level: float
    filter: dict[str, Screened]
    reasons: dict[str, str]
    curves: dict[str, dict[str, dict[str, dict[str, WordCell]]]]  # task -> group -> lens -> layer
    landmarks: dict[str, dict[str, dict[str, Landmarks]]]  # task -> group -> lens

    @model_validator(mode="after")
    def _every_curve(self) -> WordsSummary:
        """Every curve at every layer and of a lens the summary names; the landmarks of every curve
        group, of lenses it names."""
        for task, by_group in self.curves.items():
            require(self.landmarks, [task], "landmarks")
            require(self.landmarks[task], by_group, f"landmarks.{task}")
            for group, by_lens in by_group.items():
                require(self.lenses, [*by_lens, *self.landmarks[task][group]], "lenses")
                for lens, curve in by_lens.items():
                    require(curve, self.layers, f"curves.{task}.{group}.{lens}")
        return self


COLORS = {
    "p_target": "tab:orange",
    "p_english": "tab:blue",
    "mass_target": "tab:red",
    "mass_english": "tab:cyan",
}
LABELS = {
    "p_target": "P(target word)",
    "p_english": "P(English word)",
    "mass_target": "mass on target-language tokens",
    "mass_english": "mass on English tokens",
}
STYLES = ("-", "--", ":", "-.")  # one per lens
CAPTIONS = {
    "curves": (
        "Word tasks (Wendler et al. 2024): P(target word) and P(English word) at the last prompt position "
        "per layer, mean over concepts (translation: over the non-English sources too; translation from "
        "English, whose prompt holds the English word, in a panel of its own); one panel per task and "
        "target, one line style per lens; shaded: 95 % bootstrap CI over concepts."
    ),
    "latent": (
        "Latent language in the word tasks, every non-English target and source pooled: the word "
        "probabilities, the "
        "next-token mass on English and on target-language tokens (token -> language table), and the "
        "entropy (right axis, nats); one panel per task and lens."
    ),
}


def _stats(curve: Mapping[str, Any], layers: Sequence[int], metric: str) -> list[Mapping[str, Any]]:
    return [at(curve, layer)[metric] for layer in layers]


def targets_of(summary: Mapping[str, Any], task: str) -> list[str]:
    """The groups of ``task`` in run order: each target, ``all`` where it pools more than one target,
    then translation from English (apart: its prompt holds the English word)."""
    by_target = summary["curves"].get(task, {})
    own = [t for t in summary["targets"] if t in by_target]
    pooled = [ALL] if ALL in by_target and len([t for t in own if t != ENGLISH]) > 1 else []
    return own + pooled + ([FROM_ENGLISH] if FROM_ENGLISH in by_target else [])


def group_label(group: str) -> str:
    """A curve group in a table's target column."""
    return {ALL: "all", FROM_ENGLISH: "from en"}.get(group, group)


def group_title(task: str, group: str) -> str:
    """A curve group as figures and tables name it."""
    if group == ALL:
        return f"{task} → all but en"
    if group == FROM_ENGLISH:
        return f"{task} from en (copying)"
    return f"{task} → {group}"


def curves_figure(summary: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """P(target) vs P(English) per layer: a panel per (task, target), a line style per lens."""
    layers = [int(x) for x in summary["layers"]]
    panels = [(task, target) for task in summary["tasks"] for target in targets_of(summary, task)]
    cols = min(len(panels), 5)
    fig = new_figure(2.9 * cols + 0.6, 2.5 * -(-len(panels) // cols) + 0.6)
    axes = grid(fig, len(panels), cols)  # each panel its own scale: copying from English reaches 0.8
    lenses = list(summary["lenses"])
    for ax, (task, target) in zip(axes, panels):
        for lens, style in zip(lenses, STYLES):
            curve = summary["curves"][task][target].get(lens)
            if curve is None:
                continue
            suffix = f" ({summary['lenses'][lens]['title']})" if len(lenses) > 1 else ""
            for metric in ("p_target", "p_english"):
                band(ax, layers, _stats(curve, layers, metric), 1.0, COLORS[metric], LABELS[metric] + suffix,
                     linestyle=style)  # fmt: skip
        n = at(next(iter(summary["curves"][task][target].values())), layers[-1])["p_target"]["n"]
        ax.set_title(f"{group_title(task, target)} (n = {n})", fontsize=8)
        ax.set_xlabel("layer", fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("probability")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8, ncol=min(4, len(labels)))
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


def latent_figure(summary: Mapping[str, Any], path: str | Path, title: str | None = None) -> Path:
    """Every non-English target pooled, one panel per (task, lens): the word probabilities, the mass on
    English and target-language tokens, the entropy on a second axis."""
    layers = [int(x) for x in summary["layers"]]
    panels = [
        (task, lens) for task in summary["tasks"] for lens in summary["curves"].get(task, {}).get(ALL, {})
    ]
    fig = new_figure(max(6.4, 4.4 * len(panels) + 0.4), 3.8)
    axes = grid(fig, max(1, len(panels)), max(1, len(panels)), sharey=True)
    for ax, (task, lens) in zip(axes, panels):
        curve = summary["curves"][task][ALL][lens]
        for metric in ("p_target", "p_english", "mass_target", "mass_english"):
            stats = _stats(curve, layers, metric)
            if all(missing(s["mean"]) for s in stats):
                continue
            band(ax, layers, stats, 1.0, COLORS[metric], LABELS[metric],
                 linestyle="-" if metric.startswith("p_") else "--")  # fmt: skip
        twin = ax.twinx()
        entropy = [s["mean"] for s in _stats(curve, layers, "entropy")]
        twin.plot(layers, entropy, color="0.5", linewidth=1, label="entropy (nats, right axis)")
        twin.set_ylim(bottom=0)
        twin.set_ylabel("entropy (nats)", fontsize=8, color="0.4")
        ax.set_title(f"{task}, {summary['lenses'][lens]['title']}", fontsize=9)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if panels:
        axes[0].set_ylim(bottom=0)  # once all panels are drawn: their shared scale fits every one
        axes[0].set_ylabel("probability / mass")
        handles, labels = axes[0].get_legend_handles_labels()
        extra, extra_labels = twin.get_legend_handles_labels()
        ncol = min(5, 2 * len(panels) + 1)
        fig.legend(handles + extra, labels + extra_labels, loc="outside lower center", fontsize=8, ncol=ncol)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


def _cell(cell: Mapping[str, Any]) -> str:
    if missing(cell.get("mean")):
        return "–"
    if missing(cell.get("ci_low")):
        return f"{cell['mean']:.3f}"
    return f"{cell['mean']:.3f} [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}]"


def filter_table(s: Mapping[str, Any]) -> Table:
    reasons = list(s["reasons"])
    rows = [
        [t, str(c["concepts"]), str(c["kept"]), *(str(len(c["dropped"].get(r, []))) for r in reasons)]
        for t, c in s["filter"].items()
    ]
    return Table(
        f"Word tasks: concepts of {s['word_list']['name']} kept per target language "
        "(Wendler et al.'s filter)",
        ["target", "screened", "kept", *(f"dropped: {s['reasons'][r]}" for r in reasons)],
        rows,
        note="A concept is kept when its target word's first tokens (forms, capitalised, with and without a "
        "leading space) share none with its English word's and none is the unknown token.",
    )


def layer_table(s: Mapping[str, Any], task: str) -> Table | None:
    pooled = s["curves"][task].get(ALL)
    if not pooled:
        return None
    lenses = list(pooled)
    level = round(100 * s["level"])
    columns = ["layer"]
    groups: list[tuple[str, int]] = [("", 1)]
    for lens in lenses:
        columns += ["P(target)", "P(English)", "mass target", "mass English", "entropy"]
        groups.append((s["lenses"][lens]["title"], 5))
    rows = []
    for layer in s["layers"]:
        row = [str(layer)]
        for lens in lenses:
            c = at(pooled[lens], layer)
            row += [_cell(c["p_target"]), _cell(c["p_english"]),
                    *("–" if missing(c[m]["mean"]) else f"{c[m]['mean']:.3f}"
                      for m in ("mass_target", "mass_english", "entropy"))]  # fmt: skip
        rows.append(row)
    return Table(
        f"Word task {task}: per layer, mean over concepts, every non-English target pooled [{level} % CI]",
        columns,
        rows,
        groups=groups if len(lenses) > 1 else [],
        note="P(word): next-token probability of the word's first tokens; mass: of all tokens of that "
        "language (token -> language table; – where the table cannot identify the target language).",
    )


def landmark_table(s: Mapping[str, Any], task: str) -> Table:
    rows = []
    for target in targets_of(s, task):
        for lens, m in s["landmarks"][task][target].items():
            rows.append([
                group_label(target), s["lenses"][lens]["title"],
                f"{m['english_peak']:.3f} (layer {m['english_peak_layer']})",
                f"{m['target_at_english_peak']:.3f}",
                "–" if m["target_takes_over"] is None else str(m["target_takes_over"]),
                f"{m['final_target']:.3f}", f"{m['final_english']:.3f}",
            ])  # fmt: skip
    return Table(
        f"Word task {task}: where P(target) and P(English) turn, per target (mean over concepts)",
        [
            "target",
            "lens",
            "peak P(English) before the last layer",
            "P(target) there",
            "P(target) > P(English) from layer",
            "final P(target)",
            "final P(English)",
        ],  # fmt: skip
        rows,
    )


class WordsReport(ReportPart):
    schema = WordsSummary

    def meta_rows(self, folder: ResultFolder) -> list[tuple[str, Any]]:
        s = folder.summaries.get("words")
        if not s:
            return []
        w = s["word_list"]
        shots = ", ".join(f"{t} {k}" for t, k in s["shots"].items())
        return [
            (
                "word list",
                f"{w['name']} ({w['concepts']} concepts, sha256 {w['sha256'][:16]}; {w['source']})",
            ),
            ("word tasks", f"{', '.join(s['tasks'])}; {len(s['pairs'])} pairs; exemplars: {shots}"),
        ]

    def columns(self, folder: ResultFolder) -> list[Column]:
        s = folder.summaries.get("words")
        if not s:
            return []
        return [("word concepts kept", {t: str(c["kept"]) for t, c in s["filter"].items()})]

    def sections(self, folder: ResultFolder, columns: Sequence[Column] = ()) -> list[Table | Figure]:
        s = folder.summaries.get("words")
        if not s or not s["curves"]:
            return []
        out: list[Table | Figure] = [filter_table(s)]
        for task in (t for t in s["tasks"] if t in s["curves"]):
            table = layer_table(s, task)
            out += [*([table] if table else []), landmark_table(s, task)]
        out.append(
            Figure(
                "words", curves_figure(s, folder.path / FIGURES["curves"], folder.title), CAPTIONS["curves"]
            )
        )
        if any(ALL in by_target for by_target in s["curves"].values()):
            latent = latent_figure(s, folder.path / FIGURES["latent"], folder.title)
            out.append(Figure("words_latent", latent, CAPTIONS["latent"]))
        return out


PART = WordsReport()
