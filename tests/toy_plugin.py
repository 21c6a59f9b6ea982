"""A stage and a lens kind defined only here, outside the package: what a plugin author writes.

The toy stage counts each item's question tokens (times ``factor``): its own rows, summary, config
section (``toy:``), CLI command (``crosslens toy``), precheck, report part (a table across folders,
a table and a figure per folder) and printer. The toy lens reads every layer through the model's
head after halving the state. ``tests/test_architecture.py`` registers both and runs them through
every consumer with no edit under ``src/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import torch
from pydantic import Field

from crosslens.console import out_console
from crosslens.data.prompts import get_template
from crosslens.lenses.kinds import LensKind, LensSpec
from crosslens.lenses.lens import Lens
from crosslens.models.loading import LoadedModel
from crosslens.options import Cli, OptionError, Options
from crosslens.render.figures import new_figure, save
from crosslens.render.tables import Table
from crosslens.stages.base import Stage, Unit, plan_units
from crosslens.stages.context import JobContext, Plan
from crosslens.stages.fingerprints import data_fingerprint, prompt_fingerprint
from crosslens.stages.registry import StageDef
from crosslens.stages.reporting import Column, Figure, ReportPart, ResultFolder
from crosslens.store import Store

TABLE = "toy"
SUMMARY = "toy_summary.json"


class ToyConfig(Options):
    """The toy stage's section: ``toy: {factor: 3}``, ``--factor 3``."""

    factor: Annotated[int, Field(ge=1, description="what each token count is multiplied by")] = 2
    enabled: Annotated[bool, Cli(hidden=True)] = True


@dataclass(kw_only=True)
class ToyStage(Stage):
    lm: LoadedModel
    factor: int

    def rows(self, unit: Unit) -> pd.DataFrame:
        rows = []
        for item_id in unit.item_ids:
            item = self.ds.item(unit.language, item_id)
            n = len(self.lm.tokenizer(item.question).input_ids)
            rows.append({"dataset": self.ds.name, "language": unit.language, "item_id": item_id,
                         "tokens": n * self.factor})  # fmt: skip
        return pd.DataFrame(rows)

    def summarize(self) -> dict[str, Any]:
        df = self.read()
        summary = {"factor": self.factor, "mean_tokens": df.groupby("language")["tokens"].mean().to_dict()}
        self.store.write_json(SUMMARY, summary)
        return summary


def build(ctx: JobContext) -> ToyStage:
    section = ctx.section
    assert isinstance(section, ToyConfig)
    template = get_template(ctx.dataset.template or ctx.data.template)
    return ToyStage(
        ds=ctx.data,
        table=TABLE,
        store=Store(ctx.out),
        fingerprint=data_fingerprint(ctx.lm, ctx.data, template) | {"factor": section.factor},
        meta={"factor": section.factor},
        units=plan_units(ctx.data, ctx.data.languages, ctx.run.chunk_size),
        lm=ctx.lm,
        factor=section.factor,
    )


def precheck(plan: Plan) -> None:
    section = plan.section
    assert isinstance(section, ToyConfig)
    if section.factor > len(plan.data) * 100:
        raise OptionError("factor", f"{section.factor} is absurd for {len(plan.data)} items")


class ToyReport(ReportPart):
    def summary_tables(self, folders: Sequence[ResultFolder]) -> list[Table]:
        rows = [[f.rel, str(f.summaries["toy"]["factor"])] for f in folders if f.summaries.get("toy")]
        return [Table("Toy table across folders", ["folder", "factor"], rows)] if rows else []

    def meta_rows(self, folder: ResultFolder) -> list[tuple[str, Any]]:
        s = folder.summaries.get("toy")
        return [("toy factor", s["factor"])] if s else []

    def columns(self, folder: ResultFolder) -> list[Column]:
        s = folder.summaries.get("toy")
        return [("toy tokens", {k: f"{v:.1f}" for k, v in s["mean_tokens"].items()})] if s else []

    def sections(self, folder: ResultFolder, columns: Sequence[Column] = ()) -> list[Any]:
        s = folder.summaries.get("toy")
        if not s:
            return []
        fig = new_figure(3, 2)
        ax = fig.subplots()
        langs = list(s["mean_tokens"])
        ax.bar(langs, [s["mean_tokens"][k] for k in langs])
        path = save(fig, folder.path / "fig_toy.png")
        table = Table("Toy tokens per language", ["language", "tokens"],
                      [[k, f"{v:.1f}"] for k, v in s["mean_tokens"].items()])  # fmt: skip
        return [table, Figure("toy", path, "Toy figure: question tokens per language.")]


def print_summary(summary: dict[str, Any], out: Path | None = None) -> None:
    out_console.print(f"toy: factor {summary['factor']}, mean tokens {summary['mean_tokens']}")


STAGE = StageDef(
    "toy",
    table=TABLE,
    summary=SUMMARY,
    build=build,
    section="toy",
    config=ToyConfig,
    precheck=precheck,
    report=ToyReport,
    printer="toy_plugin:print_summary",
    help="A toy stage defined in the tests.",
)


@dataclass(kw_only=True)
class ToyCountStage(Stage):
    """Characters per question: a stage that needs no model (``needs_model=False``: built from a plan)."""

    def rows(self, unit: Unit) -> pd.DataFrame:
        return pd.DataFrame(
            [{"language": unit.language, "item_id": i, "chars": len(self.ds.item(unit.language, i).question)}
             for i in unit.item_ids]
        )  # fmt: skip

    def summarize(self) -> dict[str, Any]:
        summary = {"mean_chars": self.read().groupby("language")["chars"].mean().to_dict()}
        self.store.write_json("toy_count_summary.json", summary)
        return summary


def build_count(plan: Plan) -> ToyCountStage:
    template = get_template(plan.dataset.template or plan.data.template)
    return ToyCountStage(
        ds=plan.data,
        table="toy_count",
        store=Store(plan.out),
        fingerprint=prompt_fingerprint(plan.spec, plan.model.dtype, plan.data, template),
        meta={"built_from": type(plan).__name__},
        units=plan_units(plan.data, plan.data.languages, plan.run.chunk_size),
    )


COUNT = StageDef(
    "toy_count",
    table="toy_count",
    summary="toy_count_summary.json",
    build=build_count,
    command="toy-count",
    needs_model=False,
    help="Characters per question (a toy stage that needs no model).",
)


class HalfLens(Lens):
    """The logit lens of half the state (a lens kind only the tests know)."""

    kind = "half"

    def translate(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        return h * 0.5

    @classmethod
    def for_spec(cls, spec: LensSpec, lm: LoadedModel) -> HalfLens:
        return cls(lm.anatomy)


LENS = LensKind("half", HalfLens.for_spec, "Half lens")
