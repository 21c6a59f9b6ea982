"""Run a whole experiment from a config: every model x dataset through every stage, then the report.

For each model (loaded once) and dataset, into ``<output>/<model-slug>/<dataset>/``:
evaluation (all items) -> logit lens -> PCA -> steering (its vector items held out inside
:func:`~crosslens.steering.run_steering`) -> figures and the report of the whole output root.

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
from crosslens.evaluate import EvalOptions, evaluate
from crosslens.lens import run_lens
from crosslens.metrics import table1_line
from crosslens.models import LoadedModel, load_model
from crosslens.pca import run_pca
from crosslens.report import EXPERIMENT_FILE, write_report
from crosslens.steering import run_steering
from crosslens.store import atomic_write_text

__all__ = ["run_experiment", "model_slug", "demo_config_path", "BACKENDS"]

BACKENDS = ("local",)


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
class _Job:
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


def _load_datasets(config: ExperimentConfig, source: str) -> list[_Job]:
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
        jobs.append(_Job(i, ds))
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


def run_experiment(
    config: ExperimentConfig | str | Path,
    backend: str = "local",
    progress: bool = True,
    models: Mapping[str, LoadedModel] | None = None,
) -> Path:
    """Run every model x dataset of ``config`` (an object or a YAML path) and return ``report.html``.

    ``models`` maps a spec of the config to an already-loaded model (used instead of loading it,
    e.g. in notebooks and tests). Only the ``local`` backend exists: one process, one device.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not available (backends: {', '.join(BACKENDS)})")
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
    jobs = _load_datasets(config, source)
    root = config.output
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(
        root / EXPERIMENT_FILE,
        json.dumps(
            {
                "command": shlex.join(sys.argv),
                "crosslens_version": __version__,
                "config": config.model_dump(mode="json"),
            },
            indent=2,
        )
        + "\n",
    )
    batch_size = config.resolved_batch_size()
    total = len(config.models) * sum(sum(job.work(config).values()) for job in jobs)
    with _display(progress, total) as (step, advance, console):
        for spec in config.models:
            step(f"loading {spec}")
            lm = (models or {}).get(spec) or load_model(spec, device=config.device, dtype=config.dtype)
            check_depth(config, spec, lm.anatomy.n_layers, source)
            layers = config.lens_layers(lm.anatomy.n_layers)
            for job in jobs:
                ds, dcfg = job.data, config.datasets[job.index]
                out = root / model_slug(spec) / ds.name
                name = f"{model_slug(spec)} · {ds.name}"
                opts = EvalOptions(
                    template=dcfg.template, batch_size=batch_size, chunk_size=config.chunk_size
                )
                step(f"{name} · eval")
                summary = evaluate(lm, ds, out, ds.languages, opts=opts, seed=config.seed, progress=advance)
                if config.lens.enabled:
                    step(f"{name} · lens")
                    run_lens(
                        lm,
                        ds,
                        out,
                        ds.languages,
                        layers=layers,
                        opts=opts,
                        seed=config.seed,
                        progress=advance,
                    )
                if config.pca.enabled:
                    step(f"{name} · pca")
                    run_pca(
                        lm,
                        ds,
                        out,
                        layers=[layer for layer in layers if layer > 0],
                        n_items=config.pca.n_items,
                        template=dcfg.template,
                        batch_size=batch_size,
                        seed=config.seed,
                    )
                    advance(job.work(config)["pca"])
                if config.steering_enabled:
                    step(f"{name} · steering")
                    s = config.steering
                    run_steering(
                        lm,
                        ds,
                        out,
                        ds.languages,
                        s.layers_for(spec),
                        s.gammas,
                        n_vectors=s.n_vectors,
                        seed=config.seed,
                        opts=opts,
                        progress=advance,
                    )
                if progress:
                    console.print(f"{name}: {table1_line(summary)}", highlight=False)
            del lm
            gc.collect()
        step("report")
        report = write_report(root)
    return report
