"""Fingerprints: what a stage's results depend on, recorded with them and compared before any reuse."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crosslens.data.prompts import Template, get_template, template_hash
from crosslens.data.schema import ParallelDataset
from crosslens.models.loading import LoadedModel
from crosslens.scoring.choices import LabelPlan
from crosslens.scoring.options import EvalOptions
from crosslens.store import Store

__all__ = ["prompt_fingerprint", "data_fingerprint", "scoring_fingerprint", "precheck_folder"]


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


def precheck_folder(
    out: Path, tables: Sequence[str], spec: str, dtype: str, ds: ParallelDataset, template: str | None
) -> None:
    """Refuse, before ``spec`` loads, a folder whose ``tables`` were made with another model, dtype,
    data source or prompt template (``template``: name or text, None for the dataset's)."""
    expected = prompt_fingerprint(spec, dtype, ds, get_template(template or ds.template))
    store = Store(out)
    store.read_run()  # a damaged run.json is refused now, not once the model has loaded
    for table in tables:
        store.precheck(table, expected)
