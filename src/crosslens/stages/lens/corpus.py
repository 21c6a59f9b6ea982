"""The text an experiment trains its tuned lens on (read, or refused, before any model loads)."""

from __future__ import annotations

from crosslens.lenses.options import LensTrainConfig
from crosslens.lenses.training import Corpus
from crosslens.options import OptionError
from crosslens.stages.context import Plan

__all__ = ["train_corpus"]


def train_corpus(train: LensTrainConfig, plan: Plan) -> Corpus:
    """The text a run trains its tuned lens on: ``corpus`` files, ``dataset``'s item inputs, or the
    inputs of the read dataset's items the run does not read (refused when there are too few, or
    when they are items the lens reads)."""
    from crosslens.lenses.training import corpus_from_dataset, corpus_from_files

    if train.corpus:
        try:
            return corpus_from_files(train.corpus)
        except ValueError as exc:
            raise OptionError("train.corpus", str(exc)) from None
    if train.dataset:
        other = train.dataset.select(train.dataset.read())
        if other.name == plan.data.name:
            seen = set(other.item_ids()) & set(plan.data.item_ids())
            if seen:
                raise OptionError(
                    "train.dataset",
                    f"would train the tuned lens on {len(seen)} of the items it reads (e.g. "
                    f"{sorted(seen)[0]!r}); "
                    "train it on another split or other items",
                )
        return corpus_from_dataset(other)
    read = set(plan.data.item_ids())
    unread = [i for i in plan.full.item_ids() if i not in read]
    if len(unread) < 2:
        raise OptionError(
            "train",
            f"{plan.data.name} has no items beyond the {len(plan.data)} the run reads to train the tuned "
            "lens on; give lens.train.corpus (text files) or a smaller limit",
        )
    return corpus_from_dataset(plan.full.subset(unread), plan.data.languages)
