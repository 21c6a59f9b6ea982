"""Per-item divergence (issue 27, part 4): per item and language, the layer after which the lens's
native and English readings of the answers stop agreeing, and whether it predicts, item by item,
that the final answer differs from English's or that English's correct answer does not transfer.

Computed from the results already in the folder (the lens readings and the evaluation records, read
by table name), so it loads no model. One stage per lens kind, like the lens: ``divergence/`` from
the logit lens's readings, ``divergence_<kind>/`` from another's; all share the config section
``divergence`` and the command ``crosslens divergence`` (``--lens`` names the readings to compare).
"""

from __future__ import annotations

from typing import Any

from crosslens.lenses.kinds import lens_kinds
from crosslens.stages.divergence.config import DivergenceConfig, check, precheck, work
from crosslens.stages.registry import StageDef

DIVERGENCE = "divergence"


def divergence_table(kind: str) -> str:
    """The table (and summary file stem) of the divergence through a lens kind."""
    return DIVERGENCE if kind == "logit" else f"{DIVERGENCE}_{kind}"


def stage_key(kind: str) -> str:
    """The stage's name: ``divergence`` for the logit lens, else ``<kind>_divergence``."""
    return DIVERGENCE if kind == "logit" else f"{kind}_{DIVERGENCE}"


def _build(kind: str) -> Any:
    def build(ctx: Any) -> Any:
        from crosslens.stages.divergence.stage import build_for

        return build_for(ctx, kind)

    return build


def _report(kind: str) -> Any:
    from crosslens.stages.divergence.report import DivergenceReport

    return DivergenceReport(kind)


def STAGES() -> tuple[StageDef, ...]:  # noqa: N802 - the registry's name for a package's stages
    """One stage per registered lens kind, logit first."""
    return tuple(
        StageDef(
            stage_key(kind),
            table=divergence_table(kind),
            summary=f"{divergence_table(kind)}_summary.json",
            build=_build(kind),
            section=DIVERGENCE,
            config=DivergenceConfig,
            command=DIVERGENCE,
            runs=lambda section, kind=kind: section.reads(kind),
            work=work,
            check=check,
            precheck=lambda plan, kind=kind: precheck(plan, kind),
            layers=0,
            report=lambda kind=kind: _report(kind),
            printer="crosslens.stages.divergence.cli:print_summary",
            needs_model=False,
            help="Per-item divergence of the native and English lens readings, and whether it predicts "
            "the final answer's consistency and transfer (from the folder's lens readings and records).",
        )
        for kind in lens_kinds()
    )
