"""The ``crosslens`` command (``main(argv)`` is callable from tests and notebooks)."""

from crosslens.cli.app import app, main

__all__ = ["app", "main"]
