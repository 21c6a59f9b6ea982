"""The lens stage's options (config section ``lens``, the ``crosslens lens`` flags) and the refusals
that need no model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field, ValidationInfo, field_validator

from crosslens.lenses.kinds import LensError, check_trained_lenses, lens_specs, parse_lens, precheck_lens
from crosslens.lenses.options import LensTrainConfig
from crosslens.options import Cli, OptionError, Options
from crosslens.scoring.options import PROMPT_FIELDS

if TYPE_CHECKING:
    from crosslens.stages.context import Plan, Settings

__all__ = ["LensConfig", "LensTrainConfig", "LENS_SCORING", "check", "precheck"]

# The scoring options the lens honours: the prompt's shape (it ranks no full answers).
LENS_SCORING = PROMPT_FIELDS


class LensConfig(Options):
    """The multilingual lens (Fig. 2, Table 2) at the run's layers, through each lens of ``lenses``.

    ``lenses``: ``logit``, ``tuned:PATH`` (a trained lens folder), ``tuned`` with ``train:`` (the run
    trains one per model x dataset into ``<folder>/tuned_lens``), or a registered kind; each kind once.
    """

    enabled: Annotated[bool, Cli(hidden=True)] = True
    train: Annotated[LensTrainConfig | None, Cli(hidden=True)] = None
    lenses: Annotated[
        list[str],
        Field(
            min_length=1,
            validate_default=True,  # a train: section needs a lens named 'tuned' even with the default list
            description="logit or tuned:LENS_DIR (repeat to read through several)",
        ),
        Cli(("--lens",)),
    ] = ["logit"]

    @field_validator("lenses")
    @classmethod
    def _lenses(cls, v: list[str], info: ValidationInfo) -> list[str]:
        lens_specs(v)
        train = info.data.get("train")
        if train is not None and "tuned" not in v:
            raise ValueError("train: trains the lens named 'tuned' (add it; tuned:PATH is already trained)")
        if train is None and "tuned" in v:
            raise ValueError(
                "'tuned' without a folder needs train: {...} (or name a trained one: tuned:PATH)"
            )
        return v

    def spec(self, kind: str) -> str | None:
        """The entry of ``lenses`` naming ``kind`` (``tuned`` or ``tuned:PATH``), if any."""
        return next((x for x in self.lenses if parse_lens(x).kind == kind), None)

    @property
    def tuned(self) -> str | None:
        return self.spec("tuned")

    def reads(self, kind: str) -> bool:
        return self.spec(kind) is not None


def check(settings: Settings) -> None:
    """Lens folders that hold a lens (a trained lens belongs to one model), training text that exists."""
    section = settings.section
    assert isinstance(section, LensConfig)
    check_trained_lenses(section.lenses, len(settings.models))
    train = section.train
    for k, path in enumerate(train.corpus or [] if train else []):
        if not path.expanduser().is_file():
            raise OptionError(f"train.corpus[{k}]", f"{path}: no such file")
    if train is not None and train.dataset is not None:
        try:
            train.dataset.check()
        except OptionError as exc:
            raise OptionError(f"train.dataset.{exc.field}", exc.message) from None


def precheck(plan: Plan) -> None:
    """Before the model loads: an English pivot, lenses made for this depth, text to train on."""
    section = plan.section
    assert isinstance(section, LensConfig)
    if plan.data.pivot is None:
        raise OptionError(
            "enabled",
            f"{plan.data.name} has no English pivot, which the lens compares answers with (give English "
            "items with pivot_file, or turn the lens off)",
        )
    for entry in section.lenses:
        if entry == "tuned":  # trained by the run (``train:``)
            continue
        try:
            precheck_lens(entry, plan.depth)
        except LensError as exc:
            raise OptionError("lenses", str(exc)) from None
    if section.train is not None:
        from crosslens.stages.lens.corpus import train_corpus

        train_corpus(section.train, plan)  # reads the text (or refuses it) now, not after the model loads
