"""The run report: Tables 1-2 and Figs. 1-5 of every model x dataset folder, in one HTML file.

``report.html`` is self-contained (figures are base64 ``data:`` URIs, styles are inline, there is
no script and no external resource), so it can be mailed, archived or opened offline years later.
``report.md`` holds the same tables and links the PNGs written next to each folder's data.

A *result folder* is any folder holding a stage summary (``summary.json``, ``lens_summary.json``,
``pca_summary.json``, ``steer_summary.json``); a report root is one such folder or a run root with
``<model>/<dataset>/`` result folders below it. Everything is read from those files alone.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from crosslens import __version__, figures
from crosslens.stages import STAGES
from crosslens.store import Store, atomic_write_text

__all__ = [
    "Table",
    "ResultFolder",
    "find_results",
    "tables",
    "folder_tables",
    "write_report",
    "SUMMARY_FILES",
]

SUMMARY_FILES = tuple(d.summary for d in STAGES)
EXPERIMENT_FILE = "experiment.json"
FIGURE_FILES = {
    "fig1": "fig1_transfer.png",
    "fig2": "fig2_lens.png",
    "fig2_tuned": "fig2_lens_tuned.png",
    "fidelity": "fig10_lens_fidelity.png",
    "fig3": "fig3_pca.png",
    "fig4": "fig4_gamma_sweep.png",
    "fig5": "fig5_steer_change.png",
    "cka": "fig6_cka.png",
    "cka_matrix": "fig7_cka_matrix.png",
    "neurons": "fig8_neurons.png",
    "ablation": "fig9_ablation.png",
}


# -- formatting -------------------------------------------------------------------------------------
def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _pct(x: float | None) -> str:
    return "–" if _missing(x) else f"{100 * x:.1f}"


def _rate(x: float | None) -> str:
    """Table 1 style: .381 (three decimals, no leading zero)."""
    if _missing(x):
        return "–"
    s = f"{x:.3f}"
    return s.replace("0.", ".", 1) if abs(x) < 1 else s


def _signed(x: float | None, digits: int = 3) -> str:
    return "–" if _missing(x) else f"{x:+.{digits}f}"


def _ci(low: float | None, high: float | None, scale: float = 100.0, digits: int = 1) -> str:
    if _missing(low) or _missing(high):
        return "–"
    return f"[{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def _corr(cell: Mapping[str, Any] | None) -> str:
    """Table 2 style: Pearson's r with significance stars, its 95 % CI and the number of languages
    it rests on (−0.62*** [−0.90, −0.05], n = 9)."""
    if not cell or _missing(cell.get("r")):
        return "–"
    text = f"{cell['r']:.2f}" + cell.get("stars", "")
    if not _missing(cell.get("ci_low")):
        text += f" [{cell['ci_low']:.2f}, {cell['ci_high']:.2f}]"
    return (text + f", n = {cell['n']}").replace("-", "−")


# -- tables -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Table:
    """A small table rendered both as Markdown and as HTML (with optional grouped column headers)."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    groups: list[tuple[str, int]] = field(default_factory=list)  # (group label, columns spanned)
    note: str = ""
    css: str = ""  # HTML class, e.g. "kv" for left-aligned key/value tables

    def markdown(self) -> str:
        def esc(s: str) -> str:
            return str(s).replace("|", "\\|").replace("\n", " ")

        columns = self.columns
        if self.groups:  # Markdown has no spanning headers: prefix each column with its group
            labels = [g for g, span in self.groups for _ in range(span)]
            columns = [f"{g} {c}".strip() for g, c in zip(labels, columns, strict=True)]
        lines = [
            f"**{esc(self.title)}**",
            "",
            "| " + " | ".join(esc(c) for c in columns) + " |",
            "|" + "|".join("---" for _ in columns) + "|",
        ]
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in self.rows]
        if self.note:
            lines += ["", f"_{esc(self.note)}_"]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        e = html.escape
        cls = f' class="{e(self.css)}"' if self.css else ""
        # The title sits above the table, not in a <caption>: a long caption would widen a narrow table.
        parts = [f'<p class="caption">{e(self.title)}</p><table{cls} aria-label="{e(self.title)}"><thead>']
        if self.groups:
            parts.append(
                "<tr>"
                + "".join(
                    f'<th colspan="{span}" class="group">{e(g)}</th>' if span > 1 else f"<th>{e(g)}</th>"
                    for g, span in self.groups
                )
                + "</tr>"
            )
        parts.append("<tr>" + "".join(f"<th>{e(c)}</th>" for c in self.columns) + "</tr></thead><tbody>")
        parts += ["<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in self.rows]
        parts.append("</tbody></table>")
        if self.note:
            parts.append(f'<p class="note">{e(self.note)}</p>')
        return "".join(parts)


# -- result folders -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResultFolder:
    """The summaries of one model x dataset output folder (None where a stage did not run)."""

    path: Path
    rel: str
    model: str
    dataset: str
    run: dict[str, Any]
    summaries: dict[str, dict[str, Any] | None]  # stage key -> its summary (None: did not run here)

    @property
    def summary(self) -> dict[str, Any] | None:
        return self.summaries.get("eval")

    @property
    def lens(self) -> dict[str, Any] | None:
        return self.summaries.get("lens")

    @property
    def tuned_lens(self) -> dict[str, Any] | None:
        return self.summaries.get("tuned_lens")

    @property
    def pca(self) -> dict[str, Any] | None:
        return self.summaries.get("pca")

    @property
    def similarity(self) -> dict[str, Any] | None:
        return self.summaries.get("similarity")

    @property
    def neurons(self) -> dict[str, Any] | None:
        return self.summaries.get("neurons")

    @property
    def steer(self) -> dict[str, Any] | None:
        return self.summaries.get("steer")

    @classmethod
    def read(cls, path: Path, root: Path) -> ResultFolder:
        def load(name: str) -> Any:
            p = path / name
            return json.loads(p.read_text()) if p.is_file() else None

        run = load("run.json") or {}
        stages = run.get("stages", {})
        rel = path.relative_to(root).as_posix()
        parts = [] if rel == "." else rel.split("/")
        model = next(
            (s["model"]["spec"] for s in stages.values() if isinstance(s.get("model"), dict)),
            parts[-2] if len(parts) >= 2 else path.name,
        )
        summaries = {d.key: load(d.summary) for d in STAGES}
        summary = summaries["eval"]
        dataset = next(
            (s["fingerprint"]["dataset"] for s in stages.values() if "dataset" in s.get("fingerprint", {})),
            (summary or {}).get("dataset") or (parts[-1] if parts else path.name),
        )
        return cls(path, rel, model, dataset, run, summaries)

    @property
    def anchor(self) -> str:
        """A unique HTML id (from the folder's relative path)."""
        return "r-" + "".join(c if c.isalnum() else "-" for c in self.rel)

    def stage(self, name: str) -> dict[str, Any]:
        """One run.json stage entry (records, lens, steer), empty when that stage did not run here."""
        return self.run.get("stages", {}).get(name, {})

    def commands(self) -> list[str]:
        cmds = [s.get("command") for s in self.run.get("stages", {}).values()]
        return list(dict.fromkeys(c for c in cmds if c))


def find_results(root: str | Path) -> list[ResultFolder]:
    """Every result folder at or below ``root``, sorted by path."""
    root = Path(root)
    folders = {p.parent for name in SUMMARY_FILES for p in root.rglob(name)}
    return [ResultFolder.read(p, root) for p in sorted(folders)]


def _norm_mark(summary: dict) -> str:
    """`` (byte)`` etc. after a cloze accuracy not normalised per character (the default)."""
    norm = summary.get("cloze_norm", "char")
    return "" if norm == "char" else f" ({norm})"


def _tag_table(s: dict) -> Table:
    """Table 1 per item tag (Global-MMLU: culturally sensitive CS / agnostic CA)."""
    rows = []
    for tag, t in s["by_tag"].items():
        cloze = list(((t.get("cloze") or {}).get("accuracy") or {}).values())
        rows.append([
            tag, str(t["n_items"]), f"{_pct(t.get('accuracy_mean'))} ± {_pct(t.get('accuracy_std'))}",
            _pct(sum(cloze) / len(cloze)) if cloze else "–", _rate(t["consistency"]["mean"]),
            _rate(t["tr_plus"]["mean"]), _rate(t["tr_minus"]["mean"]),
            _rate((t.get("cloze") or {}).get("consistency", {}).get("mean")),
        ])  # fmt: skip
    return Table(
        "By tag (Table 1 over each tag's items)",
        ["tag", "items", "acc. (%)", f"cloze acc. (%){_norm_mark(s)}", "cons.", "tr+", "tr−", "cloze cons."],
        rows,
        note="Global-MMLU: CS = culturally sensitive, CA = culturally agnostic (the annotated subset).",
    )


def tables(results: Sequence[ResultFolder]) -> dict[str, Table]:
    """Table 1 (accuracy, consistency, transfer, cloze accuracy) and Table 2 (log-ratio correlations).

    Rows are models, column groups datasets, as in the paper; a missing combination shows '–'.
    """
    twice = Counter((r.model, r.dataset) for r in results)

    def row_label(r: ResultFolder) -> str:  # the same model and dataset in two folders: name the folder
        return r.model if twice[(r.model, r.dataset)] == 1 else f"{r.model} ({r.rel})"

    models = list(dict.fromkeys(row_label(r) for r in results))
    datasets = list(dict.fromkeys(r.dataset for r in results))
    by = {(row_label(r), r.dataset): r for r in results}

    t1_cols = ["acc.", "cloze acc.", "cons.", "tr+", "tr−"]
    t1_rows = []
    for m in models:
        row = [m]
        for d in datasets:
            s = by[(m, d)].summary if (m, d) in by else None
            if not s:
                row += ["–"] * len(t1_cols)
                continue
            cloze = list((s.get("cloze_accuracy") or {}).values())
            row += [
                f"{_pct(s.get('accuracy_mean'))} ± {_pct(s.get('accuracy_std'))}",
                _pct(sum(cloze) / len(cloze)) + _norm_mark(s) if cloze else "–",
                _rate(s["consistency"]["mean"]),
                _rate(s["tr_plus"]["mean"]),
                _rate(s["tr_minus"]["mean"]),
            ]
        t1_rows.append(row)
    table1 = Table(
        "Table 1. Mean accuracy (%, ± std across languages), cloze accuracy, consistency, positive and "
        "negative transfer (means over ordered language pairs)",
        ["model"] + t1_cols * len(datasets),
        t1_rows,
        [("", 1)] + [(d, len(t1_cols)) for d in datasets],
        "acc.: letter choice at the final layer; cloze acc.: full-answer log-likelihood per character "
        "(lm-eval's acc_norm), or as marked: (byte) per UTF-8 byte, (token) per token, (pmi) minus the "
        "answer's log-likelihood after an empty prompt, (none) the total.",
    )

    t2_cols = ["acc.", "cons.", "→tr+"]
    t2_rows = []
    lenses = [("lens", "")] + (
        [("tuned_lens", " · tuned lens")] if any(r.tuned_lens for r in by.values()) else []
    )
    for m in models:
        for key, suffix in lenses:
            row = [m + suffix]
            for d in datasets:
                t2 = (by[(m, d)].summaries.get(key) or {}).get("table2") if (m, d) in by else None
                row += [_corr((t2 or {}).get(k)) for k in ("acc", "cons", "tr_plus_in")]
            t2_rows.append(row)
    table2 = Table(
        "Table 2. Pearson's r between a language's mean log p(native)/p(English) and its accuracy, "
        "consistency and incoming positive transfer",
        ["model"] + t2_cols * len(datasets),
        t2_rows,
        [("", 1)] + [(d, len(t2_cols)) for d in datasets],
        "* p < .05, ** p < .01, *** p < .001; correlations are across the non-English languages.",
    )
    return {"table1": table1, "table2": table2}


def _lens_table(summary: dict[str, Any], name: str) -> Table:
    """One lens's readings per layer; a tuned lens adds its validation KL and the logit lens's."""
    acc, kl = summary["latent_accuracy"], summary.get("val_kl") or {}
    rows = []
    for layer in summary["layers"]:
        lr = summary["log_ratio"][str(layer)]
        rows.append(
            [
                str(layer),
                _signed(lr["mean"]),
                _ci(lr["ci_low"], lr["ci_high"], 1.0, 3),
                *(_pct(acc[f][str(layer)]["mean"]) for f in ("native", "en", "label")),
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


def _kl(kl: dict[str, Any], name: str, layer: Any) -> str:
    value = (kl.get(name) or {}).get(str(layer))
    return "–" if value is None else f"{value:.3f}"


def folder_tables(r: ResultFolder) -> dict[str, Table]:
    """The per-folder tables: run metadata, per-language results, lens, PCA alignment, steering."""
    out = {"meta": _meta_table(r)}
    s = r.summary
    if s:
        boot = (s.get("bootstrap") or {}).get("accuracy", {})
        cloze = s.get("cloze_accuracy") or {}
        cons, trp = s.get("consistency_with_pivot") or {}, s.get("tr_plus_from_pivot") or {}
        ratio = (r.lens or {}).get("mean_log_ratio", {})
        tuned = (r.tuned_lens or {}).get("mean_log_ratio")
        rows = [
            [
                lang,
                _pct(s["accuracy"].get(lang)),
                _ci(*(boot.get(lang) or (None, None))),
                _pct(cloze.get(lang)),
                _rate(cons.get(lang)),
                _rate(trp.get(lang)),
                _rate(s.get("mean_consistency", {}).get(lang)),
                _rate(s.get("incoming_tr_plus", {}).get(lang)),
                _signed(ratio.get(lang)),
                *([_signed(tuned.get(lang))] if tuned is not None else []),
            ]
            for lang in s["languages"]
        ]
        pivot = s.get("pivot") or "pivot"
        out["languages"] = Table(
            f"Per-language results ({s.get('n_items', '?')} items per language)",
            [
                "language",
                "acc. (%)",
                "95 % CI",
                f"cloze acc. (%){_norm_mark(s)}",
                f"cons. with {pivot}",
                f"tr+ from {pivot}",
                "mean cons.",
                "→tr+",
                "mean log ratio",
                *(["mean log ratio (tuned)"] if tuned is not None else []),
            ],
            rows,
            note="95 % CI: item bootstrap; mean cons. and →tr+: over the other languages; "
            "log ratio from the logit lens" + (" and from the tuned lens." if tuned is not None else "."),
        )
        if s.get("by_tag"):
            out["tags"] = _tag_table(s)
    if r.lens:
        out["lens"] = _lens_table(r.lens, "Logit lens")
    if r.tuned_lens:
        out["lens_tuned"] = _lens_table(r.tuned_lens, "Tuned lens")
    if r.similarity:
        out |= _similarity_tables(r.similarity)
    if r.neurons:
        out |= _neuron_tables(r.neurons)
    if r.steer:
        out["steer"] = _steer_table(r.steer)
    return out


def _holm_count(setting: Mapping[str, Any], prefix: str = "") -> str:
    """``2/9``: languages of a steering setting whose change survives Holm (– for γ = 0)."""
    key = f"{prefix}n_significant_holm"
    if setting["gamma"] == 0 or key not in setting:
        return "–"
    return f"{setting[key]}/{len(setting['per_language'])}"


def _against_controls(setting: Mapping[str, Any], key: str, scale: float, digits: int) -> str:
    """``+1.2 vs 0.3 ± 0.8 (p .20)``: the mean effect, the random controls' mean ± sd, the empirical p."""
    c = setting.get("controls", {}).get(key)
    if not c or _missing(c.get("null_mean")):
        return "–"
    sd = "" if _missing(c.get("null_std")) else f" ± {scale * c['null_std']:.{digits}f}"
    return f"{scale * c['null_mean']:+.{digits}f}{sd} (p {c['p_empirical']:.2f})"


def _steer_table(steer: Mapping[str, Any]) -> Table:
    """Steering per setting: letters and (where scored) cloze effects, Holm survivors, controls."""
    forms = [("", "letters")] + ([("cloze_", "cloze")] if "cloze" in steer.get("forms", []) else [])
    controls = any("controls" in st for st in steer["settings"])
    columns = ["layer", "γ", "positions"]
    for _, name in forms:
        columns += [f"{name} acc. (%)", "Δ acc. (points)", "Δ cons. with en", "Δ tr+ from en", "sig. (Holm)"]
        columns += ["controls: Δ acc." ] if controls else []  # fmt: skip
    rows = []
    for st in steer["settings"]:
        row = [str(st["layer"]), f"{st['gamma']:+g}", st.get("positions", "last")]
        for prefix, _ in forms:
            delta = st[f"delta_{prefix}accuracy"]["mean"]
            row += [
                _pct(st[f"{prefix}accuracy"]["mean"]),
                _signed(None if _missing(delta) else 100 * delta, 1),
                _signed(st[f"delta_{prefix}consistency_en"]["mean"]),
                _signed(st[f"delta_{prefix}tr_plus_from_en"]["mean"]),
                _holm_count(st, prefix),
            ]
            row += [_against_controls(st, f"{prefix}accuracy", 100.0, 1)] if controls else []
        rows.append(row)
    note = (
        "sig. (Holm): steered languages whose accuracy changed against γ = 0 (exact McNemar test, "
        "Holm-adjusted over the whole grid, p < .05); per-language paired CIs are in steer_summary.json."
    )
    if controls:
        note += (
            " controls: the change random directions of each vector's norm cause (mean ± sd over "
            "controls) and the empirical p of the real change against them."
        )
    return Table("Steering: means over steered languages; changes against γ = 0", columns, rows, note=note)


def _estimate(x: float | None, low: float | None, high: float | None, digits: int, sign: str = "") -> str:
    """``0.42 [0.31, 0.55]``; n/a where the estimate is undefined (e.g. states that do not vary)."""
    if _missing(x):
        return "n/a"
    return f"{x:{sign}.{digits}f} {_ci(low, high, 1.0, digits)}"


def _similarity_tables(sim: Mapping[str, Any]) -> dict[str, Table]:
    """CKA with English per layer and language, and the parallel vs non-parallel cosine per layer."""
    out: dict[str, Table] = {}
    level, pivot = round(100 * sim["level"]), sim.get("pivot")
    items = f"{sim['n_items']} items, pool = {sim['pool']}, {sim['n_boot']} bootstrap replicates"
    if pivot and sim.get("cka_with_pivot"):
        cka = sim["cka_with_pivot"]["debiased"]
        langs = list(cka)
        rows = [
            [str(layer), *(_estimate(c["cka"], c["ci_low"], c["ci_high"], 2) for c in
                           (cka[m][str(layer)] for m in langs))]
            for layer in sim["layers"]
        ]  # fmt: skip
        out["similarity"] = Table(
            f"Debiased linear CKA with {pivot} per layer [{level} % CI] ({items})",
            ["layer", *langs],
            rows,
            note="1: the items are arranged alike in both languages; 0: unrelated (the plain estimator "
            "is in the similarity/ table, biased toward 1 with few items).",
        )
    rows = []
    for layer in sim["layers"]:
        c = sim["cosine"][str(layer)]["all_pairs"]
        rows.append(
            [str(layer)]
            + [_estimate(c[k]["mean"], c[k]["ci_low"], c[k]["ci_high"], 3, "+") for k in
               ("parallel", "nonparallel", "gap")]
        )  # fmt: skip
    out["cosine"] = Table(
        f"Cosine of parallel vs non-parallel pairs, mean over language pairs [{level} % CI] ({items})",
        ["layer", "parallel", "non-parallel", "gap"],
        rows,
        note="gap > 0: the item, not the language, decides where a state lies (a shared space).",
    )
    return out


def _effect(e: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 1) -> str:
    """A paired change with its CI: ``-3.1 [-6.2, 0.0]`` (points) or ``-0.051 [...]`` (rho)."""
    if not e or _missing(e.get("delta")):
        return "–"
    return f"{scale * e['delta']:+.{digits}f} {_ci(e['ci_low'], e['ci_high'], scale, digits)}"


def _neuron_tables(n: Mapping[str, Any]) -> dict[str, Table]:
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
    out = {
        "neurons": Table(
            f"Language-specific neurons (LAPE: {sel['n_kept']} of {sel['n_neurons']} neurons kept, top rate "
            f"{sel['top_rate']}, from {n['n_text_items']} held-out items)",
            ["language", "neurons", "per layer (layer: count)", "shared with"],
            rows,
        )
    }
    pivot = n.get("pivot") or "en"
    rows = []
    for m, kinds in n["effects"].items():
        for kind, e in kinds.items():
            row = [m, kind, str(e["n_neurons"])]
            for score in ("cloze", "letters"):
                if score not in e:
                    row += ["–"] * 5
                    continue
                own = e[score][m]
                others = [v["accuracy"]["delta"] for lang, v in e[score].items() if lang != m]
                others = [x for x in others if not _missing(x)]
                row += [
                    _effect(own["accuracy"]) + f" (p {own['accuracy']['p_mcnemar']:.2g})",
                    _effect(own.get("gold_score"), 1.0, 3),
                    _effect(own.get("consistency_pivot"), 1.0, 3),
                    _effect(own.get("tr_plus_from_pivot")),
                    f"{100 * sum(others) / len(others):+.1f}" if others else "–",
                ]
            rows.append(row)
    if rows:
        cols = [
            "Δ acc (p McNemar)",
            "Δ gold score",
            f"Δ cons. w/ {pivot}",
            f"Δ tr+ from {pivot}",
            "Δ acc others",
        ]
        out["ablation"] = Table(
            f"Deactivating the neurons of one language: paired change in that language on "
            f"{n['n_eval_items']} held-out items [95 % bootstrap CI]",
            ["ablated", "neurons", "n", *(f"cloze {c}" for c in cols), *(f"letters {c}" for c in cols)],
            rows,
            note="random: as many random neurons of the same layers (the control). Accuracy and tr+ in "
            "points, consistency as Spearman's rho; gold score: the gold answer's mean log-likelihood per "
            "character (cloze) or its letter's log-probability (letters), in nats; 'others': mean change "
            "over the other languages.",
        )
    return out


def _meta_table(r: ResultFolder) -> Table:
    stages = r.run.get("stages", {})
    first = next(iter(stages.values()), {})
    rec, lens, steer = r.stage("records"), r.stage("lens"), r.stage("steer")
    model = first.get("model") or {}
    fp = first.get("fingerprint", {})
    labels = rec.get("label_tokens") or {}

    rows = [
        ("model", model.get("spec", r.model)),
        ("revision", model.get("revision", fp.get("revision"))),
        (
            "architecture",
            f"{model.get('model_type', '–')}, {model.get('n_layers', '?')} layers, "
            f"d_model {model.get('d_model', '?')}, vocab {model.get('vocab_size', '?')}"
            if model
            else None,
        ),
        ("final logit softcap", model.get("final_logit_softcap")),
        (
            "dtype / device",
            f"{model.get('dtype', fp.get('dtype', '–'))} / {model.get('device', '–')}"
            if model or fp
            else None,
        ),
        ("GGUF source", model.get("gguf")),
        ("dataset", f"{r.dataset} ({', '.join(first.get('languages') or [])})"),
        (
            "prompt template",
            f"{fp['template']} (hash {fp.get('template_hash', '–')})" if "template" in fp else None,
        ),
        (
            "answer-letter tokens",
            f"form {labels.get('form', fp.get('label_form', '–'))}: "
            f"{', '.join(repr(t) for t in labels.get('tokens', []))}"
            if labels
            else None,
        ),
        ("cloze continuation", rec.get("cloze_separator") if fp.get("cloze", True) else "not scored"),
        (
            "few-shot exemplars",
            f"{fp['fewshot']['k']} from {fp['fewshot']['source']}: {', '.join(fp['fewshot']['items'])}"
            if fp.get("fewshot")
            else None,
        ),
        ("chat template", f"applied (sha256 {fp['chat_template']})" if fp.get("chat_template") else None),
        ("system instruction", fp.get("system_instruction")),
        ("cloze normalisation", (rec.get("cloze_norm") or "char") if fp.get("cloze", True) and rec else None),
        (
            "batching",
            f"batch size {rec.get('batch_size', '–')}, padding {rec.get('padding_side', '–')}, "
            f"chunk size {rec.get('chunk_size', '–')}"
            if rec
            else None,
        ),
        (
            "evaluated items",
            f"{rec.get('n_items', '?')}; {rec.get('excluded_items', 0)} excluded" if rec else None,
        ),
        ("data source", fp.get("data_source")),
        ("lens layers", ", ".join(map(str, lens["layers"])) if "layers" in lens else None),
        (
            "PCA",
            f"{r.pca['n_items']} items, layers {', '.join(map(str, r.pca['layers']))}" if r.pca else None,
        ),
        (
            "steering",
            f"layers {steer.get('layers')}, γ {steer.get('gammas')}, vectors from "
            f"{steer.get('n_vectors')} held-out items (seed {steer.get('seed')})"
            if steer
            else None,
        ),
        (
            "seed / crosslens",
            f"{first.get('seed', '–')} / {first.get('crosslens_version', '–')}" if first else None,
        ),
    ]
    return Table(
        "Run metadata (run.json)",
        ["field", "value"],
        [[k, str(v)] for k, v in rows if v is not None],
        css="kv",
    )


# -- figures --------------------------------------------------------------------------------------------
def _chance(path: Path) -> float | None:
    """1 / number of choices, averaged over items (the dashed line of Fig. 2b)."""
    files = sorted(f for f in (path / "records").glob("*.parquet") if not f.name.startswith("."))
    if not files:
        return None
    n = pd.concat([pd.read_parquet(f, columns=["n_choices"]) for f in files])["n_choices"]
    return float((1.0 / n).mean())


def draw_figures(r: ResultFolder) -> dict[str, Path]:
    """(Re)draw every figure the folder's summaries allow; returns figure key -> PNG path."""
    title = f"{r.model} — {r.dataset}"
    out: dict[str, Path] = {}
    if r.summary:
        out["fig1"] = figures.transfer_heatmap(
            r.summary, r.path / FIGURE_FILES["fig1"], f"{title}: tr+(l1, l2)"
        )
    if r.lens:
        out["fig2"] = figures.lens_figure(
            r.lens, r.path / FIGURE_FILES["fig2"], f"{title} (logit lens)", chance=_chance(r.path)
        )
    if r.tuned_lens:
        out["fig2_tuned"] = figures.lens_figure(
            r.tuned_lens, r.path / FIGURE_FILES["fig2_tuned"], f"{title} (tuned lens)", chance=_chance(r.path)
        )
        out["fidelity"] = figures.fidelity_figure(
            r.tuned_lens, r.lens, r.path / FIGURE_FILES["fidelity"], f"{title}: tuned vs logit lens"
        )
    scripts: dict[str, str] = {}
    if r.pca:
        proj = Store(r.path).read("pca")
        proj = proj[proj["layer"].isin(r.pca["layers"])]
        out["fig3"] = figures.pca_figure(proj, r.path / FIGURE_FILES["fig3"], title)
        if "script" in proj:
            scripts = proj.drop_duplicates("language").set_index("language")["script"].to_dict()
    if r.similarity:
        table = Store(r.path).read("similarity")
        table = table[table["layer"].isin(r.similarity["layers"])]
        out["cka"] = figures.cka_figure(table, r.similarity.get("pivot"), r.path / FIGURE_FILES["cka"], title)
        out["cka_matrix"] = figures.cka_matrix_figure(
            table,
            r.similarity["matrix_layer"],
            r.similarity["languages"],
            r.path / FIGURE_FILES["cka_matrix"],
            title,
        )
    if r.neurons:
        out["neurons"] = figures.neurons_figure(
            r.neurons["per_layer"], r.neurons["n_layers"], r.path / FIGURE_FILES["neurons"], title
        )
        if r.neurons["effects"]:
            out["ablation"] = figures.ablation_figure(r.neurons, r.path / FIGURE_FILES["ablation"], title)
    if r.steer:
        out["fig4"] = figures.gamma_sweep_figure(
            r.steer, r.path / FIGURE_FILES["fig4"], f"{title}: steering sweep"
        )
        out["fig5"] = figures.steer_change_figure(
            r.steer, r.path / FIGURE_FILES["fig5"], title=title, scripts=scripts or None
        )
    return out


CAPTIONS = {
    "fig1": (
        "Fig. 1. Positive transfer tr+(l1, l2) = |F_l1 ∩ F_l2| / |F_l1| for every ordered language pair "
        "(row: source l1, column: target l2)."
    ),
    "fig2": (
        "Fig. 2. (a) Mean log ratio of latent probabilities of native vs English answers per layer "
        "(above 0: the native subspace dominates); (b) latent accuracy of native answers, English answers "
        "and answer letters, dashed line = chance. Shaded: 95 % CI across languages."
    ),
    "fig2_tuned": (
        "Fig. 2 through the tuned lens (the same readings, Eq. 7, each layer first mapped by its translator)."
    ),
    "fidelity": (
        "Tuned vs logit lens: (a) KL from the final-layer distribution per layer on the lens's held-out "
        "text (lower: the lens reads the layer more faithfully); (b) log ratio and (c) latent accuracy "
        "through each lens (solid: tuned, dashed: logit)."
    ),
    "fig3": "Fig. 3. PCA of last-token activations per layer; colour = language, ○ Latin / △ other scripts.",
    "cka": (
        "Linear CKA (debiased, left; plain, right) of each language's states with English's per layer, "
        "over the same items; shaded: bootstrap CI over items."
    ),
    "cka_matrix": "Debiased linear CKA between every pair of languages at one layer.",
    "neurons": "Language-specific neurons (LAPE) per layer, one line per language.",
    "ablation": (
        "Change in accuracy of every language when one language's specific neurons are deactivated (red) "
        "and when as many random neurons of the same layers are (grey); bars: paired bootstrap 95 % CI."
    ),
    "fig4": (
        "Fig. 4. Steering sweep: accuracy, consistency with English and tr+ from English against γ "
        "(γ > 0 pushes toward English processing). Shaded: 95 % CI across steered languages."
    ),
    "fig5": (
        "Fig. 5. Accuracy change per language under steering against its unsteered accuracy, one panel "
        "per steering layer."
    ),
}


# -- the report ------------------------------------------------------------------------------------------
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;
  padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em} h3{font-size:1.05em}
table{border-collapse:collapse;margin:0 0 1.2em;font-size:.85em}
p.caption{font-weight:600;font-size:.85em;margin:1.2em 0 .3em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child,table.kv td,table.kv th{text-align:left} th.group{text-align:center}
p.note{font-size:.8em;color:#555;margin-top:-.8em}
figure{margin:1em 0} figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#444} pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.8em}
nav li{margin:.1em 0}
"""


def _img(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _experiment(root: Path) -> dict[str, Any] | None:
    p = root / EXPERIMENT_FILE
    return json.loads(p.read_text()) if p.is_file() else None


def write_report(root: str | Path) -> Path:
    """Draw every figure and write ``report.html`` (self-contained) and ``report.md`` into ``root``."""
    root = Path(root)
    results = find_results(root)
    if not results:
        raise ValueError(
            f"{root}: no crosslens results here (none of {', '.join(SUMMARY_FILES)} in it or below)"
        )
    experiment = _experiment(root)
    main = tables(results)
    e = html.escape
    h = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>crosslens report — {e(root.name)}"
        f"</title><style>{STYLE}</style></head><body>",
        f"<h1>crosslens report: {e(root.name)}</h1>",
        f"<p>{len(results)} result folder(s); crosslens {e(__version__)}.</p>",
    ]
    md = [
        f"# crosslens report: {root.name}",
        "",
        f"{len(results)} result folder(s); crosslens {__version__}.",
        "",
    ]
    if experiment:
        cmd = experiment.get("command", "")
        config = yaml.safe_dump(
            experiment.get("config", {}), sort_keys=False, allow_unicode=True, default_flow_style=None
        )
        h.append(
            f"<h2>Experiment</h2><p>Command:</p><pre>{e(cmd)}</pre><p>Configuration:</p>"
            f"<pre>{e(config)}</pre>"
        )
        md += [
            "## Experiment",
            "",
            "```",
            cmd,
            "```",
            "",
            "```yaml",
            config.rstrip(),
            "```",
            "",
        ]
    h.append(
        "<nav><ul>"
        + "".join(f"<li><a href='#{r.anchor}'>{e(r.model)} — {e(r.dataset)}</a></li>" for r in results)
        + "</ul></nav>"
    )
    h.append("<h2>Summary tables</h2>" + main["table1"].html() + main["table2"].html())
    md += ["## Summary tables", "", main["table1"].markdown(), main["table2"].markdown()]
    for r in results:
        figs = draw_figures(r)
        ftables = folder_tables(r)
        h.append(
            f"<h2 id='{r.anchor}'>{e(r.model)} — {e(r.dataset)}</h2><p>Folder: <code>{e(r.rel)}</code></p>"
        )
        md += [f"## {r.model} — {r.dataset}", "", f"Folder: `{r.rel}`", ""]
        cmds = r.commands()
        if cmds:
            h.append("<h3>Command lines</h3><pre>" + e("\n".join(cmds)) + "</pre>")
            md += ["Command lines:", "", "```", *cmds, "```", ""]
        for tkey, fkey in (pair for d in STAGES for pair in d.report):
            if tkey in ftables:
                h.append(ftables[tkey].html())
                md.append(ftables[tkey].markdown())
            if fkey in figs:
                h.append(
                    f"<figure><img src='{_img(figs[fkey])}' alt='{e(CAPTIONS[fkey])}'>"
                    f"<figcaption>{e(CAPTIONS[fkey])}</figcaption></figure>"
                )
                md += [
                    f"![{CAPTIONS[fkey]}]({figs[fkey].relative_to(root).as_posix()})",
                    "",
                    f"_{CAPTIONS[fkey]}_",
                    "",
                ]
    h.append("</body></html>")
    atomic_write_text(root / "report.md", "\n".join(md) + "\n")
    path = root / "report.html"
    atomic_write_text(path, "\n".join(h) + "\n")
    return path
