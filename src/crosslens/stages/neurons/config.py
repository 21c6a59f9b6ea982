"""The neurons stage's options (config section ``neurons``, the ``crosslens neurons`` flags)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field, ValidationError

from crosslens.data.schema import ParallelDataset
from crosslens.options import MAX_BOOT, MAX_CONTROLS, Cli, OptionError, Options, csv, first_error

if TYPE_CHECKING:
    from crosslens.stages.context import Plan

__all__ = ["NeuronsConfig", "DEFAULTS", "check_rates", "precheck", "precheck_data", "work"]

Rate = Annotated[float, Field(gt=0, le=1)]


class NeuronsConfig(Options):
    """Language-specific neurons (LAPE) and the causal test of deactivating them (docs/neurons.md)."""

    ablate: Annotated[
        list[str] | None,
        Field(description="comma-separated languages whose neurons are deactivated (default: all)"),
        Cli(parse=csv),
    ] = None
    n_text_items: Annotated[
        int, Field(ge=1, description="held-out items whose text the neurons are found from")
    ] = 50
    top_rate: Annotated[Rate, Field(description="fraction of all neurons kept by LAPE (lowest entropy)")] = (
        0.01
    )
    filter_rate: Annotated[
        Rate, Field(description="quantile of activation probabilities a candidate must exceed somewhere")
    ] = 0.95
    activation_bar: Annotated[
        Rate, Field(description="quantile a kept neuron must exceed in a language to be specific to it")
    ] = 0.95
    n_boot: Annotated[
        int, Field(ge=0, le=MAX_BOOT, description="bootstrap replicates for the paired CIs")
    ] = 1000
    controls: Annotated[
        int,
        Field(
            ge=1,
            le=MAX_CONTROLS,
            description="random-neuron control sets per ablated language, each as many neurons of the same "
            "layers (the null the LAPE effect is compared with)",
        ),
    ] = 1
    enabled: Annotated[bool, Cli(hidden=True)] = True


DEFAULTS = NeuronsConfig()  # the API's defaults are the options' own


def check_rates(top_rate: float, filter_rate: float, activation_bar: float) -> None:
    """Refuse a LAPE rate outside (0, 1], naming it (the options' own rule, for the pure functions)."""
    try:
        NeuronsConfig(top_rate=top_rate, filter_rate=filter_rate, activation_bar=activation_bar)
    except ValidationError as exc:
        raise OptionError(*first_error(exc)) from None


def precheck(plan: Plan) -> None:
    section = plan.section
    assert isinstance(section, NeuronsConfig)
    precheck_data(section, plan.data)


def precheck_data(section: NeuronsConfig, ds: ParallelDataset) -> None:
    """Two languages at least, known languages to ablate, items left once the neurons' text is held out."""
    languages = ds.languages
    if len(languages) < 2:
        raise OptionError(
            "languages", f"language-specific neurons need at least 2 languages; {ds.name} has {languages}"
        )
    for m in section.ablate or []:
        if m not in languages:
            raise OptionError("ablate", f"{m!r} is not one of the languages ({', '.join(languages)})")
    if section.n_text_items >= len(ds):
        raise OptionError(
            "n_text_items", f"{section.n_text_items} leaves no items to evaluate ({len(ds)} aligned items)"
        )


def work(plan: Plan) -> int:
    section = plan.section
    assert isinstance(section, NeuronsConfig)
    return max(0, len(plan.data) - section.n_text_items) * len(plan.data.languages)
