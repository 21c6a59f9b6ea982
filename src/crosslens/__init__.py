"""crosslens: why does an LLM answer the same question differently in different languages?

Evaluate causal LMs on parallel multiple-choice benchmarks (consistency, transfer), look inside
with a multilingual logit lens, and steer them toward English.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("crosslens")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
