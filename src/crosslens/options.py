"""Options objects that both the command line and the YAML config fill, with every default written once.

An options object is a frozen pydantic model (:class:`Options`): a field's type, default, allowed
values and help text are written on the field and nowhere else. The YAML config validates a mapping
into it, and its errors name the YAML key (``steering.gammas: inf is not a usable multiplier``);
a CLI command gets one option per field (:func:`cli_parameters`) and builds the same object from
the parsed flags (:func:`from_cli`), and its errors name the flag (``--gammas: inf is not a usable
multiplier``). Computations raise neutral errors: :class:`OptionError` carries the *field* a
problem is about, and whoever knows how the user spelled it (flag or key) names it.
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from crosslens.errors import CrosslensError

__all__ = [
    "Options",
    "Cli",
    "OptionError",
    "Seed",
    "check_seed",
    "MAX_SEED",
    "MAX_BOOT",
    "MAX_CONTROLS",
    "csv",
    "csv_ints",
    "csv_floats",
    "flag_of",
    "cli_parameters",
    "from_cli",
    "first_error",
    "choices_of",
    "describe_yaml",
    "Group",
    "flag_for",
    "options_command",
]

MAX_SEED = 2**32 - 1  # numpy's and scikit-learn's seeds are 32-bit; torch's 64-bit, so the smaller bound
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description="random seed (sampling, bootstrap, PCA)")]
# Bootstrap weights are held as (replicates x items) at once: a bound that fits memory, refused
# before any work rather than failing after the results are written.
MAX_BOOT = 100_000
MAX_CONTROLS = 1_000  # control interventions per setting: each is a full evaluation of the items


class Options(BaseModel):
    """A group of options: unknown keys are refused, values are immutable once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OptionError(CrosslensError, ValueError):
    """A problem with the value of one option, found by code that does not know how it was given.

    ``field`` is the option's field name in its options object; the CLI turns it into the flag
    (``--n-vectors``), the config into the key (``steering.n_vectors``).
    """

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Cli:
    """How a field appears on the command line (``Annotated`` metadata of the field).

    ``flags``: the option's spellings (default ``--field-name``; ``"--x/--no-x"`` for a switch);
    ``parse``: text -> value for fields whose value is not a plain scalar (comma lists); ``hidden``:
    a YAML-only option (no flag).
    """

    flags: tuple[str, ...] = ()
    parse: Callable[[str], Any] | None = None
    hidden: bool = False
    metavar: str | None = None


# -- parsers for comma-separated values -------------------------------------------------------------
def csv(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``."""
    return [v.strip() for v in text.split(",") if v.strip()]


def _numbers(text: str, kind: type, what: str) -> list[Any]:
    out = []
    for v in csv(text):
        try:
            out.append(kind(v))
        except ValueError:
            raise ValueError(f"{v!r} is not {what}") from None
    return out


def csv_ints(text: str) -> list[int]:
    return _numbers(text, int, "an integer")


def csv_floats(text: str) -> list[float]:
    return _numbers(text, float, "a number")


# -- fields ---------------------------------------------------------------------------------------------
def _cli(field: Any) -> Cli:
    return next((m for m in field.metadata if isinstance(m, Cli)), Cli())


def flag_of(model: type[BaseModel], name: str) -> str:
    """The flag a field of ``model`` is given with (its first spelling)."""
    field = model.model_fields[re.split(r"[.\[]", name)[0]]
    flags = _cli(field).flags
    return flags[0].split("/")[0] if flags else "--" + _kebab(re.split(r"[.\[]", name)[0])


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _strip(annotation: Any) -> tuple[Any, bool]:
    """The type inside ``X | None`` and whether None is allowed."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        return (args[0] if len(args) == 1 else annotation), optional
    return annotation, False


def choices_of(model: type[BaseModel], name: str) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal`` field (or list of literals), else None."""
    annotation, _ = _strip(model.model_fields[name].annotation)
    if typing.get_origin(annotation) is list:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    return None


def _cli_type(annotation: Any) -> Any:
    """The type typer parses a field's flag as: scalars as themselves, everything else as text."""
    annotation, _ = _strip(annotation)
    if annotation in (int, float, bool, str, Path):
        return annotation
    if typing.get_origin(annotation) is list and typing.get_args(annotation)[0] in (str, Path):
        return list[typing.get_args(annotation)[0]]
    return str


def _help(model: type[BaseModel], name: str) -> str:
    field = model.model_fields[name]
    text = field.description or ""
    choices = choices_of(model, name)
    if choices and "one of" not in text:
        text += f" (one of: {', '.join(map(str, choices))})"
    return text.strip()


_UNSET = object()  # a flag left out: the options object's own default applies


def cli_parameters(
    model: type[BaseModel],
    *,
    prefix: str = "",
    exclude: Iterable[str] = (),
    required: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> list[inspect.Parameter]:
    """One typer option per field of ``model`` (YAML-only and ``exclude`` fields left out).

    Defaults shown in ``--help`` are the model's own; a flag left out is not passed on, so the
    model's default applies (written once). ``required``: fields the command needs although the
    model has a default. Parameter names are ``prefix + field``, so groups can share a command.
    """
    import typer

    skip, need = set(exclude), set(required)
    keep = None if only is None else set(only)
    params = []
    for name, field in model.model_fields.items():
        cli = _cli(field)
        if name in skip or cli.hidden or (keep is not None and name not in keep):
            continue
        flags = cli.flags or ("--" + name.replace("_", "-"),)
        kind = _cli_type(field.annotation) if cli.parse is None else str
        is_required = (field.is_required() and field.default_factory is None) or name in need
        shown = None if is_required or field.default is None else field.default
        if isinstance(shown, BaseModel | list | dict):
            shown = None
        option = typer.Option(
            *flags,
            help=_help(model, name),
            show_default=_show(shown),
            metavar=cli.metavar,
        )
        default = ... if is_required else (shown if kind is bool and isinstance(shown, bool) else None)
        annotation = Annotated[kind if (is_required or kind is bool) else (kind | None), option]
        params.append(
            inspect.Parameter(
                prefix + name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
            )
        )
    return params


def _show(value: Any) -> str | bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return True
    return str(value)


def from_cli(model: type[BaseModel], values: Mapping[str, Any], prefix: str = "", **fixed: Any) -> Any:
    """Build ``model`` from a command's parsed flags (``prefix + field`` keys; None: left out).

    Errors are :class:`OptionError` naming the field, which the CLI turns into its flag.
    """
    data: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = prefix + name
        if key not in values:
            continue
        value = values[key]
        default = field.default if not field.is_required() else _UNSET
        if value is None or (isinstance(value, bool) and value == default and name not in fixed):
            continue
        parse = _cli(field).parse
        if parse is not None and isinstance(value, str):
            try:
                value = parse(value)
            except ValueError as exc:
                raise OptionError(name, str(exc)) from None
        data[name] = value
    data.update(fixed)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        field, message = first_error(exc)
        raise OptionError(field, message) from None


_BOUNDS = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}


def first_error(exc: ValidationError) -> tuple[str, str]:
    """The first validation error as (dotted field path, message in plain words)."""
    err = exc.errors()[0]
    path = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in err["loc"]).replace(".[", "[")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "too_short" and err.get("input") in ([], ()):
        msg = "must not be empty"
    elif err["type"] == "missing":
        msg = "required option is missing"
    elif err["type"] == "extra_forbidden":
        msg = "unknown option"
    elif err["type"] == "literal_error":
        allowed = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
        msg = f"must be one of {', '.join(allowed)}, got {err.get('input')!r}"
    elif err["type"] in _BOUNDS:
        bound = next(iter(err.get("ctx", {}).values()), "?")
        msg = f"must be {_BOUNDS[err['type']]} {bound}, got {err.get('input')!r}"
    elif err["type"] in ("int_parsing", "float_parsing", "int_type", "float_type", "bool_parsing"):
        msg = f"{msg[0].lower()}{msg[1:]}, got {err.get('input')!r}"
    return path, msg


def check_seed(seed: Any) -> int:
    """A seed given to the API checked as the options check it (:data:`Seed`): one :class:`OptionError`
    naming ``seed`` before anything runs, not a failure of numpy or scikit-learn after results are written."""
    try:
        return TypeAdapter(Seed).validate_python(seed)
    except ValidationError as exc:
        raise OptionError("seed", first_error(exc)[1]) from None


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The options class inside an annotation (``list[DatasetConfig]``, ``X | None``, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _walk(model: type[BaseModel] | None, loc: Sequence[str | int]) -> tuple[str, type[BaseModel] | None]:
    """Dotted key for a pydantic error location, skipping union tags; and the class it ends in."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        elif model is not None and part in model.model_fields:
            name += f".{part}" if name else str(part)
            model = _submodel(model.model_fields[part].annotation)
    return name, model


def describe_yaml(
    exc: ValidationError, model: type[BaseModel], prefix: str = "", extra_keys: Sequence[str] = ()
) -> str:
    """The first validation error as ``key: problem``, keys spelled as in the YAML file (``prefix``:
    the key ``model`` sits under; ``extra_keys``: keys allowed at its top level besides its fields)."""
    err = exc.errors()[0]
    loc = err["loc"]
    lead = f"{prefix}." if prefix else ""
    if err["type"] == "extra_forbidden":
        parent, inner = _walk(model, loc[:-1])
        key = str(loc[-1])
        allowed = list(inner.model_fields) if inner else []
        if not parent:
            allowed = [k for k in allowed if k not in _HIDDEN_TOP] + list(extra_keys)
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        where = lead + (parent + "." if parent else "")
        return f"{where}{key}: unknown key ({hint}allowed: {', '.join(allowed)})"
    name, _ = _walk(model, loc)
    _, msg = first_error(exc)
    return f"{lead}{name}: {msg}" if (lead or name) else f"(top level): {msg}"


_HIDDEN_TOP = {"sections"}  # the experiment config's own bookkeeping, not a YAML key


@dataclass(frozen=True)
class Group:
    """One options object of a command: which of its fields become flags."""

    model: type[BaseModel]
    only: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    required: tuple[str, ...] = ()


def flag_for(groups: Mapping[str, Group], field: str) -> str | None:
    """The flag of ``field`` among a command's groups (the first group that has it; None: none has)."""
    name = re.split(r"[.\[]", field)[0]
    for group in groups.values():
        if name in group.model.model_fields and not _cli(group.model.model_fields[name]).hidden:
            return flag_of(group.model, name)
    return None


def _extra_flag(extra: Sequence[inspect.Parameter], field: str) -> str | None:
    """The flag of a command's own parameter ``field`` (its first ``--`` spelling), None if it has none."""
    for p in extra:
        if p.name == field:
            metadata = getattr(p.annotation, "__metadata__", ())
            decls = [d for m in metadata for d in getattr(m, "param_decls", None) or () if d.startswith("--")]
            return decls[0] if decls else "--" + _kebab(field)
    return None


def options_command(
    app: Any, name: str, groups: Mapping[str, Group], extra: Sequence[inspect.Parameter] = (), help: str = ""
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``fn(**objects, **extra)`` as command ``name``: one flag per field of each group, the
    flags of a group turned into its options object (errors name the flag), ``extra`` passed as is.

    An :class:`OptionError` the command raises later (a check that needs the data) names its flag too.
    """
    import typer

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        params: list[inspect.Parameter] = []
        for key, g in groups.items():
            params += cli_parameters(
                g.model, prefix=f"{key}__", exclude=g.exclude, required=g.required, only=g.only
            )
        params += list(extra)

        def command(**kwargs: Any) -> Any:
            objects = {}
            try:
                for key, g in groups.items():
                    mine = {k[len(key) + 2 :]: v for k, v in kwargs.items() if k.startswith(f"{key}__")}
                    objects[key] = from_cli(g.model, mine)
                return fn(**objects, **{k: v for k, v in kwargs.items() if "__" not in k})
            except OptionError as exc:
                flag = flag_for(groups, exc.field) or _extra_flag(extra, exc.field)
                raise typer.BadParameter(f"{flag}: {exc.message}" if flag else exc.message) from None

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__doc__ = help or fn.__doc__
        command.__name__ = fn.__name__
        app.command(name)(command)
        return fn

    return decorate
