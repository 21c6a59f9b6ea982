"""Parallel word lists: the data behind the word tasks of Wendler et al. (2024).

A word list is JSON Lines, one concept a line (the bundled ``resources/words/concepts.jsonl`` and
any user file in the same shape)::

    {"id": "flower", "words": {"en": ["flower"], "zh": ["花"], ...},
     "cloze": {"en": "A \\"___\\" is the colourful part of a plant ...", ...}}

``words[lang]`` lists the accepted forms, canonical first; ``cloze[lang]`` is one sentence with
exactly one blank ``___`` (only the cloze task reads it, so it may be left out otherwise). Every
problem is one :class:`DataError` line naming the file, the line and the concept.

The prompts name each language as it is written in that language (``Français: "fleur" - 中文:
"``, as Wendler et al. do) and ask the cloze's answer with that language's own word for "Answer"
(``Réponse: "``): :data:`LANGUAGE_NAMES` and :data:`ANSWER_WORDS`, a table we wrote.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from importlib.resources import files
from pathlib import Path
from typing import Any

import langcodes

from crosslens.data.schema import DataError
from crosslens.files import FileFormatError, json_records

__all__ = [
    "ANSWER_WORDS",
    "BLANK",
    "BUNDLED",
    "LANGUAGE_NAMES",
    "Concept",
    "WordList",
    "answer_word",
    "language_name",
    "read_words",
]

BLANK = "___"
BUNDLED = "crosslens-words"  # the bundled list's name (resources/words/concepts.jsonl)

#: Each language's name for itself, as the prompts write it (Wendler et al.: Français, Deutsch, 中文, ...).
LANGUAGE_NAMES: dict[str, str] = {
    "en": "English",
    "de": "Deutsch",
    "fr": "Français",
    "es": "Español",
    "it": "Italiano",
    "pt": "Português",
    "nl": "Nederlands",
    "pl": "Polski",
    "ru": "Русский",
    "uk": "Українська",
    "tr": "Türkçe",
    "zh": "中文",
    "ja": "日本語",
    "ko": "한국어",
    "vi": "Tiếng Việt",
    "id": "Bahasa Indonesia",
    "ar": "العربية",
    "fa": "فارسی",
    "hi": "हिन्दी",
    "bn": "বাংলা",
    "sw": "Kiswahili",
}

#: Each language's word for "Answer", which the cloze prompts end with (``Antwort: "``).
ANSWER_WORDS: dict[str, str] = {
    "en": "Answer",
    "de": "Antwort",
    "fr": "Réponse",
    "es": "Respuesta",
    "it": "Risposta",
    "pt": "Resposta",
    "nl": "Antwoord",
    "pl": "Odpowiedź",
    "ru": "Ответ",
    "uk": "Відповідь",
    "tr": "Cevap",
    "zh": "答案",
    "ja": "答え",
    "ko": "답",
    "vi": "Trả lời",
    "id": "Jawaban",
    "ar": "الإجابة",
    "fa": "پاسخ",
    "hi": "उत्तर",
    "bn": "উত্তর",
    "sw": "Jibu",
}


def language_name(code: str) -> str:
    """How the prompts name language ``code``; one line for a language the table does not know."""
    if code not in LANGUAGE_NAMES:
        raise DataError(
            f"no prompt name for language {code!r}: the word tasks know {', '.join(LANGUAGE_NAMES)} "
            "(crosslens.data.words.LANGUAGE_NAMES)"
        )
    return LANGUAGE_NAMES[code]


def answer_word(code: str) -> str:
    """Language ``code``'s word for "Answer" (the cloze prompts end with ``<word>: "``)."""
    language_name(code)  # the same refusal for a language the table does not know
    return ANSWER_WORDS[code]


@dataclass(frozen=True)
class Concept:
    """One concept of a word list: its accepted forms per language (canonical first), its cloze
    sentences, and the line it was read from."""

    id: str
    words: Mapping[str, tuple[str, ...]]
    cloze: Mapping[str, str]
    where: str = field(default="", compare=False)

    def word(self, language: str) -> str:
        """The canonical form in ``language``."""
        return self.words[language][0]

    @cached_property
    def digest(self) -> str:
        """A content hash of the concept (results made from other words are never reused)."""
        doc = [self.id, {k: list(v) for k, v in sorted(self.words.items())}, dict(sorted(self.cloze.items()))]
        return hashlib.sha256(json.dumps(doc, ensure_ascii=False).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WordList:
    """A parallel word list: ``name`` (the bundled list's, or the file's stem), where it was read
    from, the SHA-256 of its bytes (part of every result's fingerprint) and its concepts in file
    order."""

    name: str
    source: str
    sha256: str
    concepts: tuple[Concept, ...]

    @property
    def languages(self) -> list[str]:
        """The languages any concept has words in (sorted); :meth:`require` checks that every
        concept has the ones a run reads."""
        return sorted({lang for c in self.concepts for lang in c.words})

    def code_for(self, code: str) -> str | None:
        """The list's code for a dataset's language code (``de``, ``deu_Latn``, ``DE_DE`` -> ``de``;
        ``arb_Arab`` -> ``ar``), or None when the list has no words in it (``zho_Hant`` for a list
        in Simplified Chinese)."""
        if code in self.languages:
            return code
        try:
            return langcodes.closest_supported_match(code.replace("_", "-"), self.languages, max_distance=9)
        except ValueError:  # not a language tag at all
            return None

    @cached_property
    def _index(self) -> dict[str, Concept]:
        return {c.id: c for c in self.concepts}

    def concept(self, concept_id: str) -> Concept:
        if concept_id not in self._index:
            raise DataError(f"{self.source}: no concept {concept_id!r}")
        return self._index[concept_id]

    def require(self, languages: Sequence[str], cloze: Sequence[str] = ()) -> WordList:
        """This list, or one line naming the first concept that lacks a word in one of ``languages``
        or a cloze sentence in one of ``cloze``."""
        for c in self.concepts:
            for lang in languages:
                if lang not in c.words:
                    raise DataError(f"{c.where}: concept {c.id!r} has no {lang!r} translation")
            for lang in cloze:
                if lang not in c.cloze:
                    raise DataError(f"{c.where}: concept {c.id!r} has no {lang!r} cloze sentence")
        return self


def _words(raw: Any, where: str, concept: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{where}: concept {concept!r}: 'words' must map language codes to lists of forms")
    out = {}
    for lang, forms in raw.items():
        if isinstance(forms, str):
            forms = [forms]
        if not isinstance(forms, list) or not forms:
            raise DataError(f"{where}: concept {concept!r} has no {lang!r} translation (an empty list)")
        for form in forms:
            if not isinstance(form, str) or not form.strip():
                raise DataError(f"{where}: concept {concept!r} has an empty {lang!r} form")
            if '"' in form or "\n" in form:
                raise DataError(
                    f"{where}: concept {concept!r}: the {lang!r} form {form!r} holds a quote or newline"
                )
        out[lang] = tuple(form.strip() for form in forms)
    return out


def _cloze(raw: Any, where: str, concept: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise DataError(f"{where}: concept {concept!r}: 'cloze' must map language codes to sentences")
    out = {}
    for lang, sentence in raw.items():
        if not isinstance(sentence, str) or not sentence.strip():
            raise DataError(f"{where}: concept {concept!r} has an empty {lang!r} cloze sentence")
        blanks = re.findall(r"_+", sentence)
        if blanks != [BLANK]:
            raise DataError(
                f"{where}: concept {concept!r}: the {lang!r} cloze sentence needs exactly one blank "
                f"{BLANK} (it has {len(blanks)}: {sentence!r})"
            )
        if "\n" in sentence:
            raise DataError(f"{where}: concept {concept!r}: the {lang!r} cloze sentence spans several lines")
        out[lang] = sentence.strip()
    return out


def _concept(raw: Any, where: str) -> Concept:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object per line, got {type(raw).__name__}")
    concept = raw.get("id")
    if not isinstance(concept, str) or not concept.strip():
        raise DataError(f"{where}: 'id' is missing or empty")
    unknown = sorted(set(raw) - {"id", "words", "cloze"})
    if unknown:
        raise DataError(
            f"{where}: concept {concept!r}: unknown field {unknown[0]!r} (fields: id, words, cloze)"
        )
    if "words" not in raw:
        raise DataError(f"{where}: concept {concept!r} has no 'words'")
    return Concept(
        concept.strip(), _words(raw["words"], where, concept), _cloze(raw.get("cloze"), where, concept), where
    )


def read_words(path: str | Path | None = None) -> WordList:
    """The word list at ``path`` (None: the bundled one), every line checked (one :class:`DataError`
    line naming the file, line and concept for anything malformed)."""
    if path is None:
        resource = files("crosslens") / "resources" / "words" / "concepts.jsonl"
        file, name, source = Path(str(resource)), BUNDLED, f"bundled ({BUNDLED})"
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise DataError(f"{file}: no such word list")
        name, source = file.stem, str(file)
    concepts: list[Concept] = []
    seen: dict[str, str] = {}
    try:
        for where, raw in json_records(file):
            concept = _concept(raw, where)
            if concept.id in seen:
                first = seen[concept.id]
                raise DataError(f"{where}: concept {concept.id!r} is listed twice (first at {first})")
            seen[concept.id] = where
            concepts.append(concept)
    except FileFormatError as exc:  # not JSON at all: a data problem like any other in the list
        raise DataError(str(exc)) from None
    if not concepts:
        raise DataError(f"{file}: the word list holds no concept")
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    return WordList(name, source, digest, tuple(concepts))
