"""Multilingual lens readings (paper §2.2, §4.2, Fig. 2, Table 2), through any lens.

For a native prompt q and an answer text w = x_t..x_T, the latent probability at layer l is
Eq. 7 normalised by length: exp(mean_k log softmax(lens(h_l at the position before x_k))[x_k]).
Each choice is read twice — in the prompt's language (``native``) and as the same item's English
choice (``en``), both after the *native* prompt — and the label distribution (``label``: A/B/C/D
read through the lens at the last prompt token) is kept beside them.

Aggregation choices (documented in docs/lens.md):

* per-language values are means over items; "across languages" means the mean over non-pivot
  languages with a t-based 95 % CI (the pivot's log ratio is 0 by construction and is left out);
* Table 2 uses each language's log ratio averaged over all lens layers and items.

Each lens writes its own readings: the logit lens into ``lens/`` (``lens_summary.json``), the tuned
lens into ``lens_tuned/`` (``lens_tuned_summary.json``, with the lens's validation KL for the
fidelity figure). The lens kind and the lens file's hash are part of the stage's fingerprint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import logsumexp

from crosslens.data.prompts import Prompter
from crosslens.data.schema import ParallelDataset
from crosslens.lenses.kinds import LensError, load_lens, parse_lens
from crosslens.lenses.lens import Lens, TunedLens
from crosslens.lenses.options import TrainOptions
from crosslens.lenses.training import TrainSettings
from crosslens.models.anatomy import paper_layers
from crosslens.models.loading import LoadedModel
from crosslens.options import check_seed
from crosslens.scoring import metrics
from crosslens.scoring.answers import label_fields
from crosslens.scoring.choices import LabelPlan, encode_continuation, prompt_label_plan, score_prompts
from crosslens.scoring.options import EvalOptions
from crosslens.scoring.records import RECORDS
from crosslens.stages.api import runner
from crosslens.stages.base import Stage, Unit, plan_units
from crosslens.stages.context import JobContext
from crosslens.stages.fingerprints import data_fingerprint
from crosslens.stages.lens import LENS, lens_table
from crosslens.stages.lens.config import LensConfig
from crosslens.stages.lens.corpus import train_corpus
from crosslens.stages.prompting import build_prompter, held_out
from crosslens.store import Store

__all__ = [
    "LensStage",
    "TunedLensStage",
    "lens_stage",
    "run_lens",
    "summarize_lens",
    "lens_rank_records",
    "build_for",
    "train_corpus",
]

FORMS = ("native", "en", "label")


@dataclass(kw_only=True)
class LensStage(Stage):
    """Lens records of one dataset: native, English and label scores read at every lens layer."""

    lm: LoadedModel
    prompter: Prompter
    plan: LabelPlan
    opts: EvalOptions
    languages: list[str]
    lens: Lens | None

    def digest(self, language: str, item_id: str) -> str:
        """A lens row reads the item's English answers too: both items' content counts."""
        own = self.ds.item(language, item_id).digest
        return f"{own}+{self.ds.item(self.ds.pivot, item_id).digest}" if language != self.ds.pivot else own

    def rows(self, unit: Unit) -> pd.DataFrame:
        tok, ds, opts, layers = self.lm.tokenizer, self.ds, self.opts, list(unit.settings)
        items = [ds.item(unit.language, i) for i in unit.item_ids]
        prompter = self.prompter
        prompts = [prompter.text(it) for it in items]
        pids = [prompter.ids(p) for p in prompts]
        conts = [
            [
                encode_continuation(tok, p, pid, c, prompter.answer_sep, not prompter.chat)[0]
                for c in (*it.choices, *ds.english_choices(it.item_id))
            ]
            for it, p, pid in zip(items, prompts, pids)
        ]
        labels = [self.plan.for_n(len(it.choices)) for it in items]
        rows: list[dict[str, Any]] = []
        for i, sc in score_prompts(
            self.lm, pids, layers, labels, conts, opts.batch_size, opts.padding_side, opts.max_elements,
            self.lens,
        ):  # fmt: skip
            it = items[i]
            sc.check(f"item {it.item_id!r} ({it.language})")
            n = len(it.choices)
            base = {"dataset": ds.name, "language": it.language, "item_id": it.item_id, "gold": it.gold}
            for layer in layers:
                texts = sc.text_logprobs[layer]
                for form, chunk in (("native", texts[:n]), ("en", texts[n:])):
                    rows += [
                        base
                        | {
                            "layer": layer,
                            "form": form,
                            "choice": j,
                            "logprob": float(x.mean()),
                            "n_tokens": len(x),
                        }
                        for j, x in enumerate(chunk)
                    ]
                rows += [
                    base | {"layer": layer, "form": "label", "choice": j, "logprob": float(x), "n_tokens": 1}
                    for j, x in enumerate(sc.label_logprobs[layer])
                ]
        return pd.DataFrame(rows)

    def _use(self, lens: Lens) -> None:
        """Read through ``lens``: its model, layers and training text checked, its identity fingerprinted."""
        if lens.anatomy.unembed_weight is not self.lm.anatomy.unembed_weight:
            raise LensError(f"the {lens.name} lens was built for another loaded model than {self.lm.spec}")
        lens.check_layers(self.selected_settings())
        _check_disjoint(lens, self.ds, self.selected_items())
        self.lens = lens
        self.fingerprint = self.fingerprint | {"lens": lens.fingerprint()}

    def summarize(self) -> dict[str, Any]:
        extra = {}
        if isinstance(self.lens, TunedLens):
            extra = {"val_kl": self.lens.info.val_kl, "lens_sha256": self.lens.sha256}
        return summarize_lens(
            self.store, self.ds.pivot, self.languages, lens=self.read(), table=self.table, extra=extra
        )


@dataclass(kw_only=True)
class TunedLensStage(LensStage):
    """The lens stage through a tuned lens that the run trains first (``lens: {train: ...}``).

    Training is the stage's once-per-stage work: resumable, and reused when finished with the same
    settings; the readings' fingerprint (the lens file's hash) is known once it is done.
    """

    folder: Path
    train: Callable[[], TunedLens]

    def check(self) -> Any:
        if self.lens is None:
            if self.store.has_rows(self.table):
                raise LensError(
                    f"{self.store.root} holds tuned-lens readings but {self.folder} holds no finished lens "
                    "they were read with; delete both to start again"
                )
            return {}
        return super().check()

    def begin(self) -> Any:
        if self.lens is None:
            self._use(self.train())
        return super().begin()

    def write(self, unit: Unit, done: Any = None) -> None:
        self._trained()
        super().write(unit, done)

    def summarize(self) -> dict[str, Any]:
        self._trained()
        return super().summarize()

    def _trained(self) -> None:
        """A Ray worker may have planned this stage before another one trained the lens: load it."""
        if self.lens is None:
            self._use(load_lens(parse_lens(f"tuned:{self.folder}"), self.lm))


def _check_disjoint(lens: Lens, ds: ParallelDataset, item_ids: Sequence[str]) -> None:
    """Refuse to read a tuned lens on items whose text it was trained on."""
    if not isinstance(lens, TunedLens):
        return
    corpus = lens.info.training.get("corpus") or {}
    if corpus.get("source") != "dataset" or corpus.get("dataset") != ds.name:
        return
    seen = set(corpus.get("item_ids", [])) & set(item_ids)
    if seen:
        raise LensError(
            f"the tuned lens was trained on the text of {len(seen)} of the items it would read "
            f"(e.g. {sorted(seen)[0]!r} of {ds.name}); train it on other items or text"
        )


def lens_stage(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    languages: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    opts: EvalOptions = EvalOptions(),
    seed: int = 0,
    lens: Lens | str = "logit",
    shots_from: ParallelDataset | None = None,
) -> LensStage:
    """The readings of ``lens`` (a :class:`Lens` or ``logit`` / ``tuned:PATH``) of ``lm`` on ``ds``
    into ``out``, planned but not run (``shots_from``: see :func:`~crosslens.evaluate.eval_stage`)."""
    check_seed(seed)
    lens = load_lens(lens, lm) if isinstance(lens, str) else lens
    stage = _plan(lm, ds, out, languages, layers, opts, seed, lens.kind, shots_from)
    stage._use(lens)
    return stage


def _plan(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    languages: Sequence[str] | None,
    layers: Sequence[int] | None,
    opts: EvalOptions,
    seed: int,
    kind: str,
    shots_from: ParallelDataset | None = None,
    **train: Any,
) -> LensStage:
    """A lens stage without its lens yet (``train``: the :class:`TunedLensStage` fields)."""
    if ds.pivot is None:
        raise ValueError(
            f"dataset '{ds.name}' has no English pivot: the lens compares native and English answers"
        )
    languages = list(languages or ds.languages)
    layers = lm.anatomy.check_layers(layers if layers is not None else paper_layers(lm.anatomy.n_layers))
    prompter = build_prompter(lm, ds, languages, opts, seed, shots_from)
    plan = prompt_label_plan(prompter, max(5, ds.max_choices()))
    missing_pivot = [i for i in ds.item_ids() if ds.english_choices(i) is None]
    meta = {
        "model": lm.describe(),
        "languages": languages,
        "layers": layers,
        "seed": seed,
        "skipped_no_pivot": len(missing_pivot),
    }
    return (TunedLensStage if train else LensStage)(
        ds=ds,
        table=lens_table(kind),
        store=Store(out),
        fingerprint=data_fingerprint(lm, ds, prompter.template)
        | prompter.fingerprint()
        | {"label_form": plan.form},
        meta=meta,
        units=plan_units(
            ds,
            languages,
            opts.chunk_size,
            exclude=missing_pivot + held_out(prompter, shots_from),
            settings=layers,
        ),
        setting_columns=("layer",),
        lm=lm,
        prompter=prompter,
        plan=plan,
        opts=opts,
        languages=languages,
        lens=None,
        **train,
    )


TUNED_FOLDER = "tuned_lens"  # where an experiment trains a model x dataset's own tuned lens


def build_for(ctx: JobContext, kind: str) -> LensStage:
    """The readings through lens ``kind`` of one model x dataset (the registry's builder): the lens
    its ``lenses`` entry names, or a tuned lens the run trains into ``<folder>/tuned_lens``."""
    from crosslens.lenses.training import train_lens

    section = ctx.section
    assert isinstance(section, LensConfig)
    entry = section.spec(kind)
    assert entry is not None, f"the lens section does not read through {kind!r}"
    layers, ds, opts = ctx.read_layers(), ctx.data, ctx.eval_options()
    if kind != "tuned" or section.train is None:
        lens = load_lens(entry, ctx.lm)
        return lens_stage(ctx.lm, ds, ctx.out, ds.languages, layers, opts, ctx.seed, lens, ctx.shots)
    train = section.train
    folder = ctx.out / TUNED_FOLDER
    fields = {k: getattr(train, k) for k in TrainOptions.model_fields}
    settings = TrainSettings(
        **fields, layers=tuple(ell for ell in layers if ell < ctx.lm.anatomy.n_layers), seed=ctx.seed
    )

    def run_training() -> TunedLens:
        return train_lens(ctx.lm, train_corpus(train, ctx), folder, settings)

    stage = _plan(ctx.lm, ds, ctx.out, ds.languages, layers, opts, ctx.seed, "tuned", ctx.shots,
                  folder=folder, train=run_training)  # fmt: skip
    if (folder / "lens.json").is_file():  # finished: reused if trained as configured, else refused
        stage._use(run_training())
    return stage


#: Compute a lens's records for every (language, item, layer) and summarise: :func:`lens_stage`'s
#: arguments, and ``progress``.
run_lens = runner(lens_stage, "run_lens")


def lens_rank_records(lens: pd.DataFrame) -> pd.DataFrame:
    """One row per (layer, form, language, item) with ranks/pred/correct from lens scores.

    Same columns as evaluation records, so the metrics of Eqs. 1-6 apply unchanged.
    """
    lens = lens.sort_values(["layer", "form", "language", "item_id", "choice"])
    rows = []
    for (layer, form, lang, item), g in lens.groupby(["layer", "form", "language", "item_id"], sort=False):
        gold = int(g["gold"].iat[0])
        rows.append(
            {
                "layer": layer,
                "form": form,
                "language": lang,
                "item_id": item,
                "gold": gold,
                **label_fields(g["logprob"].tolist(), gold),
            }
        )
    return pd.DataFrame(rows)


def summarize_lens(
    store: Store,
    pivot: str | None,
    languages: Sequence[str] | None = None,
    lens: pd.DataFrame | None = None,
    table: str = LENS,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Latent accuracy, log ratios, latent consistency/transfer and Table 2; writes ``<table>_summary.json``.

    ``lens``: the rows to summarise (default: every row of the folder's ``table``); ``extra``: more
    keys for the summary (a tuned lens's validation KL).
    """
    lens = store.read(table) if lens is None else lens
    if lens.empty:
        raise ValueError(f"{store.root} has no lens records")
    if languages:
        lens = lens[lens["language"].isin(languages)]
    ranked = lens_rank_records(lens)
    if pivot not in set(ranked["language"]):
        pivot = None  # English not among the lens languages: no English-anchored transfer views
    non_pivot = sorted(set(ranked["language"]) - {pivot})
    layers = sorted(ranked["layer"].unique().tolist())

    acc = ranked.groupby(["form", "layer", "language"])["correct"].mean()
    latent_accuracy = {
        form: {int(layer): _across(acc.loc[form, layer], non_pivot) for layer in layers} for form in FORMS
    }
    # log sum_j p(native j) - log sum_j p(en j), per item, with p the length-normalised probability.
    texts = lens[lens["form"] != "label"]
    mass = texts.groupby(["layer", "language", "item_id", "form"])["logprob"].apply(
        lambda s: logsumexp(s.to_numpy())
    )
    mass = mass.unstack("form")
    ratio_items = (mass["native"] - mass["en"]).rename("log_ratio").reset_index()
    per_lang = ratio_items.groupby(["layer", "language"])["log_ratio"].mean()
    log_ratio = {int(layer): _across(per_lang.loc[layer], non_pivot) for layer in layers}
    latent_transfer = {}
    for (form, layer), g in ranked.groupby(["form", "layer"]):
        s = metrics.summarize(g, pivot=pivot, n_boot=0)
        latent_transfer.setdefault(form, {})[int(layer)] = {
            k: s[k] for k in ("consistency", "tr_plus", "tr_minus") if k in s
        }
    summary: dict[str, Any] = {
        "layers": layers,
        "pivot": pivot,
        "languages": sorted(set(ranked["language"])),
        "n_items": int(ranked["item_id"].nunique()),
        "latent_accuracy": latent_accuracy,
        "log_ratio": log_ratio,
        "latent_transfer": latent_transfer,
        "mean_log_ratio": {
            lang: float(ratio_items[ratio_items["language"] == lang]["log_ratio"].mean())
            for lang in non_pivot
        },
    }
    summary["table2"] = _table2(store, str(lens["dataset"].iat[0]), summary["mean_log_ratio"], pivot, lens)
    summary |= {"lens": "logit" if table == LENS else table.removeprefix(f"{LENS}_")} | (extra or {})
    store.write_json(f"{table}_summary.json", metrics.to_jsonable(summary))
    return summary


def _across(values: pd.Series, languages: Sequence[str]) -> dict[str, Any]:
    """Mean and t-based 95 % CI over ``languages`` (the non-pivot ones); every language's value kept."""
    used = values[values.index.isin(languages)]
    mean, low, high = metrics.ci95_across(np.asarray(used, dtype=float))
    return {
        "mean": mean,
        "ci_low": low,
        "ci_high": high,
        "per_language": {k: float(v) for k, v in values.items()},
    }


def _table2(
    store: Store, dataset: str, mean_log_ratio: dict[str, float], pivot: str | None, lens: pd.DataFrame
) -> dict[str, Any] | None:
    """Correlate per-language mean log ratio with the evaluation's accuracy, consistency and →tr+.

    Reads the ``records/`` of the same folder for the lens's own items and languages (so mean
    consistency and →tr+ are over the languages the lens ran on); absent records give ``None``.
    """
    if not store.has_rows(RECORDS):
        return None
    records = store.read(RECORDS)
    records = records[
        (records["dataset"] == dataset)
        & records["item_id"].isin(set(lens["item_id"]))
        & records["language"].isin(set(lens["language"]))
    ]
    if records.empty:
        return None
    if pivot not in set(records["language"]):
        pivot = None
    s = metrics.summarize(records, pivot=pivot, n_boot=0)
    langs = sorted(mean_log_ratio)
    x = [mean_log_ratio[lang] for lang in langs]
    columns = {"acc": s["accuracy"], "cons": s["mean_consistency"], "tr_plus_in": s["incoming_tr_plus"]}
    return {
        name: metrics.pearson_with_stars(x, [col.get(lang, np.nan) for lang in langs])
        for name, col in columns.items()
    } | {"languages": langs}
