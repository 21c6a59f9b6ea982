"""The one base class of the errors crosslens reports as a single line (the CLI prints it and exits 2).

Each error class lives with the concept it is about (``DataError`` in data, ``ModelLoadError`` in
models, ...) and also derives from ``ValueError`` or ``RuntimeError`` as Python code expects; this
base lets the command line catch every one of them without importing the heavy modules they live in.
"""

__all__ = ["CrosslensError"]


class CrosslensError(Exception):
    """A problem with the user's input, data, model or folder, stated in one line."""
