"""Run a whole experiment from a config: every model x dataset through every stage, then the report.

For each model (loaded once) and dataset, into ``<output>/<model-slug>/<dataset>/``: every
registered stage the config turns on, in registry order (evaluation, lens, PCA, similarity,
neurons, steering), then the report of the whole output root. The ``ray`` backend
(:mod:`crosslens.experiment.ray`) runs the same stages' units on a Ray cluster.

Before any model loads, every stage's prechecks run on every model x dataset (its data read, its
depth from the model's config), and every stage's folder is checked against the part of its
fingerprint known without the model; once a model loads, every stage checks the folder (shards,
activations, vectors) against its full fingerprint before the first write, so a mismatch is
refused with nothing written. Resuming is the stages' own: each computes only what is missing, so
re-running a finished experiment recomputes only the summaries (from the same rows, hence
identical) and a run killed at any moment continues where it stopped. All stages report into one
progress bar.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Mapping
from pathlib import Path

from crosslens import __version__
from crosslens.console import progress as progress_bar
from crosslens.experiment.config import ConfigError, ExperimentConfig, check_depth, load_config
from crosslens.experiment.jobs import Job, job_stages, load_jobs, precheck_jobs
from crosslens.experiment.report import EXPERIMENT_FILE, write_report
from crosslens.models.loading import LoadedModel, ModelSpec
from crosslens.scoring.metrics import table1_line
from crosslens.stages.base import command_line, run_stage
from crosslens.store import Store, atomic_write_text, check_output

__all__ = ["run_experiment", "demo_config_path", "BACKENDS", "EXPERIMENT"]

BACKENDS = ("local", "ray")
EXPERIMENT = "experiment"  # the lock one run holds on its output root


def demo_config_path(full: bool = False) -> Path:
    """The demo config shipped inside the package: the quick one a newcomer waits a few minutes for
    (the same file as examples/demo-quick.yaml) or, ``full``, every item and setting
    (examples/demo.yaml)."""
    from importlib.resources import files

    return Path(str(files("crosslens") / "resources" / ("demo.yaml" if full else "demo-quick.yaml")))


def _write_experiment(config: ExperimentConfig, root: Path, backend: str) -> None:
    atomic_write_text(
        root / EXPERIMENT_FILE,
        json.dumps(
            {
                "command": command_line(),
                "crosslens_version": __version__,
                "backend": backend,
                "config": config.as_yaml(),
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
        from crosslens.experiment.ray import require_ray

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
    precheck_jobs(config, jobs, source, models)
    root = config.output
    root.mkdir(parents=True, exist_ok=True)
    total = sum(sum(job.work(config, spec).values()) for spec in config.models for job in jobs)
    with Store(root).lock(EXPERIMENT), progress_bar(total, "starting", progress) as (advance, step, console):

        def say(line: str) -> None:
            if progress:
                console.print(line, highlight=False)

        if backend == "ray":
            from crosslens.experiment.ray import run_on_ray

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
            for key, stage in job_stages(config, lm, spec, job, source).items():
                step(f"{name} · {key}")
                summaries[key] = run_stage(stage, advance)
            if "eval" in summaries:
                say(f"{name}: {table1_line(summaries['eval'])}")
        del lm
        gc.collect()
