"""The jobs of an experiment: every dataset loaded once, and for each model x dataset the plans of its
stages, checked before any model loads, then the stages planned on the loaded model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from crosslens.data.options import DatasetConfig
from crosslens.data.schema import DataError, ParallelDataset
from crosslens.experiment.config import ConfigError, ExperimentConfig, yaml_key
from crosslens.models.loading import LoadedModel, ModelLoadError, ModelSpec, content_identity, model_depth
from crosslens.options import OptionError
from crosslens.stages.base import Stage
from crosslens.stages.context import JobContext, Plan
from crosslens.stages.fingerprints import precheck_folder
from crosslens.stages.prompting import fewshot_source, fit_prompts
from crosslens.stages.registry import StageDef

__all__ = ["Job", "load_jobs", "precheck_jobs", "job_folder", "job_stages"]


@dataclass(frozen=True)
class Job:
    """One dataset of the experiment, loaded: its items read, all its items, and the few-shot source."""

    index: int
    dataset: DatasetConfig
    data: ParallelDataset
    full: ParallelDataset
    shots: ParallelDataset | None = None

    def plan(self, config: ExperimentConfig, spec: str, defn: StageDef | None, depth: int | None) -> Plan:
        """What ``defn`` (None: no stage in particular) sees of this dataset for model ``spec``."""
        settings = config.settings(defn)
        values = {f: getattr(settings, f) for f in settings.__dataclass_fields__}
        return Plan(
            **values,
            spec=spec,
            dataset=self.dataset,
            data=self.data,
            full=self.full,
            out=job_folder(config.output, spec, self),
            shots=self.shots,
            depth=depth,
        )

    def work(self, config: ExperimentConfig, spec: str) -> dict[str, int]:
        """Items each enabled stage will go through (for one model), by stage key."""
        return {d.key: d.work(self.plan(config, spec, d, None)) for d in config.stages()}


def load_jobs(config: ExperimentConfig, source: str) -> list[Job]:
    """Load every dataset (English pivot always evaluated) and find its few-shot source."""
    jobs = []
    for i, d in enumerate(config.datasets):
        where = f"{source}: datasets[{i}]"
        try:
            full = d.read()
            ds = d.select(full)
            shots = fewshot_source(d, full, ds, config.num_fewshot)
        except OptionError as exc:
            key = f"datasets[{i}].{exc.field}" if exc.field in DatasetConfig.model_fields else exc.field
            raise ConfigError(f"{source}: {key}: {exc.message}") from None
        except DataError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if ds.pivot is not None and ds.pivot not in ds.languages:
            # Every cross-lingual view is anchored on English, so it is evaluated like any language.
            ds = replace(ds, languages=[ds.pivot, *ds.languages])
        jobs.append(Job(i, d, ds, full, shots))
    return jobs


def precheck_jobs(
    config: ExperimentConfig, jobs: list[Job], source: str, models: Mapping[str, LoadedModel] | None = None
) -> None:
    """Before any model loads: every enabled stage's prechecks on every model x dataset, and every
    result folder against the part of its fingerprints known without the model (``models``: the
    ones passed in loaded)."""
    for spec in config.models:
        try:
            loaded = (models or {}).get(spec)
            depth = loaded.anatomy.n_layers if loaded is not None else model_depth(spec)
            identity = loaded.identity if loaded is not None else content_identity(spec)
        except ModelLoadError as exc:
            raise ConfigError(f"{source}: models[{config.models.index(spec)}]: {exc}") from None
        for job in jobs:
            for d in config.stages():
                if d.precheck is None:
                    continue
                try:
                    d.precheck(job.plan(config, spec, d, depth))
                except OptionError as exc:
                    key = yaml_key(config, d, exc.field)
                    raise ConfigError(f"{source}: {key}: {exc.message} ({job.data.name}, {spec})") from None
            out = job_folder(config.output, spec, job)
            tables = [d.table for d in config.stages()]
            precheck_folder(out, tables, spec, config.dtype, job.data, job.dataset.template, identity)


def job_folder(root: Path, spec: str, job: Job) -> Path:
    """``<root>/<model-slug>/<dataset>``: where one model x dataset writes."""
    return root / ModelSpec.parse(spec).slug / job.data.name


def job_stages(
    config: ExperimentConfig, lm: LoadedModel, spec: str, job: Job, source: str = "<config>"
) -> dict[str, Stage]:
    """The enabled stages of one model x dataset, planned and checked against the folder.

    Every stage is checked (shards, activations, vectors; nothing is written) before any runs, so
    a folder holding something this run must not reuse is refused before the first write.
    """
    try:
        data = fit_prompts(job.plan(config, spec, None, lm.anatomy.n_layers), lm)[0]
    except OptionError as exc:  # the exemplars drawn again from the items that fit left none to read
        raise ConfigError(f"{source}: {yaml_key(config, None, exc.field)}: {exc.message}") from None
    stages = {}
    for d in config.stages():
        plan = job.plan(config, spec, d, lm.anatomy.n_layers)
        try:
            if d.precheck is not None:  # again with the loaded depth (a Hub config may be unreadable offline)
                d.precheck(plan)
        except OptionError as exc:
            raise ConfigError(f"{source}: {yaml_key(config, d, exc.field)}: {exc.message}") from None
        stages[d.key] = d.plan(JobContext(**_fields(plan), data=data, lm=lm))
    for stage in stages.values():
        stage.check()
    return stages


def _fields(plan: Plan) -> dict[str, object]:
    return {f: getattr(plan, f) for f in plan.__dataclass_fields__ if f != "data"}
