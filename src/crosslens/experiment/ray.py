"""The Ray backend of ``crosslens run``: the experiment's units as tasks on a Ray cluster.

Work is cut exactly as by the local backend (:mod:`crosslens.stages`): per model x dataset, the
units of every enabled stage of the registry (a language x a fixed chunk of item ids; PCA is one);
a stage computed from the others' results (``StageDef.needs_model`` false) is planned once every
unit of the stages that need the model has been written.
Each model gets ``ray.workers_per_model`` actors (:class:`ModelWorker`) that load it once, with the
CPU / GPU request of ``ray.num_cpus`` / ``ray.num_gpus``; the driver hands each free actor of a model
the next unit of that model, so every unit of a model runs where the model already is.

Units write their own Parquet shards atomically into the shared output root, hence:

* a worker killed mid-unit leaves no shard of that unit; Ray restarts the actor (which reloads the
  model) and retries the unit, up to ``ray.max_retries`` times: no row is lost or written twice;
* re-running the command resumes: finished units are not sent again;
* the driver holds the output root's experiment lock for the whole run, so a second run into the
  same root (local or Ray) is refused with a message naming the holder.

The driver plans the units and writes the report; workers need the output root (a shared file
system across machines), the data and the model (Hub access, or a cache every node sees).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from crosslens.errors import CrosslensError
from crosslens.experiment.config import ExperimentConfig, check_depth
from crosslens.experiment.jobs import Job, job_stages, load_jobs
from crosslens.lenses.kinds import LensKind, lens_kinds, register_lens
from crosslens.models.loading import LoadedModel, ModelSpec
from crosslens.scoring.metrics import table1_line
from crosslens.stages.base import Stage
from crosslens.stages.registry import StageDef, extra_stages, register

__all__ = ["ModelWorker", "RayBackendError", "require_ray", "run_on_ray"]


class RayBackendError(CrosslensError, RuntimeError):
    """Ray is missing, or a unit failed on a worker for a reason retrying cannot mend."""


class ModelWorker:
    """A Ray actor: one model, loaded once, running units of every dataset of the experiment."""

    def __init__(
        self,
        config: ExperimentConfig,
        spec: str,
        source: str,
        cwd: str,
        preloaded: LoadedModel | None = None,
        plugins: tuple[tuple[StageDef, ...], tuple[LensKind, ...]] = ((), ()),
    ):
        # Stages and lens kinds registered in the driver (plugins, tests) are registered here too.
        stages, kinds = plugins
        known = {d.key for d in extra_stages()}
        for d in stages:
            if d.key not in known:
                register(d)
        for kind in kinds:
            if kind.kind not in lens_kinds():
                register_lens(kind)
        # Relative paths of the config (output, data_dir, model folders) mean what they mean for
        # the command that started the run, on every node.
        try:
            os.chdir(cwd)
        except OSError as exc:
            raise RayBackendError(
                f"a Ray worker on {os.uname().nodename} cannot enter the run's working directory {cwd} "
                f"({exc.strerror}): every node must mount the output root and data at the same paths"
            ) from None
        # Each worker reads the data itself (as the driver did: the same files, the same items), so
        # nothing it needs to restart lives in the driver's object store.
        self.config, self.spec, self.source, self.jobs = config, spec, source, load_jobs(config, source)
        self.lm = preloaded or config.load(spec)
        check_depth(config, spec, self.lm.anatomy.n_layers, source)
        self._stages: dict[int, dict[str, Stage]] = {}

    def _stage(self, job: int, key: str) -> Stage:
        """Stages are rebuilt from the config on demand, so a restarted worker knows them again."""
        if job not in self._stages:
            self._stages[job] = job_stages(self.config, self.lm, self.spec, self.jobs[job], self.source)
        return self._stages[job][key]

    def plan(self, job: int, key: str) -> list[tuple[str, int, bool]]:
        """Check the folder and record the stage's fingerprint (building steering vectors or
        activations once); list (unit, items, to do)."""
        stage = self._stage(job, key)
        with stage.store.lock(stage.table):
            done = stage.begin()
        return [(u.name, len(u.item_ids), bool(stage.todo(u, done))) for u in stage.units]

    def run_unit(self, job: int, key: str, name: str) -> None:
        stage = self._stage(job, key)
        with stage.store.lock(stage.table, shared=True):
            # Only what is missing now: a retried unit's first worker may have died after a rename.
            stage.write(stage.unit(name))

    def summarize(self, job: int, keys: list[str]) -> dict[str, Any]:
        """Summaries from the tables alone, in stage order (the lens's Table 2 reads the records)."""
        return {key: self._stage(job, key).summarize() for key in keys}


@dataclass
class _Call:
    """One method call for some actor of a model, and what to do with its result."""

    method: str
    args: tuple[Any, ...]
    what: str
    done: Callable[[Any], None] = field(default=lambda result: None)


def require_ray() -> Any:
    """The ``ray`` module, or one clear error naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise RayBackendError(
            "the ray backend needs Ray: pip install 'crosslens[ray]' (or use --backend local)"
        ) from None
    return ray


def run_on_ray(
    config: ExperimentConfig,
    jobs: list[Job],
    source: str,
    address: str | None,
    step: Callable[[str], None],
    advance: Callable[[int], None],
    say: Callable[[str], None],
    models: Mapping[str, LoadedModel] | None = None,
) -> None:
    """Run every unit of every model x dataset on Ray; return when all are written and summarised.

    Joins the running Ray instance if this process already has one (``ray.init`` called before),
    else connects to ``address`` (None: start a local one) and shuts it down at the end.
    """
    ray = require_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, logging_level="WARNING")
    rc = config.ray
    worker_cls = ray.remote(ModelWorker).options(
        num_cpus=rc.num_cpus,
        num_gpus=rc.gpus(config.device),
        max_restarts=rc.max_retries,
        max_task_retries=rc.max_retries,
    )
    # Stages computed from the others' results (no model of their own) run once those have finished.
    on = config.stages()
    phases = [[d.key for d in on if d.needs_model], [d.key for d in on if not d.needs_model]]
    plugins = (extra_stages(), tuple(k for k in lens_kinds().values() if not k.builtin))
    actors: dict[str, list[Any]] = {}
    queues: dict[str, deque[_Call]] = {}
    try:
        for spec in config.models:
            preloaded = (models or {}).get(spec)
            actors[spec] = [
                worker_cls.remote(config, spec, source, os.getcwd(), preloaded, plugins)
                for _ in range(rc.workers_per_model)
            ]
            queues[spec] = deque()
            for job in jobs:
                _queue_job(config, spec, job, phases, queues[spec], advance, say)
        _dispatch(ray, actors, queues, step)
    finally:
        for pool in actors.values():
            for actor in pool:
                ray.kill(actor, no_restart=True)
        if started:
            ray.shutdown()


def _queue_job(
    config: ExperimentConfig,
    spec: str,
    job: Job,
    phases: list[list[str]],
    queue: deque[_Call],
    advance: Callable[[int], None],
    say: Callable[[str], None],
) -> None:
    """Queue the plans (then units) of one model x dataset, phase by phase (a phase's stages are
    planned once every unit of the phase before has been written); its summary once nothing is left."""
    name = f"{ModelSpec.parse(spec).slug} · {job.data.name}"
    keys = [key for phase in phases for key in phase]
    waiting = [phase for phase in phases if phase]
    left = {"n": 0}

    def start(phase: list[str]) -> None:
        left["n"] += len(phase)
        for key in phase:
            queue.append(_Call("plan", (job.index, key), f"{name} · {key} (plan)", planned(key)))

    def finished(_: Any = None) -> None:
        left["n"] -= 1
        if left["n"] == 0 and waiting:
            start(waiting.pop(0))
        elif left["n"] == 0:
            queue.append(_Call("summarize", (job.index, keys), f"{name} · summaries", report))

    def report(summaries: dict[str, Any]) -> None:
        if "eval" in summaries:
            say(f"{name}: {table1_line(summaries['eval'])}")

    def unit_done(n_items: int) -> Callable[[Any], None]:
        def done(_: Any) -> None:
            advance(n_items)
            finished()

        return done

    def planned(key: str) -> Callable[[list[tuple[str, int, bool]]], None]:
        def done(units: list[tuple[str, int, bool]]) -> None:
            for unit, n_items, todo in units:
                if todo:
                    left["n"] += 1
                    queue.append(
                        _Call(
                            "run_unit", (job.index, key, unit), f"{name} · {key} {unit}", unit_done(n_items)
                        )
                    )
                else:
                    advance(n_items)
            finished()

        return done

    start(waiting.pop(0))


def _dispatch(
    ray: Any, actors: dict[str, list[Any]], queues: dict[str, deque[_Call]], step: Callable[[str], None]
) -> None:
    """Keep every actor busy with its model's next call until all queues are empty."""
    idle = {spec: list(pool) for spec, pool in actors.items()}
    running: dict[Any, tuple[str, Any, _Call]] = {}
    while running or any(queues.values()):
        for spec, queue in queues.items():
            while idle[spec] and queue:
                actor, call = idle[spec].pop(), queue.popleft()
                running[getattr(actor, call.method).remote(*call.args)] = (spec, actor, call)
        step(f"ray · {len(running)} running · {sum(map(len, queues.values()))} queued")
        ready, _ = ray.wait(list(running), num_returns=1)
        for ref in ready:
            spec, actor, call = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:
                cause = getattr(exc, "cause", None) or exc
                raise RayBackendError(f"{call.what} failed on a Ray worker: {_one_line(cause)}") from exc
            idle[spec].append(actor)
            call.done(result)
            if not any(queues[spec]) and len(idle[spec]) == len(actors[spec]):
                for a in actors[spec]:  # this model is finished: free its GPUs for the next one
                    ray.kill(a, no_restart=True)
                actors[spec].clear()
                idle[spec] = []


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"
