"""Fingerprints: what a stage's results depend on, recorded with them and compared before any reuse."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crosslens.data.prompts import Template, get_template, template_hash
from crosslens.data.schema import ParallelDataset
from crosslens.models.loading import LoadedModel, content_identity
from crosslens.scoring.answers import neutral_prompt_changed, neutral_prompt_ids
from crosslens.scoring.choices import LabelPlan
from crosslens.scoring.options import EvalOptions
from crosslens.store import Store

__all__ = ["prompt_fingerprint", "data_fingerprint", "scoring_fingerprint", "precheck_folder"]


def prompt_fingerprint(
    spec: str, dtype: str, ds: ParallelDataset, template: Template, identity: str | None = None
) -> dict[str, Any]:
    """The part of every fingerprint known before the model loads (checked first, so a folder made
    with another model, dtype, data source or prompt is refused without waiting for a load).

    ``model`` is the spec as given, a label; ``model_id`` what the model is by content (``identity``,
    read from the spec's files when not given): folders are compared by it (:func:`crosslens.store.
    fingerprint_diff`), so the same model by another path or as a copy reuses them.
    """
    return {
        "model": spec,
        "model_id": identity if identity is not None else content_identity(spec),
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
    return prompt_fingerprint(lm.spec, dtype, ds, template, lm.identity) | {"revision": lm.revision}


def scoring_fingerprint(plan: LabelPlan, opts: EvalOptions, tokenizer: Any) -> dict[str, Any]:
    """How answers are scored (shared by every stage that ranks choices): the answer-letter tokens,
    whether full answers are scored and how they are normalised; for pmi, the empty prompt where
    it is not the one crosslens first conditioned on (``pmi_prefix``: lm-eval's prefix token)."""
    fp: dict[str, Any] = {"label_form": plan.form, "cloze": opts.cloze}
    if opts.cloze and opts.cloze_norm != "char":  # 0.1's normalisation: its folders stay reusable
        fp["cloze_norm"] = opts.cloze_norm
    if opts.cloze and opts.cloze_norm == "pmi" and neutral_prompt_changed(tokenizer):
        fp["pmi_prefix"] = neutral_prompt_ids(tokenizer)
    return fp


def precheck_folder(
    out: Path,
    tables: Sequence[str],
    spec: str,
    dtype: str,
    ds: ParallelDataset,
    template: str | None,
    identity: str | None = None,
) -> None:
    """Refuse, before ``spec`` loads, a folder whose ``tables`` were made with another model, dtype,
    data source or prompt template (``template``: name or text, None for the dataset's; ``identity``:
    the model's, when it is already loaded)."""
    expected = prompt_fingerprint(spec, dtype, ds, get_template(template or ds.template), identity)
    store = Store(out)
    store.read_run()  # a damaged run.json is refused now, not once the model has loaded
    for table in tables:
        store.precheck(table, expected)
