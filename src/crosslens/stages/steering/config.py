"""The steering stage's options (config section ``steering``, the ``crosslens steer`` flags)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator

from crosslens.data.schema import ParallelDataset
from crosslens.options import MAX_CONTROLS, Cli, OptionError, Options, csv, csv_floats, csv_ints, first_error
from crosslens.scoring.options import CLOZE_NORMS

if TYPE_CHECKING:
    from crosslens.stages.context import Plan, Settings

__all__ = [
    "SteeringConfig", "DEFAULTS", "POSITIONS", "STEER_CLOZE_NORMS", "check_gammas", "check", "precheck",
    "check_steering", "work",
]  # fmt: skip

POSITIONS = ("last", "all")
# pmi is left out: its empty-prompt reference would itself be steered (or not), a choice no paper
# makes for us; the length normalisations need no second reading.
STEER_CLOZE_NORMS = tuple(n for n in CLOZE_NORMS if n != "pmi")
FLOAT32_MAX = 3.4028234663852886e38


def check_gammas(gammas: Sequence[float]) -> list[float]:
    """Multipliers that gamma * v can be computed with: finite and within float32's range."""
    bad = [g for g in gammas if not math.isfinite(g) or abs(g) > FLOAT32_MAX]
    if bad:
        raise OptionError(
            "gammas", f"{bad[0]!r} is not a usable multiplier (finite, |γ| < {FLOAT32_MAX:.3g})"
        )
    return [float(g) for g in gammas]


class SteeringConfig(Options):
    """Cross-lingual activation steering (paper §2.3); gamma = 0 is always added as the baseline."""

    layers: Annotated[
        list[Annotated[int, Field(ge=1)]],
        Field(min_length=1, description="comma-separated steering layers (1..n_layers)"),
        Cli(parse=csv_ints),
    ]
    layers_by_model: Annotated[
        dict[str, list[Annotated[int, Field(ge=1)]]], Cli(hidden=True)
    ] = {}  # per-model overrides of ``layers``
    gammas: Annotated[
        list[float],
        Field(min_length=1, description="comma-separated multipliers; 0 is always added"),
        Cli(parse=csv_floats),
    ] = [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]
    n_vectors: Annotated[int, Field(ge=1, description="items the vectors are built from (held out)")] = 50
    controls: Annotated[
        int,
        Field(
            ge=0,
            le=MAX_CONTROLS,
            description="random directions of each vector's norm (+ the wrong language's vector)",
        ),
    ] = 0
    positions: Annotated[
        list[Literal["last", "all"]],
        Field(min_length=1, description="where gamma * v is added: last (the paper's), all, or last,all"),
        Cli(parse=csv),
    ] = ["last"]
    enabled: Annotated[bool, Cli(hidden=True)] = True

    @field_validator("gammas")
    @classmethod
    def _gammas_usable(cls, v: list[float]) -> list[float]:
        try:
            return check_gammas(v)
        except OptionError as exc:
            raise ValueError(exc.message) from None

    def layers_for(self, spec: str) -> list[int]:
        """The steering layers of one model (its override, else ``layers``)."""
        return self.layers_by_model.get(spec, self.layers)


DEFAULTS = SteeringConfig(layers=[1])  # the API's defaults are the options' own (layers has none)


def _cloze(cloze: bool, norm: str) -> None:
    if cloze and norm not in STEER_CLOZE_NORMS:
        raise OptionError(
            "cloze_norm", f"steering normalises full answers by {', '.join(STEER_CLOZE_NORMS)}, not {norm!r}"
        )


def check(settings: Settings) -> None:
    """Per-model layers name models of the run; full answers normalised without pmi."""
    section = settings.section
    assert isinstance(section, SteeringConfig)
    for spec in section.layers_by_model:
        if spec not in settings.models:
            raise OptionError("layers_by_model", f"{spec!r} is not one of the models")
    _cloze(settings.scoring.cloze, settings.scoring.cloze_norm)


def precheck(plan: Plan) -> None:
    """An English pivot to steer toward, items left once the vectors' items are held out, layers that
    exist in the model."""
    section = plan.section
    assert isinstance(section, SteeringConfig)
    _data(plan.data, section.n_vectors)
    if plan.depth is not None:
        bad = [layer for layer in section.layers_for(plan.spec) if layer > plan.depth]
        if bad:
            key = f"layers_by_model.{plan.spec}" if plan.spec in section.layers_by_model else "layers"
            raise OptionError(
                key, f"{bad} beyond the depth of {plan.spec} (steerable layers 1..{plan.depth})"
            )


def _data(ds: ParallelDataset, n_vectors: int) -> None:
    if ds.pivot is None:
        raise OptionError(
            "pivot_file",
            f"{ds.name} has no English pivot to steer toward (give English items with it, or turn "
            "steering off)",
        )
    if n_vectors >= len(ds):
        raise OptionError(
            "n_vectors", f"{n_vectors} leaves no items to evaluate: {ds.name} has {len(ds)} aligned items"
        )


def check_steering(
    layers: Sequence[int], gammas: Sequence[float], n_vectors: int, controls: int, positions: Sequence[str],
    opts: Any, ds: ParallelDataset,
) -> SteeringConfig:  # fmt: skip
    """The API's arguments checked as the options would be (one :class:`OptionError` naming the field)."""
    try:
        section = SteeringConfig(
            layers=list(layers), gammas=list(gammas), n_vectors=n_vectors, controls=controls,
            positions=list(positions),
        )  # fmt: skip
    except ValidationError as exc:
        raise OptionError(*first_error(exc)) from None
    _cloze(opts.cloze, opts.cloze_norm)
    _data(ds, n_vectors)
    return section


def work(plan: Plan) -> int:
    section = plan.section
    assert isinstance(section, SteeringConfig)
    return (len(plan.data) - section.n_vectors) * len(plan.data.languages)
