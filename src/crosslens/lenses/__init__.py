"""Lenses: how a layer's residual state is read as a next-token distribution (logit lens, tuned lens),
the registry of lens kinds (:mod:`~crosslens.lenses.kinds`), and how a tuned lens is trained
(:mod:`~crosslens.lenses.training`). Names are imported on first use (the lens kinds stay light)."""

from importlib import import_module

_EXPORTS = {
    "LensError": "crosslens.lenses.kinds",
    "LensKind": "crosslens.lenses.kinds",
    "LensSpec": "crosslens.lenses.kinds",
    "load_lens": "crosslens.lenses.kinds",
    "parse_lens": "crosslens.lenses.kinds",
    "register_lens": "crosslens.lenses.kinds",
    "Lens": "crosslens.lenses.lens",
    "LogitLens": "crosslens.lenses.lens",
    "TunedLens": "crosslens.lenses.lens",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crosslens.lenses' has no attribute {name!r}")
