"""The inspection's options (config section ``inspect``, the flags of ``crosslens inspect`` and
``crosslens inspect-items``) and the refusals that need no model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator

from crosslens.lenses.kinds import check_trained_lenses, lens_specs
from crosslens.options import Cli, Options

if TYPE_CHECKING:
    from crosslens.stages.context import Plan, Settings

__all__ = ["InspectConfig", "DEFAULTS", "MAX_TOP_K", "INSPECT_SCORING", "check", "precheck", "work"]

# The prompt options it honours: the chat turn (an instruct model reads its questions so), never
# few-shot exemplars, which would make the picture a wall of exemplar positions.
INSPECT_SCORING = ("apply_chat_template", "system_instruction")
MAX_TOP_K = 50  # tokens a hover box lists at most


class InspectConfig(Options):
    """The lens picture of one prompt: per layer and position, the top tokens through each lens.

    ``lenses``: ``logit``, ``tuned:PATH`` (a trained lens folder) or a registered kind; each once.
    """

    lenses: Annotated[
        list[str],
        Field(min_length=1, description="logit or tuned:LENS_DIR (repeat to read through several)"),
        Cli(("--lens",)),
    ] = ["logit"]
    top_k: Annotated[
        int,
        Field(ge=1, le=MAX_TOP_K, description="tokens shown per cell on hover (the first is the cell's own)"),
    ] = 5
    enabled: Annotated[bool, Cli(hidden=True)] = True

    @field_validator("lenses")
    @classmethod
    def _lenses(cls, v: list[str]) -> list[str]:
        if any(spec.kind == "tuned" and spec.path is None for spec in lens_specs(v)):
            raise ValueError(
                "name the tuned lens's folder: tuned:LENS_DIR (train one with crosslens train-lens)"
            )
        return v


DEFAULTS = InspectConfig()  # the API's defaults are the options' own


def check(settings: Settings) -> None:
    section = settings.section
    assert isinstance(section, InspectConfig)
    check_trained_lenses(section.lenses, len(settings.models))


def precheck(plan: Plan) -> None:
    """Before the model loads: the lenses were made for a model of this depth."""
    section = plan.section
    assert isinstance(section, InspectConfig)
    check_trained_lenses(section.lenses, n_layers=plan.depth)


def work(plan: Plan) -> int:
    """One item (the first) in every language."""
    return len(plan.data.languages)
