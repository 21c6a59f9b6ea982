"""Zero-shot cross-lingual evaluation (paper §2.1, Table 1): records, resumable, then metrics.

For each (language, item) one prompt pass gives the label log-probabilities at ``Answer:``; one
continuation pass over the cached prompt gives the cloze scores of the full answer texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from crosslens.data.prompts import Prompter
from crosslens.data.schema import ParallelDataset
from crosslens.models.loading import LoadedModel
from crosslens.options import check_seed
from crosslens.scoring import metrics
from crosslens.scoring.choices import LabelPlan, prompt_label_plan
from crosslens.scoring.options import EvalOptions
from crosslens.scoring.records import item_rows
from crosslens.stages.api import runner
from crosslens.stages.base import Stage, Unit, plan_units
from crosslens.stages.context import JobContext
from crosslens.stages.evaluate import SUMMARY, TABLE
from crosslens.stages.fingerprints import data_fingerprint, scoring_fingerprint
from crosslens.stages.prompting import build_prompter, held_out
from crosslens.store import Store

__all__ = ["EvalStage", "eval_stage", "evaluate", "summarize_records"]


def fingerprint(
    lm: LoadedModel, ds: ParallelDataset, prompter: Prompter, plan: LabelPlan, opts: EvalOptions
) -> dict[str, Any]:
    """The evaluation's fingerprint: the prompts and how answers are scored."""
    return (
        data_fingerprint(lm, ds, prompter.template)
        | prompter.fingerprint()
        | scoring_fingerprint(plan, opts, lm.tokenizer)
    )


@dataclass(kw_only=True)
class EvalStage(Stage):
    """Evaluation records (label scores and cloze scores at the final layer) of one dataset."""

    lm: LoadedModel
    prompter: Prompter
    plan: LabelPlan
    opts: EvalOptions
    languages: list[str]
    seed: int
    tagged: bool = False  # the dataset tags its items (Global-MMLU CS / CA): records get a tags column

    def rows(self, unit: Unit) -> pd.DataFrame:
        items = [self.ds.item(unit.language, i) for i in unit.item_ids]
        df = item_rows(self.lm, items, self.prompter, self.plan, self.opts)
        if self.tagged:
            df["tags"] = [list(self.ds.item(unit.language, i).tags) for i in df["item_id"]]
        return df

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
    shots_from: ParallelDataset | None = None,
) -> EvalStage:
    """The evaluation of ``lm`` on ``ds`` into ``out``, planned but not run.

    ``shots_from``: the items few-shot exemplars are drawn from (e.g. the dataset's dev split);
    default: ``ds`` itself, whose drawn items are then left out of the evaluation.
    """
    check_seed(seed)
    languages = list(languages or ds.languages)
    prompter = build_prompter(lm, ds, languages, opts, seed, shots_from)
    exclude = [*exclude, *held_out(prompter, shots_from)]
    plan = prompt_label_plan(prompter, max(5, ds.max_choices()))
    sep = "nothing after the chat's generation prompt" if prompter.chat else "' '"
    meta = {
        "model": lm.describe(),
        "dataset": ds.name,
        "languages": languages,
        "pivot": ds.pivot,
        "label_tokens": plan.describe(),
        "cloze_separator": f"{sep} + choice text, tokenised jointly with the prompt",
        "cloze_norm": opts.cloze_norm if opts.cloze else None,
        "fewshot_items": prompter.exemplars(),
        "chat_template": prompter.chat,
        "system_instruction": prompter.system,
        "batch_size": opts.batch_size,
        "padding_side": opts.padding_side,
        "chunk_size": opts.chunk_size,
        "seed": seed,
        "excluded_items": len(set(exclude)),
        "n_items": len(ds) - len(set(exclude) & set(ds.item_ids())),
    }
    return EvalStage(
        ds=ds,
        table=TABLE,
        store=Store(out),
        fingerprint=fingerprint(lm, ds, prompter, plan, opts),
        meta=meta,
        units=plan_units(ds, languages, opts.chunk_size, exclude),
        lm=lm,
        prompter=prompter,
        plan=plan,
        opts=opts,
        languages=languages,
        seed=seed,
        tagged=any(it.tags for items in ds.items.values() for it in items),
    )


def build(ctx: JobContext) -> EvalStage:
    """The evaluation of one model x dataset (the registry's builder)."""
    return eval_stage(ctx.lm, ctx.data, ctx.out, ctx.data.languages, ctx.eval_options(), seed=ctx.seed,
                      shots_from=ctx.shots)  # fmt: skip


#: Evaluate (resuming finished units) and return the summary: :func:`eval_stage`'s arguments, and
#: ``progress`` (called with the number of items of each finished unit).
evaluate = runner(eval_stage, "evaluate")


def _by_tag(df: pd.DataFrame, pivot: str | None, seed: int) -> dict[str, Any]:
    """Table 1 (letters and cloze) over the items of each tag (Global-MMLU: CS, CA), an item's tags
    being those of its pivot (English) row, or of any row without English."""
    rows = df[df["language"] == pivot] if pivot is not None else df
    members: dict[str, set[str]] = {}
    for item_id, tags in zip(rows["item_id"], rows["tags"]):
        for tag in tags if tags is not None else ():
            members.setdefault(str(tag), set()).add(item_id)
    out: dict[str, Any] = {}
    for tag, ids in sorted(members.items()):
        sub = df[df["item_id"].isin(ids)]
        out[tag] = {"n_items": len(ids), **metrics.summarize(sub, pivot=pivot, seed=seed)}
        if "cloze_ranks" in sub:
            out[tag]["cloze"] = metrics.summarize(
                sub,
                pivot=pivot,
                seed=seed,
                correct_col="cloze_correct",
                pred_col="cloze_pred",
                ranks_col="cloze_ranks",
            )
    return out


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
    df = store.read(TABLE) if records is None else records
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
        # records written before the option existed were normalised per character
        norms = set(df["cloze_normalization"].dropna()) if "cloze_normalization" in df else {"char"}
        summary["cloze_norm"] = ", ".join(sorted(norms)) or "char"
    if "tags" in df:
        summary["by_tag"] = _by_tag(df, pivot, seed)
    store.write_json(SUMMARY, metrics.to_jsonable(summary))
    return summary
