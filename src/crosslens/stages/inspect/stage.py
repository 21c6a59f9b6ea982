"""The lens picture as a stage: the dataset's first item in every language, read at every position.

For the zero-shot prompt of the first selected item in each language, per layer of the run's
schedule and per position, through each lens: the top-k next tokens with their probabilities, the
entropy, and each token's language (:mod:`crosslens.stages.inspect.compute`). A unit is one
language (its one item) under the layers, so more layers extend a folder; the lenses, ``top_k``
and the token -> language rules are part of the fingerprint. The report draws one picture per
language (:mod:`crosslens.stages.inspect.report`).

:func:`inspect_prompt` reads any text the same way, for ``crosslens inspect --prompt``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from crosslens.data.prompts import Prompter, get_template
from crosslens.data.schema import ParallelDataset
from crosslens.data.token_languages import TokenLanguages, table_identity, token_languages
from crosslens.lenses.kinds import load_lenses
from crosslens.lenses.lens import Lens
from crosslens.models.anatomy import paper_layers
from crosslens.models.loading import LoadedModel
from crosslens.options import OptionError
from crosslens.scoring.choices import context_limit
from crosslens.scoring.options import EvalOptions
from crosslens.stages.api import runner
from crosslens.stages.base import Stage, Unit
from crosslens.stages.context import JobContext
from crosslens.stages.fingerprints import data_fingerprint
from crosslens.stages.inspect import SUMMARY, TABLE
from crosslens.stages.inspect.compute import inspection
from crosslens.stages.inspect.config import DEFAULTS, MAX_TOP_K, InspectConfig
from crosslens.stages.inspect.picture import png_picture, write_page
from crosslens.store import Store, atomic_write_bytes

__all__ = [
    "InspectStage",
    "inspect_stage",
    "run_inspect",
    "build",
    "inspect_prompt",
    "write_pictures",
    "last_position",
]


def last_position(reading: pd.DataFrame) -> list[dict[str, Any]]:
    """The top token at the prompt's last position per layer (what the model is about to say, layer
    by layer): the summary's and the command line's short view of a reading of one lens."""
    last = reading[(reading["position"] == reading["position"].max()) & (reading["rank"] == 1)]
    return [
        {
            k: (int(r[k]) if k == "layer" else r[k])
            for k in ("layer", "token", "prob", "token_language", "entropy")
        }
        for _, r in last.sort_values("layer").iterrows()
    ]


@dataclass(kw_only=True)
class InspectStage(Stage):
    """The reading of every language's first item; one unit per language, its settings the layers."""

    lm: LoadedModel
    prompter: Prompter
    lenses: list[Lens]
    top_k: int
    token_table: TokenLanguages
    languages: list[str]

    def prompt_ids(self, language: str, item_id: str) -> tuple[str, list[int]]:
        text = self.prompter.text(self.ds.item(language, item_id))
        return text, self.prompter.ids(text)

    def rows(self, unit: Unit) -> pd.DataFrame:
        frames = []
        for item_id in unit.item_ids:
            _, ids = self.prompt_ids(unit.language, item_id)
            reading = inspection(self.lm, ids, self.lenses, list(unit.settings), self.top_k, self.token_table)
            reading.insert(0, "item_id", item_id)
            reading.insert(0, "language", unit.language)
            reading.insert(0, "dataset", self.ds.name)
            frames.append(reading)
        return pd.concat(frames, ignore_index=True)

    def summarize(self) -> dict[str, Any]:
        rows = self.read()
        if rows.empty:
            raise ValueError(f"{self.store.root} has no inspection rows")
        items = {u.language: u.item_ids[0] for u in self.units}
        summary: dict[str, Any] = {
            "dataset": self.ds.name,
            "languages": self.languages,
            "layers": sorted(int(x) for x in rows["layer"].unique()),
            "lenses": [lens.name for lens in self.lenses],
            "top_k": self.top_k,
            "items": items,
            "prompts": {lang: self.prompt_ids(lang, item)[0] for lang, item in items.items()},
            "last_position": {
                lens.name: {
                    lang: last_position(rows[(rows["lens"] == lens.name) & (rows["language"] == lang)])
                    for lang in self.languages
                }
                for lens in self.lenses
            },
            "token_languages": {
                "method": self.token_table.method,
                "wordfreq": self.token_table.wordfreq_version,
                "vocabulary_assigned": round(self.token_table.coverage().share, 4),
            },
        }
        self.store.write_json(SUMMARY, summary)
        return summary


def inspect_stage(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    languages: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    lenses: Sequence[Lens | str] = tuple(DEFAULTS.lenses),
    top_k: int = DEFAULTS.top_k,
    opts: EvalOptions = EvalOptions(),
    token_table: TokenLanguages | None = None,
) -> InspectStage:
    """The lens picture of ``ds``'s first item in each of ``languages`` (default: all) at ``layers``
    (default: the paper's) through ``lenses`` into ``out``, planned but not run. The prompt is the
    zero-shot one of ``opts`` (its template, chat turn and system text; never exemplars);
    ``token_table``: the tokenizer's token -> language table (default: built once and cached)."""
    if not 1 <= top_k <= MAX_TOP_K:
        raise OptionError("top_k", f"must be 1..{MAX_TOP_K}, got {top_k}")
    languages = list(languages or ds.languages)
    layers = lm.anatomy.check_layers(layers if layers is not None else paper_layers(lm.anatomy.n_layers))
    read = load_lenses(lenses, lm, layers)
    ids = ds.item_ids()
    if not ids:
        raise ValueError(f"{ds.name} has no aligned item to inspect")
    template = get_template(opts.template or ds.template)
    prompter = Prompter(template, lm.tokenizer, {}, opts.apply_chat_template, opts.system_instruction)
    table = token_table if token_table is not None else token_languages(lm.tokenizer)
    fingerprint = (
        data_fingerprint(lm, ds, prompter.template)
        | prompter.fingerprint()
        | {
            "lenses": {lens.kind: lens.fingerprint() for lens in read},
            "top_k": top_k,
            "token_languages": table_identity(table),
        }
    )
    meta = {
        "model": lm.describe(),
        "languages": languages,
        "layers": layers,
        "lenses": [lens.name for lens in read],
        "top_k": top_k,
        "item": ids[0],
    }
    return InspectStage(
        ds=ds,
        table=TABLE,
        store=Store(out),
        fingerprint=fingerprint,
        meta=meta,
        units=[Unit(ds.name, lang, 0, (ids[0],), tuple(layers)) for lang in languages],
        setting_columns=("layer",),
        lm=lm,
        prompter=prompter,
        lenses=read,
        top_k=top_k,
        token_table=table,
        languages=languages,
    )


def build(ctx: JobContext) -> InspectStage:
    """The inspection of one model x dataset (the registry's builder): the run's layers."""
    section = ctx.section
    assert isinstance(section, InspectConfig)
    return inspect_stage(ctx.lm, ctx.data, ctx.out, ctx.data.languages, ctx.read_layers(), section.lenses,
                         section.top_k, ctx.eval_options())  # fmt: skip


#: Read the first item of every language through the lenses (:func:`inspect_stage`'s arguments, and
#: ``progress``); writes the ``inspect/`` table, ``inspect_summary.json`` and a picture per language.
run_inspect = runner(inspect_stage, "run_inspect")


def inspect_prompt(
    lm: LoadedModel,
    prompt: str,
    lenses: Sequence[Lens | str] = tuple(DEFAULTS.lenses),
    layers: Sequence[int] | None = None,
    top_k: int = DEFAULTS.top_k,
    token_table: TokenLanguages | None = None,
) -> pd.DataFrame:
    """The reading of any text (tokenised as the model's tokenizer does by default, with its
    beginning-of-text token): one row per (lens, layer, position, rank)."""
    if not prompt.strip():
        raise ValueError("the prompt is empty: give a text to read through the lens")
    layers = lm.anatomy.check_layers(layers if layers is not None else paper_layers(lm.anatomy.n_layers))
    read = load_lenses(lenses, lm, layers)
    table = token_table if token_table is not None else token_languages(lm.tokenizer)
    ids = list(lm.tokenizer(prompt).input_ids)
    limit = context_limit(lm)
    if limit is not None and len(ids) > limit:
        raise ValueError(f"the prompt has {len(ids)} tokens, more than the {limit} of {lm.spec}'s context")
    return inspection(lm, ids, read, layers, top_k, table)


def write_pictures(
    reading: pd.DataFrame,
    folder: str | Path,
    title: str,
    prompt: str,
    notes: Sequence[str] = (),
    stem: str = "inspect",
) -> tuple[Path, Path, Path]:
    """``<stem>.html``, ``<stem>.png`` and ``<stem>.parquet`` (the rows) of one prompt's reading."""
    folder = Path(folder)
    page = write_page(reading, folder / f"{stem}.html", title, prompt, notes)
    png = png_picture(reading, folder / f"{stem}.png", title)
    buffer = io.BytesIO()
    reading.to_parquet(buffer, index=False)
    atomic_write_bytes(folder / f"{stem}.parquet", buffer.getvalue())
    return page, png, folder / f"{stem}.parquet"
