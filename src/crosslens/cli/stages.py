"""One CLI command per registered stage (``crosslens eval``, ``lens``, ``pca``, ...), built from its
declaration: the flags are the fields of the options objects the stage reads (model, dataset, run,
scoring, layers, its own section), so the command line, the YAML config and the Python API share
one set of options, defaults and checks.

Every check that needs no model runs before the model loads (the options, the data, the stage's own
prechecks, the folder's fingerprints); then the model loads (unless every stage of the command is
computed from results already in the folder: ``StageDef.needs_model``), every planned stage checks
its folder in full, and the stages run with a progress bar, print their summary and draw their
figures.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from crosslens.console import out_console, progress, warn
from crosslens.data.options import DatasetConfig
from crosslens.models.options import ModelOptions
from crosslens.options import Group, OptionError, Options, options_command
from crosslens.scoring.options import ScoringOptions
from crosslens.stages.options import LayerOptions, RunOptions
from crosslens.stages.registry import StageDef, load, sections, stage_defs

__all__ = ["add_stage_commands"]


def add_stage_commands(app: typer.Typer) -> None:
    """A command per registered stage command name (stages sharing a name run together), and the
    extra commands stages declare."""
    by_command: dict[str, list[StageDef]] = {}
    for d in stage_defs():
        by_command.setdefault(d.command_name, []).append(d)
    for name, defs in by_command.items():
        _add(app, name, defs)
    for d in stage_defs():
        if d.commands:
            load(d.commands)(app)


def _groups(first: StageDef) -> dict[str, Group]:
    groups = {
        "model": Group(ModelOptions),
        "data": Group(DatasetConfig, exclude=() if "num_fewshot" in first.scoring else ("fewshot_split",)),
        "run": Group(RunOptions),
        "scoring": Group(ScoringOptions, only=first.scoring),
    }
    if first.layers is not None:
        groups["layers"] = Group(LayerOptions)
    if first.config is not None:
        groups["section"] = Group(first.config)
    return groups


_SPEC = inspect.Parameter(
    "spec",
    inspect.Parameter.KEYWORD_ONLY,
    annotation=Annotated[
        str,
        typer.Option("--model", "-m", help="alias (gemma-3-270m, smollm2-135m), gguf:PATH, folder or Hub id"),
    ],
)
_OUT = inspect.Parameter(
    "out",
    inspect.Parameter.KEYWORD_ONLY,
    annotation=Annotated[Path, typer.Option("--out", "-o", help="output folder (resumable)")],
)


def _add(app: typer.Typer, name: str, defs: list[StageDef]) -> None:
    first = defs[0]
    groups = _groups(first)

    @options_command(app, name, groups, [_SPEC, _OUT], help=first.help)
    def command(
        model: ModelOptions,
        data: DatasetConfig,
        run: RunOptions,
        scoring: ScoringOptions,
        spec: str,
        out: Path,
        layers: LayerOptions | None = None,
        section: Options | None = None,
    ) -> None:
        run_stages(defs, spec, out, model, data, run, scoring, layers, section)


def run_stages(
    defs: Sequence[StageDef],
    spec: str,
    out: Path,
    model: ModelOptions,
    data: DatasetConfig,
    run: RunOptions,
    scoring: ScoringOptions,
    layers: LayerOptions | None,
    section: Options | None,
) -> None:
    """Check everything a command can without its model, load it, then run the stages it turns on."""
    from crosslens.models.loading import ModelLoadError, load_with, model_depth
    from crosslens.stages.context import JobContext, Plan, Settings
    from crosslens.stages.fingerprints import precheck_folder
    from crosslens.stages.prompting import fewshot_source, fit_prompts
    from crosslens.store import check_output

    check_output(out)
    model.available()
    try:
        depth = model_depth(spec)
    except ModelLoadError as exc:
        raise ModelLoadError(f"--model {spec}: {exc}") from None
    first = defs[0].layers
    if layers is not None and first is not None:
        _check_layers(spec, layers.layers or [], first, depth)
    data.check()
    full = data.read()
    for line in full.drop_report():
        warn(line)
    ds = data.select(full)
    shots = fewshot_source(data, full, ds, scoring.num_fewshot)
    others = {key: (cls() if on else None) for key, (cls, on) in sections().items()}
    on = [d for d in defs if d.turned_on(section)]
    settings = Settings(
        model=model,
        run=run,
        scoring=scoring,
        layers=layers.spec() if layers is not None else LayerOptions().spec(),
        section=section,
        sections=others | ({defs[0].section: section} if defs[0].section else {}),
        models=(spec,),
        stages=tuple(d.key for d in on),
    )
    plan = Plan(
        **_fields(settings), spec=spec, dataset=data, data=ds, full=full, out=out, shots=shots, depth=depth
    )
    for d in on:
        if d.check is not None:
            d.check(settings)
        if d.precheck is not None:
            d.precheck(plan)
    precheck_folder(out, [d.table for d in on], spec, model.dtype, ds, data.template)
    ctx: Plan = plan  # stages computed from the folder's results alone are built from the plan
    if any(d.needs_model for d in on):
        lm = load_with(model, spec, verbose=True)
        if layers is not None and first is not None:
            _check_layers(spec, layers.layers or [], first, lm.anatomy.n_layers)
        fitted, skipped = fit_prompts(plan, lm)
        if skipped:
            warn(f"skipped {skipped} items longer than {lm.spec}'s context")
        ctx = JobContext(**_fields(plan) | {"data": fitted, "depth": lm.anatomy.n_layers}, lm=lm)
    stages = [(d, d.plan(ctx)) for d in on]
    for _, stage in stages:
        stage.check()
    for d, stage in stages:
        summary = _run(stage, d.key)
        if d.printer:
            load(d.printer)(summary, out)
        _draw(d, out)


def _fields(obj: Any) -> dict[str, Any]:
    return {f: getattr(obj, f) for f in obj.__dataclass_fields__}


def _check_layers(spec: str, layers: Sequence[int], first: int, depth: int | None) -> None:
    """Requested layers against the model's depth (from its config before it loads, then its own)."""
    bad = [x for x in layers if x < first or (depth is not None and x > depth)]
    if bad:
        top = "" if depth is None else f"..{depth}"
        raise OptionError("layers", f"layer {bad[0]} does not exist in {spec} (layers {first}{top})")


def _run(stage: Any, what: str) -> dict[str, Any]:
    """Run a planned (and checked) stage with a progress bar over its items."""
    from crosslens.stages.base import run_stage

    with progress(sum(len(u.item_ids) for u in stage.units), what) as (advance, _, _):
        return run_stage(stage, advance)


def _draw(defn: StageDef, out: Path) -> None:
    """Draw the stage's figures for the folder (once) and say where they are."""
    from crosslens.stages.reporting import draw

    figures = draw(defn.table, out)
    if figures:
        out_console.print(f"figures: {', '.join(map(str, figures))}", highlight=False)
