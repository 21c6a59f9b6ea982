"""Multilingual lens readings (paper §2.2, §4.2, Fig. 2, Table 2), through every registered lens kind.

One stage per lens kind (:mod:`crosslens.lenses.kinds`): the logit lens writes ``lens/``, the tuned
lens ``lens_tuned/``, a kind registered later ``lens_<kind>/``; all share the config section
``lens`` and the command ``crosslens lens`` (``--lens`` names the kinds to read through).
"""

from __future__ import annotations

from typing import Any

from crosslens.lenses.kinds import lens_kinds, lens_table
from crosslens.stages.lens.config import LENS_SCORING, LensConfig, check, precheck
from crosslens.stages.registry import StageDef

LENS = lens_table("logit")


def stage_key(kind: str) -> str:
    """The stage's name: ``lens`` for the logit lens (as before lens kinds), else ``<kind>_lens``."""
    return LENS if kind == "logit" else f"{kind}_lens"


def _build(kind: str) -> Any:
    def build(ctx: Any) -> Any:
        from crosslens.stages.lens.stage import build_for

        return build_for(ctx, kind)

    return build


def _report(kind: str) -> Any:
    from crosslens.stages.lens.report import LensReport

    return LensReport(kind)


def STAGES() -> tuple[StageDef, ...]:  # noqa: N802 - the registry's name for a package's stages
    """One stage per registered lens kind, logit first."""
    return tuple(
        StageDef(
            stage_key(kind),
            table=lens_table(kind),
            summary=f"{lens_table(kind)}_summary.json",
            build=_build(kind),
            section="lens",
            config=LensConfig,
            command="lens",
            default_on=True,
            runs=lambda section, kind=kind: section.reads(kind),
            layers=0,
            scoring=LENS_SCORING,
            check=check,
            precheck=precheck,
            report=lambda kind=kind: _report(kind),
            printer="crosslens.stages.lens.cli:print_summary",
            commands="crosslens.stages.lens.cli:add_commands" if kind == "logit" else None,
            help="Lens readings: native vs English answer probabilities per layer, latent accuracy, Table 2.",
        )
        for kind in lens_kinds()
    )
