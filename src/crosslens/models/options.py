"""How a model is loaded: device, precision and memory split (the CLI's flags and the YAML's keys)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from crosslens.models.devices import check_device, dtype_name
from crosslens.options import Cli, Options

__all__ = ["ModelOptions", "DtypeChoice"]

DtypeChoice = Literal["float32", "bfloat16", "float16", "bf16-mixed", "auto"]


class ModelOptions(Options):
    """Device and precision of every model of a run; ``auto`` is resolved to the concrete dtype the
    device runs (what results record, so folders made on machines of another kind are refused)."""

    device: Annotated[str, Field(description="cpu, cuda, cuda:N, mps or auto (split across GPUs)")] = "cpu"
    dtype: Annotated[
        DtypeChoice,
        Field(
            description="float32, bfloat16, float16, bf16-mixed (bfloat16 matmuls, float32 residual stream) "
            "or auto (bfloat16 where the device has bfloat16 matrix units)"
        ),
    ] = "float32"
    max_memory: Annotated[
        dict[str | int, str] | None,
        Field(description="per-device memory for device auto, e.g. {0: 70GiB, cpu: 200GiB}"),
        Cli(hidden=True),
    ] = None

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        return check_device(v, available=False)

    @field_validator("max_memory")
    @classmethod
    def _memory_needs_auto(cls, v: dict | None, info) -> dict | None:
        if v and info.data.get("device") != "auto":
            raise ValueError("is only used with device: auto (which splits a model across devices)")
        return v

    @model_validator(mode="after")
    def _concrete_dtype(self) -> ModelOptions:
        object.__setattr__(self, "dtype", dtype_name(self.dtype, self.device))  # frozen model
        return self

    def available(self) -> ModelOptions:
        """This machine has the device (checked before a model loads; a config may name another's)."""
        check_device(self.device)
        return self
