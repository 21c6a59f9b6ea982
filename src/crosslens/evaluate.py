"""Zero-shot cross-lingual evaluation (paper §2.1, Table 1): records, resumable, then metrics.

For each (language, item) one prompt pass gives the label log-probabilities at ``Answer:``; one
continuation pass over the cached prompt gives the cloze scores of the full answer texts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crosslens import __version__, metrics
from crosslens.data import Item, ParallelDataset
from crosslens.models import LoadedModel
from crosslens.prompts import Template, get_template, render, template_hash
from crosslens.scoring import LabelPlan, encode_continuation, label_plan, rank_choices, score_prompts
from crosslens.stages import Stage, Unit, plan_units, run_stage
from crosslens.store import Store

if TYPE_CHECKING:
    from crosslens.config import ExperimentConfig
    from crosslens.runner import Job

__all__ = [
    "EvalOptions",
    "EvalStage",
    "eval_stage",
    "evaluate",
    "label_fields",
    "cloze_fields",
    "item_rows",
    "summarize_records",
    "RECORDS",
]

RECORDS = "records"


@dataclass(frozen=True)
class EvalOptions:
    """Knobs that change speed, never results (beyond float rounding), except ``template`` and ``cloze``."""

    template: str | None = None  # template name or text; None = the dataset's default
    batch_size: int = 8
    padding_side: str = "left"
    chunk_size: int = 32  # items per unit (resume granularity)
    cloze: bool = True
    max_elements: int = 2**26  # logits projected at once (memory budget of the vocabulary projection)


def label_fields(logprobs: Sequence[float], gold: int) -> dict[str, Any]:
    """ranks / pred / correct from label log-probabilities (shared by eval, lens and steering)."""
    ranks = rank_choices(logprobs)
    pred = int(ranks.index(1))
    return {
        "label_logprobs": [float(x) for x in logprobs],
        "ranks": ranks,
        "pred": pred,
        "correct": pred == gold,
    }


def cloze_fields(token_logprobs: Sequence[np.ndarray], choices: Sequence[str], gold: int) -> dict[str, Any]:
    """Full-answer scores from each choice's token log-probs (shared by evaluation, ablation and
    steering): acc_norm as in lm-evaluation-harness, total log-prob per character of the answer."""
    sums = [float(np.sum(x)) for x in token_logprobs]
    norm = [s / max(1, len(c.strip())) for s, c in zip(sums, choices)]
    pred = int(np.argmax(norm))
    return {
        "cloze_logprobs": sums,
        "cloze_tokens": [len(x) for x in token_logprobs],
        "cloze_norm": norm,
        "cloze_ranks": rank_choices(norm),
        "cloze_pred": pred,
        "cloze_correct": pred == gold,
    }


def prompt_fingerprint(spec: str, dtype: str, ds: ParallelDataset, template: Template) -> dict[str, Any]:
    """The part of every fingerprint known before the model loads (checked first, so a folder made
    with another model, dtype, data source or prompt is refused without waiting for a load)."""
    return {
        "model": spec,
        "dtype": dtype,
        "dataset": ds.name,
        "data_source": ds.source,
        "template": template.name,
        "template_hash": template_hash(template),
    }


def data_fingerprint(lm: LoadedModel, ds: ParallelDataset, template: Template) -> dict[str, Any]:
    """What every result computed from prompts depends on: the model and how its prompts are made.

    Batch size, chunk size, padding side and the device change float rounding only and are not
    part of it; the items' own content is checked per item (:attr:`Item.digest`).
    """
    dtype = str(lm.dtype).removeprefix("torch.")
    return prompt_fingerprint(lm.spec, dtype, ds, template) | {"revision": lm.revision}


def fingerprint(
    lm: LoadedModel, ds: ParallelDataset, template: Template, plan: LabelPlan, opts: EvalOptions
) -> dict[str, Any]:
    """The evaluation's fingerprint: the prompts, the answer-letter tokens and whether cloze is scored."""
    return data_fingerprint(lm, ds, template) | {"label_form": plan.form, "cloze": opts.cloze}


def item_rows(
    lm: LoadedModel, items: list[Item], template: Template, plan: LabelPlan, opts: EvalOptions
) -> pd.DataFrame:
    """Evaluation records of ``items``: label scores and (with ``opts.cloze``) full-answer scores at
    the final layer, one row per item (also under any hooks the caller holds, e.g. ablations)."""
    tok = lm.tokenizer
    prompts = [render(it, template) for it in items]
    prompt_ids = [tok(p).input_ids for p in prompts]
    conts: list[list[list[int]]] | None = None
    if opts.cloze:
        conts = [
            [encode_continuation(tok, p, pid, c)[0] for c in it.choices]
            for it, p, pid in zip(items, prompts, prompt_ids)
        ]
    label_ids = [plan.for_n(len(it.choices)) for it in items]
    final = lm.anatomy.n_layers
    rows: list[dict[str, Any]] = [{} for _ in items]
    for i, sc in score_prompts(
        lm, prompt_ids, [final], label_ids, conts, opts.batch_size, opts.padding_side, opts.max_elements
    ):
        it = items[i]
        sc.check(f"item {it.item_id!r} ({it.language})")
        row = {
            "dataset": it.dataset,
            "language": it.language,
            "item_id": it.item_id,
            "n_choices": len(it.choices),
            "gold": it.gold,
            **label_fields(sc.label_logprobs[final], it.gold),
            "prompt": prompts[i],
            "prompt_tokens": len(prompt_ids[i]),
        }
        if conts is not None:
            row |= cloze_fields(sc.text_logprobs[final], it.choices, it.gold)
        rows[i] = row
    return pd.DataFrame(rows)


@dataclass(kw_only=True)
class EvalStage(Stage):
    """Evaluation records (label scores and cloze scores at the final layer) of one dataset."""

    lm: LoadedModel
    template: Template
    plan: LabelPlan
    opts: EvalOptions
    languages: list[str]
    seed: int

    def rows(self, unit: Unit) -> pd.DataFrame:
        items = [self.ds.item(unit.language, i) for i in unit.item_ids]
        return item_rows(self.lm, items, self.template, self.plan, self.opts)

    def summarize(self) -> dict[str, Any]:
        return summarize_records(
            self.store, self.ds.name, self.languages, self.ds.pivot, seed=self.seed, records=self.read()
        )


def eval_stage(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    languages: Sequence[str] | None = None,
    opts: EvalOptions = EvalOptions(),
    exclude: Sequence[str] = (),
    seed: int = 0,
) -> EvalStage:
    """The evaluation of ``lm`` on ``ds`` into ``out``, planned but not run."""
    languages = list(languages or ds.languages)
    template = get_template(opts.template or ds.template)
    plan = label_plan(lm.tokenizer)
    meta = {
        "model": lm.describe(),
        "dataset": ds.name,
        "languages": languages,
        "pivot": ds.pivot,
        "label_tokens": plan.describe(),
        "cloze_separator": "' ' + choice text, tokenised jointly with the prompt",
        "batch_size": opts.batch_size,
        "padding_side": opts.padding_side,
        "chunk_size": opts.chunk_size,
        "crosslens_version": __version__,
        "seed": seed,
        "command": " ".join(sys.argv),
        "excluded_items": len(set(exclude)),
        "n_items": len(ds) - len(set(exclude) & set(ds.item_ids())),
    }
    return EvalStage(
        ds=ds,
        table=RECORDS,
        store=Store(out),
        fingerprint=fingerprint(lm, ds, template, plan, opts),
        meta=meta,
        units=plan_units(ds, languages, opts.chunk_size, exclude),
        lm=lm,
        template=template,
        plan=plan,
        opts=opts,
        languages=languages,
        seed=seed,
    )


def job_stage(config: ExperimentConfig, lm: LoadedModel, spec: str, job: Job, out: Path) -> EvalStage:
    """The evaluation of one model x dataset of an experiment (registry builder)."""
    return eval_stage(
        lm, job.data, out, job.data.languages, opts=config.eval_options(job.index), seed=config.seed
    )


def evaluate(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    languages: Sequence[str] | None = None,
    opts: EvalOptions = EvalOptions(),
    exclude: Sequence[str] = (),
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``lm`` on ``ds`` into ``out`` (resuming finished units) and return the summary.

    ``exclude``: item ids held out (e.g. the items steering vectors were built from).
    ``progress``: called with the number of items finished after each unit.
    """
    return run_stage(eval_stage(lm, ds, out, languages, opts, exclude, seed), progress)


def summarize_records(
    store: Store,
    dataset: str,
    languages: Sequence[str] | None,
    pivot: str | None,
    seed: int = 0,
    records: pd.DataFrame | None = None,
    items: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Recompute ``summary.json`` from the records alone (also what ``crosslens metrics`` does).

    ``records``: the rows to summarise (default: the folder's, restricted to ``items`` when given,
    as recorded in run.json's selection).
    """
    df = store.read(RECORDS) if records is None else records
    if df.empty:
        raise ValueError(f"{store.root} has no evaluation records")
    df = df[df["dataset"] == dataset]
    if items is not None:
        df = df[df["item_id"].isin(items)]
    if languages:
        df = df[df["language"].isin(languages)]
    if pivot not in set(df["language"]):
        pivot = None  # English was not evaluated: no English-anchored views
    summary = {
        "dataset": dataset,
        "n_items": int(df["item_id"].nunique()),
        **metrics.summarize(df, pivot=pivot, seed=seed),
    }
    if "cloze_ranks" in df:
        # The same Table 1 view on full-answer (cloze) scores: small models that cannot answer by
        # letter are often consistent (or not) in what they believe the answer text is.
        cloze = metrics.summarize(
            df,
            pivot=pivot,
            seed=seed,
            correct_col="cloze_correct",
            pred_col="cloze_pred",
            ranks_col="cloze_ranks",
        )
        summary["cloze"] = cloze
        summary["cloze_accuracy"] = cloze["accuracy"]
    store.write_json("summary.json", metrics.to_jsonable(summary))
    return summary
