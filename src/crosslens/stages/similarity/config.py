"""The similarity stage's options (config section ``similarity``, the ``crosslens similarity`` flags)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from crosslens.data.schema import ParallelDataset
from crosslens.options import MAX_BOOT, Cli, OptionError, Options

if TYPE_CHECKING:
    from crosslens.stages.context import Plan, Settings

__all__ = ["SimilarityConfig", "DEFAULTS", "check", "precheck", "work", "check_sample"]

MIN_ITEMS = 4  # the debiased CKA estimator averages over tuples of four different items


class SimilarityConfig(Options):
    """CKA and cosine similarity between languages per layer (the run's layers)."""

    n_items: Annotated[
        int | None,
        Field(
            ge=MIN_ITEMS,
            description="seeded sample of parallel items (default: PCA's, sharing its activations)",
        ),
    ] = None
    pool: Annotated[
        Literal["last", "mean"],
        Field(description="last: the last prompt token's state; mean: the mean over the prompt"),
    ] = "last"
    n_boot: Annotated[
        int, Field(ge=0, le=MAX_BOOT, description="bootstrap replicates over items for the CIs")
    ] = 1000
    matrix_layer: Annotated[
        int | None,
        Field(ge=0, description="layer of the pairwise CKA matrix figure (default: the middle one)"),
    ] = None
    enabled: Annotated[bool, Cli(hidden=True)] = True

    def items(self, settings: Settings) -> int:
        """The sample size: this section's, else the PCA section's (so the two share one activation file)."""
        if self.n_items is not None:
            return self.n_items
        pca = settings.sections.get("pca")
        if pca is None or getattr(pca, "n_items", None) is None:
            raise OptionError("n_items", "is not set and there is no PCA sample to share; set it")
        return int(pca.n_items)


DEFAULTS = SimilarityConfig()  # the API's defaults are the options' own


def check(settings: Settings) -> None:
    section = settings.section
    assert isinstance(section, SimilarityConfig)
    n = section.items(settings)
    if n < MIN_ITEMS:
        raise OptionError(
            "n_items",
            f"the debiased CKA estimator needs at least {MIN_ITEMS} items; set it (it defaults to "
            f"pca.n_items = {n})",
        )


def check_sample(ds: ParallelDataset, languages: Sequence[str], n_items: int, seed: int) -> None:
    """At least two languages, and at least four items in the sample."""
    if len(languages) < 2:
        raise OptionError(
            "languages", f"similarity needs at least 2 languages; {ds.name} has {list(languages)}"
        )
    if min(n_items, len(ds)) < MIN_ITEMS:
        raise OptionError(
            "n_items", f"similarity needs at least {MIN_ITEMS} aligned items; {ds.name} has {len(ds)}"
        )


def precheck(plan: Plan) -> None:
    section = plan.section
    assert isinstance(section, SimilarityConfig)
    check_sample(plan.data, plan.data.languages, section.items(plan), plan.seed)
    if section.matrix_layer is not None and plan.depth is not None:
        read = plan.layers_for(plan.depth)
        if section.matrix_layer not in read:
            raise OptionError(
                "matrix_layer",
                f"{section.matrix_layer} is not one of the layers read for {plan.spec} ({read})",
            )


def work(plan: Plan) -> int:
    section = plan.section
    assert isinstance(section, SimilarityConfig)
    return min(section.items(plan), len(plan.data))
