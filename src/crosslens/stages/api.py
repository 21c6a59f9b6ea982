"""The notebook's ``run_<stage>`` functions, made from each stage's planning function."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec

from crosslens.stages.base import Stage, run_stage
from crosslens.stages.reporting import draw

__all__ = ["runner"]

P = ParamSpec("P")


def runner(plan: Callable[P, Stage], name: str) -> Callable[P, dict[str, Any]]:
    """The notebook's ``run_<stage>`` (``name``): plan the stage with the same arguments, run it here,
    draw its figures and return its summary. A ``progress`` keyword (called with the items of each
    finished unit) is taken out first, so a stage's signature is written once, on its planning function.
    """

    @functools.wraps(plan)
    def run(*args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
        progress = kwargs.pop("progress", None)
        stage = plan(*args, **kwargs)
        summary = run_stage(stage, progress)  # type: ignore[arg-type]
        draw(stage.table, stage.store.root)
        return summary

    signature = inspect.signature(plan)
    params = [
        *signature.parameters.values(),
        inspect.Parameter("progress", inspect.Parameter.KEYWORD_ONLY, default=None),
    ]
    run.__signature__ = signature.replace(parameters=params, return_annotation="dict[str, Any]")  # type: ignore[attr-defined]
    run.__name__ = run.__qualname__ = name
    run.__doc__ = (
        f"Run :func:`{plan.__name__}` (resuming what is done), draw its figures, return the summary."
        f"\n\n{plan.__doc__ or ''}"
    )
    return run
