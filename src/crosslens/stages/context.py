"""What a stage is planned from: one model x dataset with its options, filled alike by the CLI
(one command) and the experiment runner (every model x dataset of a config).

:class:`Settings` is the options alone (what a stage checks when a config is read or a command
parsed); :class:`Plan` adds one model x dataset before the model loads (what prechecks and progress
bars need); :class:`JobContext` adds the loaded model. A stage builder takes a :class:`JobContext`
and nothing else: never the experiment's config, the runner or the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from crosslens.data.options import DatasetConfig
from crosslens.data.schema import ParallelDataset
from crosslens.models.loading import LoadedModel
from crosslens.models.options import ModelOptions
from crosslens.options import Options
from crosslens.scoring.options import EvalOptions, ScoringOptions
from crosslens.stages.options import EveryLayers, RunOptions, layers_read

__all__ = ["Settings", "Plan", "JobContext"]


@dataclass(frozen=True, kw_only=True)
class Settings:
    """The options of a run: ``section`` is the stage's own config section, ``sections`` every
    section by key (stages that share an artefact read each other's settings there, never each
    other's code); ``models``: the specs of the run; ``stages``: the keys of the stages the run
    turns on, in run order (a stage that reads another's results knows whether they are made
    before it)."""

    model: ModelOptions
    run: RunOptions
    scoring: ScoringOptions
    layers: list[int] | EveryLayers = field(default_factory=EveryLayers)
    section: Options | None = None
    sections: Mapping[str, Options | None] = field(default_factory=dict)
    models: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()

    @property
    def seed(self) -> int:
        return self.run.seed

    def with_section(self, section: Options | None) -> Settings:
        return replace(self, section=section)


@dataclass(frozen=True, kw_only=True)
class Plan(Settings):
    """One model x dataset before the model loads.

    ``data``: the items read (``limit`` applied, the English pivot included); ``full``: every
    aligned item of the files (a tuned lens trains on the unread ones); ``shots``: where few-shot
    exemplars come from (None: drawn from ``data`` and held out); ``depth``: the model's block
    count from its config (None where it cannot be read offline).
    """

    spec: str
    dataset: DatasetConfig
    data: ParallelDataset
    full: ParallelDataset
    out: Path
    shots: ParallelDataset | None = None
    depth: int | None = None

    def eval_options(self) -> EvalOptions:
        """How this job's prompts are made and scored."""
        return EvalOptions(
            template=self.dataset.template,
            batch_size=self.run.batch(self.model.device),
            padding_side=self.run.padding_side,
            chunk_size=self.run.chunk_size,
            cloze=self.scoring.cloze,
            cloze_norm=self.scoring.cloze_norm,
            num_fewshot=self.scoring.num_fewshot,
            apply_chat_template=self.scoring.apply_chat_template,
            system_instruction=self.scoring.system_instruction,
        )

    def layers_for(self, n_layers: int, first: int = 0) -> list[int]:
        """The schedule's layers for a model of ``n_layers`` blocks, from ``first`` on."""
        return [layer for layer in layers_read(self.layers, n_layers) if layer >= first]


@dataclass(frozen=True, kw_only=True)
class JobContext(Plan):
    """A :class:`Plan` with its model loaded (and the items past its context left out)."""

    lm: LoadedModel

    def read_layers(self, first: int = 0) -> list[int]:
        """The run's layers for this model, from ``first`` on."""
        return self.layers_for(self.lm.anatomy.n_layers, first)

    @classmethod
    def of(
        cls, plan: Plan, lm: LoadedModel, data: ParallelDataset | None = None, **changes: Any
    ) -> JobContext:
        """``plan`` with ``lm`` (and the items that fit its context)."""
        values = {f: getattr(plan, f) for f in plan.__dataclass_fields__}
        return cls(**(values | {"lm": lm} | ({"data": data} if data is not None else {}) | changes))
