"""The latent stage's options (config section ``latent``, the ``crosslens latent`` flags) and the
refusals that need no model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator

from crosslens.lenses.kinds import LensError, check_trained_lenses, lens_specs, precheck_lens
from crosslens.options import Cli, OptionError, Options
from crosslens.scoring.options import PROMPT_FIELDS

if TYPE_CHECKING:
    from collections.abc import Sequence

    from crosslens.stages.context import Plan, Settings

__all__ = ["LatentConfig", "DEFAULTS", "LATENT_SCORING", "POSITIONS", "check", "precheck", "check_languages"]

# The scoring options the latent stage honours: the prompt's shape (it ranks no answers).
LATENT_SCORING = PROMPT_FIELDS
Positions = Literal["last", "answer"]
POSITIONS: tuple[str, ...] = ("last", "answer")


class LatentConfig(Options):
    """Which language the lens's next-token distribution is in, per layer (Wendler et al. 2024), at the
    run's layers, through each lens of ``lenses``."""

    enabled: Annotated[bool, Cli(hidden=True)] = True
    lenses: Annotated[
        list[str],
        Field(min_length=1, description="logit or tuned:LENS_DIR (repeat to read through several)"),
        Cli(("--lens",)),
    ] = ["logit"]
    positions: Annotated[
        Positions,
        Field(description="last: the prompt's last token; answer: also each token of the gold answer text"),
    ] = "last"

    @field_validator("lenses")
    @classmethod
    def _lenses(cls, v: list[str]) -> list[str]:
        for spec in lens_specs(v):
            if spec.lens_kind.path is not None and spec.path is None:
                raise ValueError(
                    f"{spec.kind!r} needs its folder here: {spec.kind}:PATH (the latent stage reads a "
                    "lens that exists; train one with crosslens train-lens)"
                )
        return v


DEFAULTS = LatentConfig()  # the API's defaults are the options' own


def check(settings: Settings) -> None:
    """A trained lens belongs to one model; its folder must hold a lens."""
    section = settings.section
    assert isinstance(section, LatentConfig)
    check_trained_lenses(section.lenses, len(settings.models))


def check_languages(languages: Sequence[str]) -> None:
    """Refuse a language code that names no language (``xx``): no token can be said to be in it. A real
    language the token table cannot identify (Estonian) is read, its native mass reported missing."""
    from crosslens.data.token_languages import is_language_code  # wordfreq and torch: only when used

    for code in languages:
        if not is_language_code(code):
            raise OptionError(
                "languages",
                f"{code!r} names no language, so no token can be counted as being in it (use a language "
                "code such as de, deu_Latn or zh-Hans)",
            )


def precheck(plan: Plan) -> None:
    """Before the model loads: language codes that name languages, lenses made for this depth."""
    section = plan.section
    assert isinstance(section, LatentConfig)
    check_languages(plan.data.languages)
    for entry in section.lenses:
        try:
            precheck_lens(entry, plan.depth)
        except LensError as exc:
            raise OptionError("lenses", str(exc)) from None
