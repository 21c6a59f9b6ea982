"""Shape checks for the bundled parallel word list (resources/words/concepts.jsonl).

Fast and offline: no model, no tokenizer. These tests check structure only (languages, blanks,
quoting, scripts); whether a translation is right is reviewed by hand (see the README next to the
data).
"""

from __future__ import annotations

import json
import re
import unicodedata
from importlib.resources import files

import pytest

LANGS = ("en", "de", "fr", "es", "ru", "zh", "ja", "ar", "hi", "sw")
MIN_CONCEPTS = 120
QUOTES = "\"'`“”„‟‘’‚«»‹›「」『』"

# Characters allowed in the words of a language (per code point); None: not restricted here.
_HAN = r"\u3400-\u4dbf\u4e00-\u9fff"
SCRIPTS = {
    "zh": re.compile(rf"[{_HAN}]+"),
    "ja": re.compile(rf"[{_HAN}\u3040-\u309f\u30a0-\u30ff]+"),  # kanji, hiragana, katakana (incl. ー)
    "ru": re.compile(r"[\u0400-\u04ff]+(?:-[\u0400-\u04ff]+)*"),
    "ar": re.compile(r"[\u0600-\u06ff]+"),
    "hi": re.compile(r"[\u0900-\u097f]+"),
}
_LAT = r"A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u024f"  # Basic Latin, Latin-1 and Extended-A/B letters
LATIN = re.compile(rf"[{_LAT}]+(?:['-][{_LAT}]+)*")  # with an inner apostrophe or hyphen (sw ng'ombe)


def _load() -> list[dict]:
    path = files("crosslens") / "resources" / "words" / "concepts.jsonl"
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            assert line.strip(), f"line {n} is empty"
            rows.append(json.loads(line))
    return rows


ROWS = _load()


def _failures(check) -> list[str]:
    out = []
    for row in ROWS:
        for lang in LANGS:
            msg = check(row, lang)
            if msg:
                out.append(f"{row.get('id')}/{lang}: {msg}")
    return out


def test_size_and_ids():
    assert len(ROWS) >= MIN_CONCEPTS
    ids = [r["id"] for r in ROWS]
    assert len(ids) == len(set(ids)), "duplicate ids"
    bad = [i for i in ids if not re.fullmatch(r"[a-z]+(?:_[a-z]+)*", i)]
    assert not bad, bad
    for r in ROWS:
        assert set(r) == {"id", "words", "cloze"}, r["id"]


def test_exactly_the_ten_languages():
    for r in ROWS:
        assert set(r["words"]) == set(LANGS), r["id"]
        assert set(r["cloze"]) == set(LANGS), r["id"]


def test_words_are_clean():
    def check(row, lang):
        words = row["words"][lang]
        if not isinstance(words, list) or not words:
            return "empty word list"
        if len(set(words)) != len(words):
            return f"repeated form in {words}"
        for w in words:
            if not isinstance(w, str) or not w.strip():
                return f"empty word {w!r}"
            if w != w.strip() or w[0] in QUOTES or w[-1] in QUOTES:
                return f"surrounding whitespace or quotes in {w!r}"
            if "___" in w:
                return f"blank inside word {w!r}"
        return None

    assert not (f := _failures(check)), "\n".join(f)


def test_words_scripts():
    def check(row, lang):
        for w in row["words"][lang]:
            pattern = SCRIPTS.get(lang, LATIN)
            if not pattern.fullmatch(w):
                return f"{w!r} is not in the expected script"
        return None

    assert not (f := _failures(check)), "\n".join(f)


def test_cloze_has_one_quoted_blank():
    def check(row, lang):
        s = row["cloze"][lang]
        if not isinstance(s, str) or s != s.strip() or not s:
            return "empty cloze or surrounding whitespace"
        if re.findall(r"_+", s) != ["___"]:
            return f"needs exactly one blank ___: {s!r}"
        if '"___"' not in s:
            return f'blank must be written "___" (ASCII quotes): {s!r}'
        if any(q in s for q in "“”„«»「」『』"):
            return f"use plain ASCII double quotes: {s!r}"
        return None

    assert not (f := _failures(check)), "\n".join(f)


def test_cloze_does_not_give_the_answer():
    # Case-insensitive substring check of the whole canonical word. For zh/ja this is only the
    # whole word: its single characters may legitimately recur in the sentence.
    def check(row, lang):
        canonical = row["words"][lang][0]
        if canonical.casefold() in row["cloze"][lang].casefold():
            return f"cloze contains the canonical word {canonical!r}"
        return None

    assert not (f := _failures(check)), "\n".join(f)


@pytest.mark.parametrize("lang", LANGS)
def test_text_is_nfc(lang):
    bad = [
        r["id"]
        for r in ROWS
        for t in [*r["words"][lang], r["cloze"][lang]]
        if unicodedata.normalize("NFC", t) != t
    ]
    assert not bad, bad
