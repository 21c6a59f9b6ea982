"""Controls of a steering sweep: random directions at the vector's norm, and the wrong language's
vector (is it the direction toward English that matters, or any push of that size?)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["WRONG_LANGUAGE", "control_names", "wrong_language", "control_vector"]

WRONG_LANGUAGE = "wrong-language"


def control_names(k: int, wrong: bool) -> list[str]:
    """The controls of a grid: ``random:0`` .. ``random:k-1`` and, with ``wrong``, the wrong language."""
    return [f"random:{i}" for i in range(k)] + ([WRONG_LANGUAGE] if wrong else [])


def wrong_language(languages: Sequence[str], pivot: str | None, language: str) -> str | None:
    """The language whose vector is the wrong-language control of ``language``: the next steered
    language in the run's order (cyclic); None for the pivot or when only one language is steered."""
    steered = [m for m in languages if m != pivot]
    if language not in steered or len(steered) < 2:
        return None
    return steered[(steered.index(language) + 1) % len(steered)]


def control_vector(
    v: torch.Tensor, control: str, seed: int, language: str, layer: int, other: torch.Tensor | None
) -> torch.Tensor:
    """A control with exactly the norm of ``v``: a random direction (``random:k``, drawn from a
    normal distribution with a seed derived from ``seed``, the language, the layer and k), or the
    ``other`` language's vector rescaled (``wrong-language``)."""
    norm = torch.linalg.vector_norm(v.double())
    if control == WRONG_LANGUAGE:
        if other is None:
            raise ValueError(f"no wrong-language control for {language!r}: steer at least two languages")
        direction = other.double()
    elif control.startswith("random:"):
        key = f"{seed}:{language}:{layer}:{control}".encode()
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
        direction = torch.from_numpy(rng.standard_normal(v.numel()))
    else:
        raise ValueError(f"unknown steering control {control!r}")
    return (direction * (norm / torch.linalg.vector_norm(direction))).to(v.dtype)
