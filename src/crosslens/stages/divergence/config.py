"""The divergence stage's options (config section ``divergence``, the ``crosslens divergence`` flags)
and the refusals that need no model: the lens readings and evaluation records it reads must be in
the folder (or made by the same run), made with the model, data and prompt the command names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator

from crosslens.lenses.kinds import lens_kinds, lens_table
from crosslens.options import Cli, OptionError, Options
from crosslens.scoring import RECORDS
from crosslens.stages.registry import stage_defs

if TYPE_CHECKING:
    from crosslens.stages.context import Plan, Settings

__all__ = ["DivergenceConfig", "DEFAULTS", "check", "precheck", "work", "sources"]


class DivergenceConfig(Options):
    """Per-item divergence of the native and English lens readings (at the run's layers), through each
    lens of ``lenses``, and whether it predicts the final answer; computed from the folder's lens
    readings and evaluation records (no model loads)."""

    enabled: Annotated[bool, Cli(hidden=True)] = True
    lenses: Annotated[
        list[str],
        Field(min_length=1, description="the lens whose readings to compare: logit, tuned, ... (repeat)"),
        Cli(("--lens",)),
    ] = ["logit"]
    agreement: Annotated[
        Literal["top", "rank"],
        Field(
            description="when the native and English readings agree at a layer: top, they score the same "
            "choice highest; rank, Spearman's rho of their scores is at least --min-rho"
        ),
    ] = "top"
    min_rho: Annotated[
        float, Field(ge=-1.0, le=1.0, description="the rank rule's threshold on Spearman's rho")
    ] = 0.5
    n_boot: Annotated[int, Field(ge=0, description="bootstrap replicates over items for the CIs")] = 1000

    @field_validator("lenses")
    @classmethod
    def _lenses(cls, v: list[str]) -> list[str]:
        kinds = lens_kinds()
        for entry in v:
            if entry not in kinds:
                hint = " (name the kind: the readings are already in the folder)" if ":" in entry else ""
                raise ValueError(f"unknown lens {entry!r}{hint}; lenses: {', '.join(kinds)}")
        twice = sorted({k for k in v if v.count(k) > 1})
        if twice:
            raise ValueError(f"name each lens once ({twice[0]!r} is named {v.count(twice[0])} times)")
        return v

    def reads(self, kind: str) -> bool:
        return kind in self.lenses


DEFAULTS = DivergenceConfig()  # the API's defaults are the options' own


def sources(kind: str) -> tuple[str, str]:
    """The tables the divergence through lens ``kind`` is computed from: its readings, the records."""
    return lens_table(kind), RECORDS


def check(settings: Settings) -> None:
    section = settings.section
    assert isinstance(section, DivergenceConfig)
    if section.agreement == "top" and section.min_rho != DEFAULTS.min_rho:
        raise OptionError("min_rho", "is the threshold of the rank agreement rule only (agreement: rank)")


def precheck(plan: Plan, kind: str) -> None:
    """Before any model loads: an English pivot, and the lens readings and records in the folder (or
    made by a stage of the same run), made with this model, dtype, data and prompt template."""
    if plan.data.pivot is None:
        raise OptionError(
            "enabled",
            f"{plan.data.name} has no English pivot, which divergence compares each language's "
            "readings with (give English items with pivot_file, or turn divergence off)",
        )
    # imported here: ``crosslens --help`` imports this module, and these pull in torch and pandas
    from crosslens.stages.fingerprints import precheck_folder
    from crosslens.store import Store

    store = Store(plan.out)
    made = {d.table for d in stage_defs() if d.key in plan.stages}
    readings, records = sources(kind)
    if readings not in made and not store.has_rows(readings):
        raise OptionError(
            "lenses",
            f"{plan.out} holds no {kind}-lens readings ({readings}/) to compare; read them into it first "
            "(crosslens lens, or the lens section of a config, through the same lens, model, data and "
            "layers)",
        )
    if records not in made and not store.has_rows(records):
        raise OptionError(
            "enabled",
            f"{plan.out} holds no evaluation records ({records}/) to compare the readings with the final "
            "answers; evaluate into it first (crosslens eval, with the same model and data)",
        )
    precheck_folder(
        plan.out, [readings, records], plan.spec, plan.model.dtype, plan.data, plan.dataset.template
    )


def work(plan: Plan) -> int:
    """Items times the languages compared with English."""
    return len(plan.data) * len([lang for lang in plan.data.languages if lang != plan.data.pivot])
