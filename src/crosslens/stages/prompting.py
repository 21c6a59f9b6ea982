"""The prompts a stage reads: template, few-shot exemplars (and where they come from), chat turn."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from crosslens.data.options import DatasetConfig
from crosslens.data.prompts import Prompter, exemplars_for, get_template
from crosslens.data.schema import ParallelDataset
from crosslens.models.loading import LoadedModel
from crosslens.options import OptionError
from crosslens.scoring.choices import fit_context
from crosslens.scoring.options import EvalOptions
from crosslens.stages.context import Plan

__all__ = ["held_out", "fewshot_pool", "fewshot_source", "build_prompter", "fit_prompts"]


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


def fewshot_source(
    dataset: DatasetConfig, full: ParallelDataset, read: ParallelDataset, k: int
) -> ParallelDataset | None:
    """Where ``k`` exemplars come from (decided before a model loads): the dataset's ``fewshot_split``,
    else the items beyond its ``limit``, else None (drawn from the items read, which then skip them)."""
    if dataset.fewshot_split is not None and not k:
        raise OptionError("fewshot_split", "is set but num_fewshot is 0")
    if not k:
        return None
    if dataset.fewshot_split is not None:
        return dataset.read(dataset.fewshot_split).require_items()
    pool = fewshot_pool(full, read, k)
    if pool is None and k >= len(read):
        raise _no_item_left(k, read)
    return pool


def _no_item_left(k: int, ds: ParallelDataset) -> OptionError:
    return OptionError(
        "num_fewshot",
        f"{k} leaves no item of {ds.name} to evaluate ({len(ds)} aligned items); draw the exemplars from "
        "another split",
    )


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
        raise _no_item_left(opts.num_fewshot, ds)
    return Prompter(
        get_template(opts.template or ds.template),
        lm.tokenizer,
        exemplars_for(pool, languages, opts.num_fewshot, seed),
        opts.apply_chat_template,
        opts.system_instruction,
        "held-out items" if shots_from is None else pool.source,
    )


def fit_prompts(plan: Plan, lm: LoadedModel) -> tuple[ParallelDataset, int]:
    """The items of ``plan`` whose prompts fit ``lm``'s context, measured as its stages will feed
    them (:func:`~crosslens.scoring.choices.fit_context`: exemplars, system text, chat template),
    and how many were left out (``skip_long``). Exemplars drawn from the items themselves are drawn
    again from those left, as the stages will draw them, until every item read fits with its own."""
    ds, skipped = plan.data, 0
    while True:
        prompter = build_prompter(lm, ds, ds.languages, plan.eval_options(), plan.seed, plan.shots)
        fitted, n = fit_context(lm, ds, prompter, plan.run.skip_long, held_out(prompter, plan.shots))
        skipped += n
        if not n or not held_out(prompter, plan.shots):
            return fitted, skipped
        ds = fitted
