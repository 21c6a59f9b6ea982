"""Options every stage shares: how a run is batched and seeded, and which layers are read."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator

from crosslens.options import Cli, Options, Seed, csv_ints
from crosslens.scoring.options import CHUNK_SIZE, PADDING_SIDE, batch_size_for

__all__ = ["RunOptions", "EveryLayers", "LayerSpec", "LayerOptions", "layers_read"]


class RunOptions(Options):
    """Batching, seeding and resume granularity (speed and sampling, never the scores themselves)."""

    batch_size: Annotated[
        int | Literal["auto"],
        Field(
            description="prompts per forward pass, or auto (16 on CPU, 64 on GPU; halves on out-of-memory)"
        ),
    ] = "auto"
    seed: Seed = 0
    chunk_size: Annotated[int, Field(ge=1, description="items per unit of work (the resume granularity)")] = (
        CHUNK_SIZE
    )
    padding_side: Annotated[
        Literal["left", "right"], Field(description="padding side for batched prompts")
    ] = PADDING_SIDE
    skip_long: Annotated[
        bool, Field(description="leave out items longer than the model's context (default: refuse them)")
    ] = False

    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch_size(cls, v: Any) -> Any:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v)
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"must be a positive integer or 'auto', got {v!r}")

    def batch(self, device: str) -> int:
        """The concrete batch size on ``device``."""
        return batch_size_for(self.batch_size, device)


class EveryLayers(Options):
    """The paper's layer schedule: every ``every``-th block, ending at the last one."""

    every: Annotated[int, Field(ge=1, description="paper schedule: every Nth block ending at the last")] = 4


def _layers_kind(value: Any) -> str | None:
    if isinstance(value, list):
        return "layer-list"
    return "every-nth" if isinstance(value, dict | EveryLayers) else None


LayerSpec = Annotated[
    Annotated[list[Annotated[int, Field(ge=0)]], Tag("layer-list")]
    | Annotated[EveryLayers, Tag("every-nth")],
    Discriminator(
        _layers_kind,
        custom_error_type="layer_spec",
        custom_error_message="expected a list of layer numbers or {every: N}",
    ),
]


def layers_read(spec: list[int] | EveryLayers, n_layers: int) -> list[int]:
    """The layers a spec names for a model with ``n_layers`` blocks (sorted, once each)."""
    if isinstance(spec, EveryLayers):
        from crosslens.models.anatomy import paper_layers

        return paper_layers(n_layers, spec.every)
    return sorted(set(spec))


class LayerOptions(Options):
    """The command line's spelling of a :data:`LayerSpec`: ``--layers 2,6,10`` or ``--every 4``."""

    layers: Annotated[
        list[Annotated[int, Field(ge=0)]] | None,
        Field(description="comma-separated layers (default: the paper's schedule, --every)"),
        Cli(parse=csv_ints),
    ] = None
    every: Annotated[int, Field(ge=1, description=EveryLayers.model_fields["every"].description)] = (
        EveryLayers.model_fields["every"].default
    )

    def spec(self) -> list[int] | EveryLayers:
        return list(self.layers) if self.layers else EveryLayers(every=self.every)
