"""Run a whole experiment from a config: every model x dataset through every stage, then the report.

For each model (loaded once) and dataset, into ``<output>/<model-slug>/<dataset>/``: every stage
of :data:`~crosslens.stages.STAGES` the config enables, in registry order (evaluation, lens, PCA,
steering with its vector items held out), then the report of the whole output root. The ``ray``
backend (:mod:`crosslens.ray_runner`) runs the same stages' units on a Ray cluster.

Before any stage of a model x dataset writes anything, every stage checks the folder (shards,
activations, vectors) against its fingerprint and the data, so a mismatch is refused with nothing
written. Resuming is the stages' own: each computes only what is missing, so re-running a
finished experiment recomputes only the summaries (from the same rows, hence identical) and a run
killed at any moment continues where it stopped. All stages report into one progress bar.
"""

from __future__ import annotations

import gc
import json
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from crosslens import __version__
from crosslens.config import ConfigError, ExperimentConfig, check_depth, load_config
from crosslens.data import DataError, ParallelDataset, load_dataset
from crosslens.metrics import table1_line
from crosslens.models import LoadedModel, ModelSpec
from crosslens.prompts import get_template
from crosslens.report import EXPERIMENT_FILE, write_report
from crosslens.scoring import fit_context
from crosslens.stages import STAGES, Stage, precheck, run_stage
from crosslens.store import Store, atomic_write_text, check_output

__all__ = [
    "run_experiment",
    "Job",
    "load_jobs",
    "job_stages",
    "job_folder",
    "load_full_dataset",
    "demo_config_path",
    "BACKENDS",
]

BACKENDS = ("local", "ray")
EXPERIMENT = "experiment"  # the lock one run holds on its output root


def demo_config_path() -> Path:
    """The demo config shipped inside the package (the same file as examples/demo.yaml)."""
    from importlib.resources import files

    return Path(str(files("crosslens") / "resources" / "demo.yaml"))


@dataclass(frozen=True)
class Job:
    """One dataset of the experiment, loaded, with the work each stage will report."""

    index: int
    data: ParallelDataset
    shots: ParallelDataset | None = None  # where few-shot exemplars come from (None: held out of data)

    def work(self, config: ExperimentConfig) -> dict[str, int]:
        """Items each enabled stage will go through (for one model), by stage key."""
        return {d.key: d.work(config, self) for d in STAGES if d.enabled(config)}


def load_full_dataset(config: ExperimentConfig, index: int) -> ParallelDataset:
    """``datasets[index]`` as its files hold it, before ``limit`` (a tuned lens trains on the rest)."""
    d = config.datasets[index]
    return load_dataset(
        d.name, d.languages, data_dir=d.data_dir, split=d.split, strict=d.strict, pivot_file=d.pivot_file,
        pivot=d.pivot,
    )  # fmt: skip


def _fewshot_source(
    config: ExperimentConfig, index: int, full: ParallelDataset, read: ParallelDataset
) -> ParallelDataset | None:
    """The items few-shot exemplars of ``datasets[index]`` are drawn from: its ``fewshot_split``, or
    the items beyond its ``limit``, or (None) its read items, the drawn ones then held out."""
    from crosslens.evaluate import fewshot_pool

    d = config.datasets[index]
    if not config.num_fewshot:
        return None
    if d.fewshot_split is None:
        return fewshot_pool(full, read, config.num_fewshot)
    return load_dataset(
        d.name, d.languages, data_dir=d.data_dir, split=d.fewshot_split, strict=d.strict,
        pivot_file=d.pivot_file, pivot=d.pivot,
    ).require_items()  # fmt: skip


def load_jobs(config: ExperimentConfig, source: str) -> list[Job]:
    """Load every dataset (English pivot always evaluated) and check it suits the stages asked for."""
    jobs = []
    for i, d in enumerate(config.datasets):
        where = f"{source}: datasets[{i}]"
        full = load_full_dataset(config, i)
        try:
            ds = full.require_items().limit(d.limit)
            shots = _fewshot_source(config, i, full, ds)
        except DataError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if ds.pivot is not None and ds.pivot not in ds.languages:
            # Every cross-lingual view is anchored on English, so it is evaluated like any language.
            ds = replace(ds, languages=[ds.pivot, *ds.languages])
        if ds.pivot is None and (config.lens.enabled or config.steering_enabled):
            raise ConfigError(
                f"{where}: {d.name} has no English pivot, which the lens and steering need "
                "(give English items with pivot_file, or set lens.enabled and steering.enabled to false)"
            )
        if config.steering_enabled and config.steering.n_vectors >= len(ds):
            raise ConfigError(
                f"{source}: steering.n_vectors: {config.steering.n_vectors} leaves no items to "
                f"evaluate: {d.name} has {len(ds)} aligned items"
            )
        jobs.append(Job(i, ds, shots))
    return jobs


@contextmanager
def _display(
    enabled: bool, total: int
) -> Iterator[tuple[Callable[[str], None], Callable[[int], None], Console]]:
    """One overall progress bar: (set the current step's name, advance by n, console for messages)."""
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not enabled) as bar:
        task = bar.add_task("starting", total=total)
        yield (lambda what: bar.update(task, description=what)), (lambda n: bar.advance(task, n)), bar.console


def job_folder(root: Path, spec: str, job: Job) -> Path:
    """``<root>/<model-slug>/<dataset>``: where one model x dataset writes."""
    return root / ModelSpec.parse(spec).slug / job.data.name


def job_stages(
    config: ExperimentConfig, lm: LoadedModel, spec: str, job: Job, root: Path
) -> dict[str, Stage]:
    """The enabled stages of one model x dataset, planned and checked against the folder.

    Every stage is checked (shards, activations, vectors; nothing is written) before any runs, so
    a folder holding something this run must not reuse is refused before the first write.
    """
    out = job_folder(root, spec, job)
    template = get_template(config.datasets[job.index].template or job.data.template)
    job = replace(job, data=fit_context(lm, job.data, template, config.skip_long)[0])
    stages = {d.key: d.build(config, lm, spec, job, out) for d in STAGES if d.enabled(config)}
    for stage in stages.values():
        stage.check()
    return stages


def precheck_folders(config: ExperimentConfig, jobs: list[Job]) -> None:
    """Refuse, before any model loads, result folders made with another model, dtype, data source
    or prompt (the stages check everything else once planned, still before writing)."""
    keys = [d.key for d in STAGES if d.enabled(config)]
    for spec in config.models:
        for job in jobs:
            out = job_folder(config.output, spec, job)
            precheck(out, keys, spec, config.dtype, job.data, config.datasets[job.index].template)


def _write_experiment(config: ExperimentConfig, root: Path, backend: str) -> None:
    atomic_write_text(
        root / EXPERIMENT_FILE,
        json.dumps(
            {
                "command": shlex.join(sys.argv),
                "crosslens_version": __version__,
                "backend": backend,
                "config": config.model_dump(mode="json"),
            },
            indent=2,
        )
        + "\n",
    )


def run_experiment(
    config: ExperimentConfig | str | Path,
    backend: str = "local",
    progress: bool = True,
    models: Mapping[str, LoadedModel] | None = None,
    address: str | None = None,
) -> Path:
    """Run every model x dataset of ``config`` (an object or a YAML path) and return ``report.html``.

    ``backend``: ``local`` (this process, one device) or ``ray`` (units as Ray tasks on actors
    that each load a model once; ``address`` is the cluster's, None starts or joins a local one).
    ``models`` maps a spec of the config to an already-loaded model (used instead of loading it,
    e.g. in notebooks and tests). Two runs into one output root are refused while one is going.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not available (backends: {', '.join(BACKENDS)})")
    if address is not None and backend != "ray":
        raise ValueError("--address is for the ray backend (add --backend ray)")
    if backend == "ray":
        from crosslens.ray_runner import require_ray

        require_ray()
    source = "<config>"
    if not isinstance(config, ExperimentConfig):
        source = str(config)
        config = load_config(config)
    slugs = [ModelSpec.parse(spec).slug for spec in config.models]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(
            f"{source}: models: two specs share an output folder name ({', '.join(slugs)}); rename one folder"
        )
    check_output(config.output, f"{source}: output:")
    jobs = load_jobs(config, source)
    precheck_folders(config, jobs)
    root = config.output
    root.mkdir(parents=True, exist_ok=True)
    total = len(config.models) * sum(sum(job.work(config).values()) for job in jobs)
    with Store(root).lock(EXPERIMENT), _display(progress, total) as (step, advance, console):

        def say(line: str) -> None:
            if progress:
                console.print(line, highlight=False)

        if backend == "ray":
            from crosslens.ray_runner import run_on_ray

            run_on_ray(config, jobs, source, address, step, advance, say, models)
        else:
            _run_local(config, jobs, source, step, advance, say, models)
        # Written once every stage has finished: the report's "Experiment" is the run whose results
        # it shows, never a command that was refused or interrupted.
        _write_experiment(config, root, backend)
        step("report")
        return write_report(root)


def _run_local(
    config: ExperimentConfig,
    jobs: list[Job],
    source: str,
    step: Callable[[str], None],
    advance: Callable[[int], None],
    say: Callable[[str], None],
    models: Mapping[str, LoadedModel] | None,
) -> None:
    """Every model in turn, loaded once; every dataset through every stage in order."""
    for spec in config.models:
        step(f"loading {spec}")
        lm = (models or {}).get(spec) or config.load(spec)
        check_depth(config, spec, lm.anatomy.n_layers, source)
        for job in jobs:
            name = f"{ModelSpec.parse(spec).slug} · {job.data.name}"
            summaries = {}
            for key, stage in job_stages(config, lm, spec, job, config.output).items():
                step(f"{name} · {key}")
                summaries[key] = run_stage(stage, advance)
            say(f"{name}: {table1_line(summaries['eval'])}")
        del lm
        gc.collect()
