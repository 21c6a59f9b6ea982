"""Writing systems of languages: how the paper groups languages in its figures (Latin vs non-Latin)."""

from __future__ import annotations

import unicodedata

__all__ = ["is_latin", "script_of"]


def is_latin(text: str) -> bool:
    """True when most letters of ``text`` are Latin (how the paper groups languages in Fig. 3)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return True
    latin = sum("LATIN" in unicodedata.name(c, "") for c in letters)
    return latin >= len(letters) / 2


def script_of(language: str, sample_text: str) -> str:
    """'Latin' or 'non-Latin', from a FLORES-style code suffix when present, else from the text."""
    if "_" in language and language.split("_")[-1].istitle() and len(language.split("_")[-1]) == 4:
        return "Latin" if language.endswith("_Latn") else "non-Latin"
    return "Latin" if is_latin(sample_text) else "non-Latin"
