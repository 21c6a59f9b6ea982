"""How a tuned lens is trained: the options ``crosslens train-lens`` and a config's ``lens.train`` share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from crosslens.data.options import DatasetConfig
from crosslens.options import Options

__all__ = ["TrainOptions", "LensTrainConfig"]


class TrainOptions(Options):
    """How a tuned lens is trained: the options ``crosslens train-lens`` and a config's ``lens.train``
    share (all of it is recorded in ``lens.json`` and checked on resume)."""

    # Bounded so that every step's and epoch's seed stays a 64-bit integer (lenses.training).
    tokens: Annotated[int, Field(ge=1, le=2**40, description="training positions in all")] = 8192
    batch: Annotated[int, Field(ge=1, description="documents per step")] = 8
    positions: Annotated[int, Field(ge=1, description="positions drawn per document and step")] = 32
    seq_len: Annotated[int, Field(ge=2, description="tokens kept of each document")] = 128
    val_tokens: Annotated[int, Field(ge=1, description="validation positions")] = 1024
    lr: Annotated[float, Field(gt=0, allow_inf_nan=False, description="Adam's learning rate (peak)")] = 1e-3
    checkpoint_every: Annotated[int, Field(ge=1, description="steps between resumable checkpoints")] = 20
    head_dtype: Annotated[
        Literal["auto", "bfloat16", "float32"],
        Field(description="the frozen head's dtype in training: auto (bfloat16 where the hardware has it)"),
    ] = "auto"


class LensTrainConfig(TrainOptions):
    """How ``crosslens run`` trains the tuned lens it reads with (docs/lens.md; the train-lens options).

    Text: ``corpus`` files, or ``dataset``'s item inputs, or (neither) the inputs of the read
    dataset's items beyond its limit (never the items the lens reads).
    """

    corpus: list[Path] | None = None  # text files, a document per line
    dataset: DatasetConfig | None = None  # e.g. xstorycloze train

    @model_validator(mode="after")
    def _one_source(self) -> LensTrainConfig:
        if self.corpus and self.dataset:
            raise ValueError("give corpus (text files) or dataset, not both")
        return self
