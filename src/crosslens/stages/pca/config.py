"""The PCA stage's options (config section ``pca``, the ``crosslens pca`` flags)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from crosslens.options import Cli, OptionError, Options

if TYPE_CHECKING:
    from crosslens.stages.context import Plan, Settings

__all__ = ["PcaConfig", "DEFAULTS", "check", "work"]


class PcaConfig(Options):
    """PCA of last-token activations (Fig. 3) on a seeded sample of parallel items."""

    n_items: Annotated[int, Field(ge=2, description="parallel items to project (the paper uses 50)")] = 50
    enabled: Annotated[bool, Cli(hidden=True)] = True


DEFAULTS = PcaConfig()  # the API's defaults are the options' own


def check(settings: Settings) -> None:
    """PCA reads layers above the embeddings: an explicit layer list needs one."""
    if isinstance(settings.layers, list) and max(settings.layers, default=0) < 1:
        raise OptionError(
            "layers", "PCA needs a layer >= 1 (layer 0 is the embeddings), or set pca.enabled: false"
        )


def work(plan: Plan) -> int:
    section = plan.section
    assert isinstance(section, PcaConfig)
    return min(section.n_items, len(plan.data))
