"""The stage registry: every stage declared once, by the folder that implements it.

Each stage package below :mod:`crosslens.stages` defines ``STAGES`` (its :class:`StageDef` entries)
in its ``__init__``; :data:`BUILTIN` lists those packages, in run order (the lens's Table 2 reads
the evaluation's records; steering runs last). :func:`register` adds a stage from elsewhere (a
plugin, a test). The experiment config, the local and Ray runners, the CLI and the report iterate
:func:`stage_defs`: nothing else lists the stages.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from crosslens.options import Options

if TYPE_CHECKING:
    from crosslens.stages.base import Stage
    from crosslens.stages.context import JobContext, Plan, Settings

__all__ = [
    "StageDef",
    "BUILTIN",
    "register",
    "unregister",
    "extra_stages",
    "stage_defs",
    "stage_def",
    "sections",
    "load",
]

# The registry lines: one stage package each, in run order.
BUILTIN = (
    "crosslens.stages.evaluate",
    "crosslens.stages.lens",
    "crosslens.stages.inspect",
    "crosslens.stages.words",
    "crosslens.stages.latent",
    "crosslens.stages.divergence",
    "crosslens.stages.pca",
    "crosslens.stages.similarity",
    "crosslens.stages.neurons",
    "crosslens.stages.steering",
)


def load(ref: str) -> Any:
    """The object a ``module:attribute`` reference names (imported on use, so the registry stays light)."""
    module, _, name = ref.partition(":")
    return getattr(import_module(module), name)


def _all_items(plan: Plan) -> int:
    return len(plan.data) * len(plan.data.languages)


@dataclass(frozen=True)
class StageDef:
    """One stage, declared once.

    ``key``: its name (progress, summaries by key, report order); ``table``: the folder of its shards
    and its run.json entry; ``summary``: its summary file (a folder holding one is a result folder);
    ``build``: ``module:function(JobContext) -> Stage``; ``section`` and ``config``: its config
    section's key and options class (None: it always runs; several stages may share a section and
    say which of them it turns on with ``runs``); ``command``: its CLI command (stages sharing one
    run together); ``default_on``: whether the section is on when a config omits it; ``work``:
    items its units hold, for progress bars before a model loads; ``check``: refusals of its
    options alone (when a config is read or a command parsed), ``precheck``: refusals that need a
    model x dataset's data but no model (both raise :class:`~crosslens.options.OptionError` naming a
    field, which the config spells as a key and the CLI as a flag); ``layers``: the first
    layer it reads of the run's layer schedule (None: it reads no schedule); ``scoring``: the
    :class:`~crosslens.scoring.options.ScoringOptions` fields it honours (a config that sets
    another is refused); ``report``: ``module:attribute`` of its report part (or a function
    returning it); ``printer``:
    ``module:function(summary, folder)`` printing its summary after a CLI run; ``commands``:
    ``module:function(app)`` adding commands of its own (``metrics``, ``train-lens``);
    ``needs_model``: False for a stage computed from other stages' results in the folder alone (it
    is built from a :class:`~crosslens.stages.context.Plan`; a command whose stages all need none
    loads no model, and the Ray runner plans it once every stage that does has finished).
    """

    key: str
    table: str
    summary: str
    build: str | Callable[[JobContext], Stage] | Callable[[Plan], Stage]
    section: str | None = None
    config: type[Options] | None = None
    command: str | None = None
    default_on: bool = False
    work: Callable[[Plan], int] = _all_items
    check: Callable[[Settings], None] | None = None
    precheck: Callable[[Plan], None] | None = None
    runs: Callable[[Any], bool] | None = None
    layers: int | None = None
    scoring: tuple[str, ...] = ()
    report: str | Callable[[], Any] | None = None
    printer: str | None = None
    commands: str | None = None
    needs_model: bool = True
    help: str = ""

    @property
    def command_name(self) -> str:
        return self.command or self.key

    def turned_on(self, section: Any) -> bool:
        """Whether this stage runs under ``section`` (the config's value of its section key)."""
        if self.section is None:
            return True
        if section is None or not getattr(section, "enabled", True):
            return False
        return self.runs(section) if self.runs is not None else True

    def plan(self, ctx: Plan) -> Stage:
        """The stage for one model x dataset, planned (nothing computed): from a
        :class:`~crosslens.stages.context.JobContext`, or a plan alone where it needs no model."""
        build = load(self.build) if isinstance(self.build, str) else self.build
        return build(ctx)


_EXTRA: list[StageDef] = []


def register(defn: StageDef) -> StageDef:
    """Add a stage defined outside :data:`BUILTIN` (runs after the built-in ones)."""
    if any(d.key == defn.key for d in stage_defs()):
        raise ValueError(f"a stage named {defn.key!r} is already registered")
    _EXTRA.append(defn)
    return defn


def unregister(key: str) -> None:
    """Remove a stage added by :func:`register` (tests register toy stages and remove them)."""
    _EXTRA[:] = [d for d in _EXTRA if d.key != key]


def extra_stages() -> tuple[StageDef, ...]:
    """The stages added by :func:`register` (a Ray worker registers the driver's again)."""
    return tuple(_EXTRA)


def stage_defs() -> tuple[StageDef, ...]:
    """Every stage, in run order."""
    defs: list[StageDef] = []
    for package in BUILTIN:
        declared = load(f"{package}:STAGES")  # a tuple, or a function of other registries (lens kinds)
        defs += declared() if callable(declared) else declared
    return (*defs, *_EXTRA)


def stage_def(key: str) -> StageDef:
    """The stage named ``key``; a typo is answered with the closest name."""
    defs = {d.key: d for d in stage_defs()}
    if key not in defs:
        close = difflib.get_close_matches(key, list(defs), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown stage {key!r}{hint}; stages: {', '.join(defs)}")
    return defs[key]


def sections() -> dict[str, tuple[type[Options], bool]]:
    """Config section key -> (options class, on by default), in stage order."""
    out: dict[str, tuple[type[Options], bool]] = {}
    for d in stage_defs():
        if d.section is not None and d.config is not None:
            out.setdefault(d.section, (d.config, d.default_on))
    return out
