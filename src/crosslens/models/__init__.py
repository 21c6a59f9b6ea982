"""Models: loading any supported causal LM, its anatomy (blocks, final norm, head), and forward passes.

``from crosslens.models import load_model`` is the notebook entry point; the submodules hold the
pieces: :mod:`~crosslens.models.loading`, :mod:`~crosslens.models.anatomy`, :mod:`~crosslens.models.passes`,
:mod:`~crosslens.models.devices`, :mod:`~crosslens.models.options`. Names are imported on first use,
so reading options (the CLI's help, a config) does not import torch.
"""

from importlib import import_module

_EXPORTS = {
    "Anatomy": "crosslens.models.anatomy",
    "UnsupportedModelError": "crosslens.models.anatomy",
    "paper_layers": "crosslens.models.anatomy",
    "LoadedModel": "crosslens.models.loading",
    "ModelLoadError": "crosslens.models.loading",
    "ModelSpec": "crosslens.models.loading",
    "load_model": "crosslens.models.loading",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crosslens.models' has no attribute {name!r}")
