"""Run a whole experiment from a config: every model x dataset through every stage, then the report.

For each model (loaded once) and dataset, into ``<output>/<model-slug>/<dataset>/``:
evaluation (all items) -> logit lens -> steering (its vector items held out inside
:func:`~crosslens.steering.steer_stage`) -> PCA -> figures and the report of the whole output root.
The ``ray`` backend (:mod:`crosslens.ray_runner`) runs the same stages' units on a Ray cluster.

Resuming is the stages' own: each skips the units already on disk, PCA reuses its activations
and steering its vectors, so re-running a finished experiment recomputes only the summaries (from
the same rows, hence identical) and a run killed at any moment continues where it stopped. All
stages report into one progress bar.
"""

from __future__ import annotations

import gc
import json
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

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
from crosslens.data import ParallelDataset, load_dataset
from crosslens.evaluate import EvalOptions, eval_stage
from crosslens.lens import lens_stage
from crosslens.metrics import table1_line
from crosslens.models import LoadedModel
from crosslens.pca import run_pca
from crosslens.report import EXPERIMENT_FILE, write_report
from crosslens.stages import Stage, run_stage
from crosslens.steering import steer_stage
from crosslens.store import Store, atomic_write_text

__all__ = [
    "run_experiment",
    "Job",
    "load_jobs",
    "job_stages",
    "job_pca",
    "model_slug",
    "demo_config_path",
    "BACKENDS",
]

BACKENDS = ("local", "ray")
EXPERIMENT = "experiment"  # the lock one run holds on its output root


def model_slug(spec: str) -> str:
    """Folder name for a model spec: a Hub id keeps its org (``google--gemma-2-2b``), a path its name."""
    if spec.startswith("gguf:"):
        name = Path(spec[5:]).stem
    elif spec.startswith((".", "/", "~")) or Path(spec).expanduser().is_dir():
        name = Path(spec).expanduser().resolve().name
    else:
        name = spec.replace("/", "--")
    return re.sub(r"[^A-Za-z0-9_.@-]+", "-", name).strip("-.") or "model"


def demo_config_path() -> Path:
    """The demo config shipped inside the package (the same file as examples/demo.yaml)."""
    from importlib.resources import files

    return Path(str(files("crosslens") / "resources" / "demo.yaml"))


@dataclass(frozen=True)
class Job:
    """One dataset of the experiment, loaded, with the work each stage will report."""

    index: int
    data: ParallelDataset

    def work(self, config: ExperimentConfig) -> dict[str, int]:
        n, n_lang = len(self.data), len(self.data.languages)
        work = {"eval": n * n_lang}
        if config.lens.enabled:
            work["lens"] = n * n_lang
        if config.pca.enabled:
            work["pca"] = min(config.pca.n_items, n) * n_lang
        if config.steering_enabled:
            work["steer"] = (n - config.steering.n_vectors) * n_lang
        return work


def load_jobs(config: ExperimentConfig, source: str) -> list[Job]:
    """Load every dataset (English pivot always evaluated) and check it suits the stages asked for."""
    jobs = []
    for i, d in enumerate(config.datasets):
        ds = load_dataset(d.name, d.languages, data_dir=d.data_dir, split=d.split).limit(d.limit)
        where = f"{source}: datasets[{i}]"
        if ds.pivot is not None and ds.pivot not in ds.languages:
            # Every cross-lingual view is anchored on English, so it is evaluated like any language.
            ds = replace(ds, languages=[ds.pivot, *ds.languages])
        if ds.pivot is None and (config.lens.enabled or config.steering_enabled):
            raise ConfigError(
                f"{where}: {d.name} has no English pivot, which the lens and steering need "
                "(set lens.enabled and steering.enabled to false)"
            )
        if len(ds) == 0:
            raise ConfigError(f"{where}: {d.name} has no items aligned across {', '.join(ds.languages)}")
        if config.steering_enabled and config.steering.n_vectors >= len(ds):
            raise ConfigError(
                f"{source}: steering.n_vectors: {config.steering.n_vectors} leaves no items to "
                f"evaluate: {d.name} has {len(ds)} aligned items"
            )
        jobs.append(Job(i, ds))
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


def job_stages(
    config: ExperimentConfig, lm: LoadedModel, spec: str, job: Job, root: Path
) -> dict[str, Stage]:
    """The unit-shaped stages of one model x dataset, in the order they run (PCA is not unit-shaped)."""
    ds, dcfg = job.data, config.datasets[job.index]
    out = root / model_slug(spec) / ds.name
    layers = config.lens_layers(lm.anatomy.n_layers)
    opts = EvalOptions(
        template=dcfg.template, batch_size=config.resolved_batch_size(), chunk_size=config.chunk_size
    )
    stages: dict[str, Stage] = {"eval": eval_stage(lm, ds, out, ds.languages, opts=opts, seed=config.seed)}
    if config.lens.enabled:
        stages["lens"] = lens_stage(lm, ds, out, ds.languages, layers=layers, opts=opts, seed=config.seed)
    if config.steering_enabled:
        s = config.steering
        stages["steer"] = steer_stage(
            lm, ds, out, ds.languages, s.layers_for(spec), s.gammas, s.n_vectors, config.seed, opts
        )
    return stages


def job_pca(config: ExperimentConfig, lm: LoadedModel, spec: str, job: Job, root: Path) -> dict[str, Any]:
    """PCA of one model x dataset (one piece of work: a few items' activations, then projections)."""
    layers = config.lens_layers(lm.anatomy.n_layers)
    return run_pca(
        lm,
        job.data,
        root / model_slug(spec) / job.data.name,
        layers=[layer for layer in layers if layer > 0],
        n_items=config.pca.n_items,
        template=config.datasets[job.index].template,
        batch_size=config.resolved_batch_size(),
        seed=config.seed,
    )


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
    slugs = {model_slug(spec): spec for spec in config.models}
    if len(slugs) != len(config.models):
        raise ConfigError(
            f"{source}: models: two specs share an output folder name "
            f"({', '.join(model_slug(s) for s in config.models)}); rename one folder"
        )
    jobs = load_jobs(config, source)
    root = config.output
    root.mkdir(parents=True, exist_ok=True)
    total = len(config.models) * sum(sum(job.work(config).values()) for job in jobs)
    with Store(root).lock(EXPERIMENT), _display(progress, total) as (step, advance, console):
        _write_experiment(config, root, backend)

        def say(line: str) -> None:
            if progress:
                console.print(line, highlight=False)

        if backend == "ray":
            from crosslens.ray_runner import run_on_ray

            run_on_ray(config, jobs, source, address, step, advance, say, models)
        else:
            _run_local(config, jobs, source, step, advance, say, models)
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
            name = f"{model_slug(spec)} · {job.data.name}"
            summaries = {}
            for key, stage in job_stages(config, lm, spec, job, config.output).items():
                step(f"{name} · {key}")
                summaries[key] = run_stage(stage, advance)
            if config.pca.enabled:
                step(f"{name} · pca")
                job_pca(config, lm, spec, job, config.output)
                advance(job.work(config)["pca"])
            say(f"{name}: {table1_line(summaries['eval'])}")
        del lm
        gc.collect()
