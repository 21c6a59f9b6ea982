"""The shapes of the files lm-evaluation-harness writes, as typed schemas: a samples line and a results file.

Every value ``import-lmeval`` reads from them goes through these schemas first
(:func:`crosslens.files.validate`), so a file of another shape (a line that is ``5`` or ``null``, a
``doc_id`` that is a list, a results file that is a list) is refused with one line naming the file,
the line, the key and what was expected, never a traceback or a silently skipped value. Keys lm-eval
adds across versions (``resps``, ``doc_hash``, metric values, ...) are kept and ignored. lm-eval
writes numbers as strings in places, so these schemas convert where it does (not strict).
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field

from crosslens.files import Schema, shown

__all__ = ["SampleLine", "ResultsFile"]


class _Shape(Schema):
    """A JSON object of lm-eval's: the keys crosslens reads are typed, the others are kept as they are."""

    model_config = ConfigDict(strict=False, frozen=True)


def _requests(value: Any) -> Any:
    """Older lm-eval writes ``arguments`` as ``[[context, continuation], ...]``: the same requests
    as the newer ``{gen_args_<k>: {arg_0, arg_1}}``."""
    if not isinstance(value, list):
        return value
    for k, pair in enumerate(value):
        if not (isinstance(pair, list) and len(pair) >= 2):
            raise ValueError(f"must hold [context, continuation] pairs; entry {k} is {shown(pair)}")
    return {f"gen_args_{k}": {"arg_0": pair[0], "arg_1": pair[1]} for k, pair in enumerate(value)}


def _loglik(value: Any) -> float:
    """A ``filtered_resps`` entry: ``[log-likelihood, is_greedy]`` (lm-eval writes both as strings)."""
    pair = isinstance(value, list) and len(value) == 2
    x = value[0] if pair else value
    try:
        if isinstance(x, bool) or not isinstance(x, int | float | str):
            raise ValueError
        ll = float(x)
    except ValueError:
        if pair:
            raise ValueError(f"holds a log-likelihood that is not a number: {shown(x)}") from None
        raise ValueError(f"must be [log-likelihood, is_greedy], got {shown(value)}") from None
    if not math.isfinite(ll):
        raise ValueError(f"holds a log-likelihood of {ll}")
    return ll


def _index_or_text(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a choice index or a choice text, got {shown(value)}")
    return value


class Request(_Shape):
    """One ``(context, continuation)`` loglikelihood request."""

    arg_0: str
    arg_1: str


class SampleLine(_Shape):
    """One line of ``samples_<task>_<date>.jsonl``: a document, its requests and their responses."""

    doc_id: Annotated[int, Field(strict=True, ge=0)]
    doc: dict[str, Any]
    target: Annotated[Any, AfterValidator(_index_or_text)]
    arguments: Annotated[
        dict[Annotated[str, Field(pattern=r"^gen_args_\d+$")], Request], BeforeValidator(_requests)
    ]
    filtered_resps: list[Annotated[float, BeforeValidator(_loglik)]]
    filter: str = "none"
    metrics: list[str] | None = None
    prompt_hash: str | None = None
    acc: float | None = None

    def requests(self) -> list[tuple[str, str]]:
        """The (context, continuation) requests in lm-eval's order (``gen_args_0``, ``gen_args_1``, ...)."""
        keys = sorted(self.arguments, key=lambda k: int(k.rsplit("_", 1)[1]))
        return [(self.arguments[k].arg_0, self.arguments[k].arg_1) for k in keys]


class RunConfig(_Shape):
    """``config`` of a results file: how lm-eval was run."""

    model_args: Any = None


class ResultsFile(_Shape):
    """``results_<date>.json``: the model's name and each task's configuration."""

    model_name: str | None = None
    config: RunConfig | None = None
    configs: dict[str, dict[str, Any]] | None = None
