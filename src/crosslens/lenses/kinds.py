"""The lens kinds crosslens can read through, declared once (``--lens KIND[:PATH]``, ``lens.lenses``).

A kind names how to build its lens for a loaded model and what may be checked before the model
loads. The built-in kinds are ``logit`` and ``tuned``; :func:`register_lens` adds another (a
plugin, a test), and the lens stage then reads through it like any other (its own table, summary,
report section). This module stays light (no torch): the CLI and the config parse lens names with
it before anything heavy is imported.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

from crosslens.errors import CrosslensError
from crosslens.options import OptionError

__all__ = [
    "check_trained_lenses",
    "lens_specs",
    "LensError",
    "LensKind",
    "LensSpec",
    "lens_kinds",
    "register_lens",
    "unregister_lens",
    "parse_lens",
    "load_lens",
    "load_lenses",
    "precheck_lens",
    "lens_table",
]


class LensError(CrosslensError, ValueError):
    """A lens that cannot be used here: missing, malformed, or made for another model."""


Ref = str | Callable[..., Any]


def _call(ref: Ref, *args: Any) -> Any:
    if isinstance(ref, str):
        module, _, name = ref.partition(":")
        target: Any = import_module(module)
        for part in name.split("."):
            target = getattr(target, part)
        ref = target
    return ref(*args)


@dataclass(frozen=True)
class LensKind:
    """One lens kind: ``load`` builds its lens for ``(LensSpec, LoadedModel)``; ``precheck`` refuses
    what is wrong before the model loads ``(LensSpec, depth or None)``; ``path``: what ``KIND:PATH``'s
    path is (None: the kind takes no path); ``title``: its name in tables and figures."""

    kind: str
    load: Ref
    title: str
    path: str | None = None
    precheck: Ref | None = None
    builtin: bool = False


_KINDS: dict[str, LensKind] = {
    "logit": LensKind("logit", "crosslens.lenses.lens:LogitLens.for_spec", "Logit lens", builtin=True),
    "tuned": LensKind(
        "tuned",
        "crosslens.lenses.lens:load_tuned",
        "Tuned lens",
        path="a lens folder (crosslens or tuned-lens)",
        precheck="crosslens.lenses.lens:precheck_tuned",
        builtin=True,
    ),
}


def lens_kinds() -> dict[str, LensKind]:
    return dict(_KINDS)


def lens_table(kind: str) -> str:
    """The result-folder table holding the lens stage's readings through ``kind``: ``lens`` for the
    logit lens, ``lens_<kind>`` for another (named here, below the stages, so a stage that reads the
    readings names their table without importing the lens stage)."""
    return "lens" if kind == "logit" else f"lens_{kind}"


def register_lens(kind: LensKind) -> LensKind:
    if kind.kind in _KINDS or ":" in kind.kind:
        raise ValueError(f"lens kind {kind.kind!r} is already registered or not a name")
    _KINDS[kind.kind] = kind
    return kind


def unregister_lens(kind: str) -> None:
    if kind in _KINDS and not _KINDS[kind].builtin:
        del _KINDS[kind]


@dataclass(frozen=True)
class LensSpec:
    """``KIND`` or ``KIND:PATH``; ``tuned`` alone is a lens an experiment trains."""

    kind: str
    path: Path | None = None

    def __str__(self) -> str:
        return self.kind if self.path is None else f"{self.kind}:{self.path}"

    @property
    def lens_kind(self) -> LensKind:
        return _KINDS[self.kind]


def parse_lens(text: str | LensSpec) -> LensSpec:
    """Parse a lens option; one line naming the known kinds on anything else."""
    if isinstance(text, LensSpec):
        return text
    kind, _, path = str(text).partition(":")
    if kind not in _KINDS:
        known = ", ".join(f"{k} ({v.path or 'no path'})" for k, v in _KINDS.items())
        raise LensError(f"unknown lens {text!r} (lenses: {known}; e.g. tuned:LENS_DIR)")
    if _KINDS[kind].path is None and path:
        raise LensError(f"lens {text!r}: the {kind} lens takes no path")
    return LensSpec(kind, Path(path) if path else None)


def load_lens(spec: LensSpec | str, lm: Any) -> Any:
    """The lens ``spec`` names, built for the loaded model ``lm``."""
    spec = parse_lens(spec)
    return _call(spec.lens_kind.load, spec, lm)


def load_lenses(entries: Sequence[Any], lm: Any, layers: Sequence[int]) -> list[Any]:
    """The lenses ``entries`` name (``logit``, ``tuned:PATH``, a registered kind, or built lenses),
    each checked to belong to the loaded model ``lm`` and to read ``layers``."""
    lenses = [load_lens(x, lm) if isinstance(x, str) else x for x in entries]
    for lens in lenses:
        if lens.anatomy.unembed_weight is not lm.anatomy.unembed_weight:
            raise LensError(f"the {lens.name} lens was built for another loaded model than {lm.spec}")
        lens.check_layers(layers)
    return lenses


def precheck_lens(spec: LensSpec | str, n_layers: int | None) -> None:
    """Before the model loads: what the lens kind can check of ``spec`` for a model of this depth."""
    spec = parse_lens(spec)
    if spec.lens_kind.precheck is not None:
        _call(spec.lens_kind.precheck, spec, n_layers)


def lens_specs(entries: Sequence[str]) -> list[LensSpec]:
    """The entries of a stage's ``lenses`` option parsed, each kind named once; a ``ValueError``, so
    that the option's validator reports it under the option's name."""
    try:
        specs = [parse_lens(x) for x in entries]
    except LensError as exc:
        raise ValueError(str(exc)) from None
    kinds = [s.kind for s in specs]
    twice = sorted({k for k in kinds if kinds.count(k) > 1})
    if twice:
        raise ValueError(f"name each lens kind once ({twice[0]!r} is named {kinds.count(twice[0])} times)")
    return specs


def check_trained_lenses(lenses: Sequence[str], models: int = 1, n_layers: int | None = None) -> None:
    """The refusals of every stage option ``lenses`` before a model loads: a trained lens
    (``KIND:PATH``) belongs to one model, and its folder must hold a lens (for ``n_layers``, if known)."""
    trained = [x for x in lenses if parse_lens(x).path is not None]
    if trained and models > 1:
        raise OptionError("lenses", f"{trained[0]} was trained for one model, not for each of {models}")
    for entry in trained:
        try:
            precheck_lens(entry, n_layers)
        except LensError as exc:
            raise OptionError("lenses", str(exc)) from None
