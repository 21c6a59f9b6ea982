"""Files read back, each through the typed schema of what it holds, every problem one line.

A file crosslens reads back (``lens.json``, ``run.json``, a stage's summary, ``experiment.json``, a
tuned-lens project's ``config.json``, a model folder's ``config.json``, a dataset's JSON lines) may
have been edited by hand, truncated, or written by another version or tool. Each is validated by
the pydantic :class:`Schema` of what it holds, written next to the code that writes it (a lens's
file in :mod:`crosslens.lenses.lens`, ``run.json``'s in :mod:`crosslens.store`, a stage summary's
in the stage's folder), and anything wrong is one :class:`FileFormatError` naming the file, the
line where there is one, the key and what was expected::

    runs/x/summary.json: consistency.mean: expected a number, got "high"
    lens/lens.json: model.n_layers: expected an integer, got "6"
    data/de.jsonl line 3: choices[1]: expected a string, got 5

Schemas are strict (a string is not a number, a number is not a list) and keep the keys they do not
name, so a file written by a newer crosslens still reads.
"""

from __future__ import annotations

import json
from collections.abc import Container, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from crosslens.errors import CrosslensError

__all__ = [
    "FileFormatError",
    "Schema",
    "read_text",
    "parse_json",
    "read_json",
    "read_jsonl",
    "json_records",
    "validate",
    "describe",
    "require",
    "shown",
]

S = TypeVar("S", bound=BaseModel)


class FileFormatError(CrosslensError, ValueError):
    """A file that cannot be read or does not hold what it should: ``<file>[ line <n>]: <key>: <problem>``."""


class Schema(BaseModel):
    """What a file holds: strict types, and the keys it does not name kept as they are."""

    model_config = ConfigDict(strict=True, extra="allow", protected_namespaces=())


def read_text(path: str | Path) -> str:
    """The file as UTF-8 text (a byte-order mark dropped); unreadable or other bytes are one line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FileFormatError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise FileFormatError(f"{path} line {line}: not valid UTF-8 (byte 0x{data[exc.start]:02x})") from None


def parse_json(text: str, where: str, line: int | None = None) -> Any:
    """``json.loads`` whose failures (syntax, nesting too deep for the parser) are one line at ``where``
    (``line``: the line ``text`` starts on, for a JSON-lines record)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        at = f"{where} line {line if line is not None else exc.lineno}"
        raise FileFormatError(f"{at}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        at = where if line is None else f"{where} line {line}"
        raise FileFormatError(f"{at}: JSON nested too deeply to read") from None


def validate(data: Any, schema: type[S], where: str, what: str = "a JSON object") -> S:
    """``data`` (parsed JSON) as ``schema``; ``where`` names the file (and line) in the message,
    ``what`` the object expected when ``data`` is none (``an lm-eval sample (a JSON object)``)."""
    if not isinstance(data, dict):
        raise FileFormatError(f"{where}: expected {what}, got {shown(data)}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise FileFormatError(f"{where}: {describe(exc)}") from None


def read_json(path: str | Path, schema: type[S], what: str = "a JSON object") -> S:
    """A JSON file read through ``schema`` (``what``: the object expected, for the message)."""
    return validate(parse_json(read_text(path), str(path)), schema, str(path), what)


def _lines(path: str | Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of every non-blank line of JSON-lines ``text``.

    Records are separated by ``\\n`` only: U+2028, U+0085 and the other characters ``str.splitlines``
    would split on are legal inside a JSON string.
    """
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            yield n, parse_json(line.removesuffix("\r"), str(path), n)


def read_jsonl(path: str | Path, schema: type[S], what: str = "a JSON object") -> Iterator[tuple[int, S]]:
    """(line number, record) of a JSON-lines file, every record read through ``schema``."""
    for n, raw in _lines(path, read_text(path)):
        yield n, validate(raw, schema, f"{path} line {n}", what)


def json_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """(location, parsed value) of every record of a JSON-lines file (``<file> line <n>``) or of a
    file holding one JSON list (``<file> record <k>``), as benchmark releases ship either."""
    text = read_text(path)
    if text.lstrip().startswith("["):
        records = parse_json(text, str(path))
        yield from ((f"{path} record {k}", raw) for k, raw in enumerate(records, 1))
        return
    yield from ((f"{path} line {n}", raw) for n, raw in _lines(path, text))


# -- messages -------------------------------------------------------------------------------------------
_EXPECTED = {
    "model_type": "an object",
    "model_attributes_type": "an object",
    "dict_type": "an object",
    "list_type": "a list",
    "tuple_type": "a list",
    "set_type": "a list",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "none_required": "null",
}
_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def shown(value: Any) -> str:
    """A value as the JSON file spells it (an object or list by its kind, long text shortened)."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list | tuple):
        return "a list"
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _key(loc: tuple[int | str, ...]) -> str:
    """A pydantic error location as the key path in the file (``a.b[2].c``; pydantic's ``[key]``
    marks a mapping's key itself as the problem, which the message says)."""
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc if p != "[key]").lstrip(".")
    return key or "(top level)"


def describe(exc: ValidationError) -> str:
    """The first problem of a validation as ``<key>: <problem>`` (keys as in the file: ``a.b[2].c``)."""
    err = exc.errors()[0]
    kind, given = err["type"], err.get("input")
    if kind == "missing":
        problem = "required key is missing"
    elif kind in _EXPECTED:
        problem = f"expected {_EXPECTED[kind]}, got {shown(given)}"
    elif kind == "literal_error":
        problem = f"expected {err.get('ctx', {}).get('expected', 'another value')}, got {shown(given)}"
    elif kind in _BOUNDS:
        bound = next(iter(err.get("ctx", {}).values()), "?")
        problem = f"expected a value {_BOUNDS[kind]} {bound}, got {shown(given)}"
    elif kind == "string_pattern_mismatch":
        problem = f"is not of the form {err.get('ctx', {}).get('pattern', '?').strip('^$')}"
    elif kind in ("too_short", "too_long"):
        ctx = err.get("ctx", {})
        bound = (
            f"at least {ctx.get('min_length')}" if kind == "too_short" else f"at most {ctx.get('max_length')}"
        )
        problem = f"expected {bound} of them, got {ctx.get('actual_length')}"
    else:
        msg = err["msg"].removeprefix("Value error, ")
        if kind == "value_error" and not err["loc"]:
            return msg  # a check across keys, which names its key itself (:func:`require`)
        problem = msg[:1].lower() + msg[1:]
    return f"{_key(err['loc'])}: {problem}"


def require(mapping: Container[str], keys: Iterable[Any], where: str) -> None:
    """In a schema's check across keys: every one of ``keys`` is in ``mapping`` (the value at key
    ``where``), else the first missing one is named (``pairwise.tr_plus.de: required key is missing``)."""
    for k in keys:
        if str(k) not in mapping:
            raise ValueError(f"{where}.{k}: required key is missing")
