"""Zero-shot cross-lingual evaluation (paper §2.1, Table 1): records, resumable, then metrics.

For each (language, item) one prompt pass gives the label log-probabilities at ``Answer:``; one
continuation pass over the cached prompt gives the cloze scores of the full answer texts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from crosslens import __version__, metrics
from crosslens.data import DataError, Item, ParallelDataset
from crosslens.models import LoadedModel
from crosslens.prompts import Prompter, Template, exemplars_for, get_template, template_hash
from crosslens.scoring import LabelPlan, encode_continuation, prompt_label_plan, rank_choices, score_prompts
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
    "scoring_fingerprint",
    "CLOZE_NORMS",
    "neutral_logprobs",
    "item_rows",
    "summarize_records",
    "RECORDS",
]

RECORDS = "records"

# How a full answer's total log-probability becomes the score its choices are ranked by:
# "char" (crosslens 0.1 and lm-eval's acc_norm: per character), "byte" (per UTF-8 byte: fairer
# across scripts, whose characters carry very different amounts of text, see lm-eval issue 3278),
# "token" (per token of the model), "pmi" (minus the answer's log-probability after an empty
# prompt, lm-eval's acc_mutual_info) and "none" (the total, lm-eval's acc).
CLOZE_NORMS = ("char", "byte", "token", "pmi", "none")


@dataclass(frozen=True)
class EvalOptions:
    """Scoring options. Batching, padding, chunking and ``max_elements`` change speed, never results
    (beyond float rounding); the prompt (template, exemplars, chat turn) and the cloze options do."""

    template: str | None = None  # template name or text; None = the dataset's default
    batch_size: int = 8
    padding_side: str = "left"
    chunk_size: int = 32  # items per unit (resume granularity)
    cloze: bool = True
    cloze_norm: str = "char"  # one of CLOZE_NORMS
    num_fewshot: int = 0  # exemplars with their answer letters before each question, same items everywhere
    apply_chat_template: bool = False  # the prompt as the user turn of the model's chat template
    system_instruction: str | None = None  # a system turn (a paragraph before the prompt without a chat)
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


def cloze_fields(
    token_logprobs: Sequence[np.ndarray],
    choices: Sequence[str],
    gold: int,
    norm: str = "char",
    neutral: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Full-answer scores from each choice's token log-probs (shared by evaluation, ablation and
    steering): the total log-probability of each answer, normalised by ``norm`` (see
    :data:`CLOZE_NORMS`; ``neutral``: each answer's total after the empty prompt, for "pmi")."""
    if norm not in CLOZE_NORMS:
        raise ValueError(f"unknown cloze normalisation {norm!r}; use one of {', '.join(CLOZE_NORMS)}")
    sums = [float(np.sum(x)) for x in token_logprobs]
    texts = [c.strip() for c in choices]
    if norm == "pmi":
        if neutral is None or len(neutral) != len(sums):
            raise ValueError("pmi needs each answer's log-probability after the empty prompt")
        scores = [s - n for s, n in zip(sums, neutral)]
    else:
        size = {
            "char": [len(t) for t in texts],
            "byte": [len(t.encode("utf-8")) for t in texts],
            "token": [len(x) for x in token_logprobs],
            "none": [1] * len(texts),
        }[norm]
        scores = [s / max(1, n) for s, n in zip(sums, size)]
    pred = int(np.argmax(scores))
    return {
        "cloze_logprobs": sums,
        "cloze_tokens": [len(x) for x in token_logprobs],
        "cloze_bytes": [len(t.encode("utf-8")) for t in texts],
        **({"cloze_neutral": [float(x) for x in neutral]} if norm == "pmi" else {}),
        "cloze_norm": scores,
        "cloze_normalization": norm,
        "cloze_ranks": rank_choices(scores),
        "cloze_pred": pred,
        "cloze_correct": pred == gold,
    }


def neutral_prompt_ids(tokenizer) -> list[int]:
    """The empty prompt PMI divides by: the tokenizer's own start (BOS), or the end-of-text token
    where it adds none (as lm-evaluation-harness scores a continuation of an empty context)."""
    ids = tokenizer("").input_ids
    if ids:
        return list(ids)
    if tokenizer.eos_token_id is None:
        raise ValueError("pmi needs a start or end-of-text token to condition on; this tokenizer has neither")
    return [int(tokenizer.eos_token_id)]


def neutral_logprobs(lm: LoadedModel, items: Sequence[Item], opts: EvalOptions) -> list[list[float]]:
    """Each answer's total log-probability after the empty prompt (one pass per distinct answer)."""
    tok = lm.tokenizer
    prompt = neutral_prompt_ids(tok)
    texts = sorted({c.strip() for it in items for c in it.choices})
    conts = [encode_continuation(tok, "", prompt, t)[0] for t in texts]
    final = lm.anatomy.n_layers
    ((_, sc),) = score_prompts(
        lm, [prompt], [final], None, [conts], opts.batch_size, opts.padding_side, opts.max_elements
    )
    sc.check("the empty prompt of pmi")
    total = {t: float(np.sum(x)) for t, x in zip(texts, sc.text_logprobs[final])}
    return [[total[c.strip()] for c in it.choices] for it in items]


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
    dtype = lm.precision
    return prompt_fingerprint(lm.spec, dtype, ds, template) | {"revision": lm.revision}


def scoring_fingerprint(plan: LabelPlan, opts: EvalOptions) -> dict[str, Any]:
    """How answers are scored (shared by every stage that ranks choices): the answer-letter tokens,
    whether full answers are scored and how they are normalised."""
    fp: dict[str, Any] = {"label_form": plan.form, "cloze": opts.cloze}
    if opts.cloze and opts.cloze_norm != "char":  # 0.1's normalisation: its folders stay reusable
        fp["cloze_norm"] = opts.cloze_norm
    return fp


def fingerprint(
    lm: LoadedModel, ds: ParallelDataset, prompter: Prompter, plan: LabelPlan, opts: EvalOptions
) -> dict[str, Any]:
    """The evaluation's fingerprint: the prompts and how answers are scored."""
    return (
        data_fingerprint(lm, ds, prompter.template) | prompter.fingerprint() | scoring_fingerprint(plan, opts)
    )


def item_rows(
    lm: LoadedModel, items: list[Item], prompter: Prompter, plan: LabelPlan, opts: EvalOptions
) -> pd.DataFrame:
    """Evaluation records of ``items``: label scores and (with ``opts.cloze``) full-answer scores at
    the final layer, one row per item (also under any hooks the caller holds, e.g. ablations)."""
    tok = lm.tokenizer
    prompts = [prompter.text(it) for it in items]
    prompt_ids = [prompter.ids(p) for p in prompts]
    conts: list[list[list[int]]] | None = None
    if opts.cloze:
        conts = [
            [
                encode_continuation(tok, p, pid, c, prompter.answer_sep, not prompter.chat)[0]
                for c in it.choices
            ]
            for it, p, pid in zip(items, prompts, prompt_ids)
        ]
    label_ids = [plan.for_n(len(it.choices)) for it in items]
    neutral = neutral_logprobs(lm, items, opts) if opts.cloze and opts.cloze_norm == "pmi" else None
    final = lm.anatomy.n_layers
    shots = prompter.exemplars()
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
            **({"fewshot_items": shots} if shots else {}),
        }
        if conts is not None:
            row |= cloze_fields(
                sc.text_logprobs[final], it.choices, it.gold, opts.cloze_norm, neutral[i] if neutral else None
            )
        rows[i] = row
    return pd.DataFrame(rows)


def held_out(prompter: Prompter, shots_from: ParallelDataset | None) -> list[str]:
    """The exemplar items a stage must not read: those drawn from the read dataset itself."""
    return prompter.exemplars() if shots_from is None else []


def fewshot_pool(full: ParallelDataset, read: ParallelDataset, k: int) -> ParallelDataset | None:
    """Where ``k`` exemplars come from when no split is named: the items of ``full`` beyond those
    ``read`` (a ``--limit``), when there are enough; else None (drawn from ``read`` and held out)."""
    if not k:
        return None
    taken = set(read.item_ids())
    rest = [i for i in full.item_ids() if i not in taken]
    if len(rest) < k:
        return None
    return replace(full.subset(rest), source=f"{full.source} (items beyond the {len(taken)} read)")


def build_prompter(
    lm: LoadedModel,
    ds: ParallelDataset,
    languages: Sequence[str],
    opts: EvalOptions,
    seed: int,
    shots_from: ParallelDataset | None = None,
) -> Prompter:
    """The prompts of ``opts`` for ``lm`` on ``ds``: ``opts.num_fewshot`` exemplars drawn with ``seed``
    from ``shots_from`` (another split) or else from ``ds`` itself (then never evaluated)."""
    pool = shots_from if shots_from is not None else ds
    if shots_from is None and opts.num_fewshot and opts.num_fewshot >= len(ds):
        raise DataError(
            f"--num-fewshot {opts.num_fewshot} leaves no item of {ds.name} to evaluate ({len(ds)} aligned "
            "items); draw the exemplars from another split (--fewshot-split)"
        )
    return Prompter(
        get_template(opts.template or ds.template),
        lm.tokenizer,
        exemplars_for(pool, languages, opts.num_fewshot, seed),
        opts.apply_chat_template,
        opts.system_instruction,
        "held-out items" if shots_from is None else pool.source,
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


def job_stage(config: ExperimentConfig, lm: LoadedModel, spec: str, job: Job, out: Path) -> EvalStage:
    """The evaluation of one model x dataset of an experiment (registry builder)."""
    return eval_stage(
        lm,
        job.data,
        out,
        job.data.languages,
        config.eval_options(job.index),
        seed=config.seed,
        shots_from=job.shots,
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
    shots_from: ParallelDataset | None = None,
) -> dict[str, Any]:
    """Evaluate ``lm`` on ``ds`` into ``out`` (resuming finished units) and return the summary.

    ``exclude``: item ids held out (e.g. the items steering vectors were built from).
    ``progress``: called with the number of items finished after each unit.
    ``shots_from``: where few-shot exemplars come from (default: held-out items of ``ds``).
    """
    return run_stage(eval_stage(lm, ds, out, languages, opts, exclude, seed, shots_from), progress)


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
        # records written before the option existed were normalised per character
        norms = set(df["cloze_normalization"].dropna()) if "cloze_normalization" in df else {"char"}
        summary["cloze_norm"] = ", ".join(sorted(norms)) or "char"
    if "tags" in df:
        summary["by_tag"] = _by_tag(df, pivot, seed)
    store.write_json("summary.json", metrics.to_jsonable(summary))
    return summary
