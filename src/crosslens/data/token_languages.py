"""Which language each vocabulary token belongs to: the table behind the "latent language" readout.

Wendler et al. 2024 ("Do Llamas Work in English?") and Wu et al. 2024 ("The Semantic Hub
Hypothesis") read, layer by layer, how much of a lens's next-token probability mass lies on tokens
of English, of the prompt's language, of other languages, and on tokens of no language. That needs
``P(language | token)`` for every entry of a tokenizer's vocabulary: :func:`build_token_languages`
makes it, :func:`token_languages` caches it per tokenizer, :meth:`TokenLanguages.masses` applies it.

Method (:data:`METHOD`):

1. **Surface text.** Each id is decoded alone (``tokenizer.decode([i])``), which turns byte-level
   BPE pieces (``Ġ`` + byte characters: Llama 3, Qwen, SmolLM2) and SentencePiece pieces (``▁``:
   Gemma) into real text; surrounding whitespace (the word-start marker) is stripped. Special
   tokens, empty strings, strings without a letter (punctuation, digits, symbols, whitespace),
   strings holding U+FFFD (a partial UTF-8 sequence: one byte of a multi-byte character) and a
   single ASCII letter get "none". A lone ASCII letter is an answer label (the next token after a
   multiple-choice prompt's "Answer:" is " A" to " D"), an initial or a variable far more often than
   a word, and every Latin-script list holds the letters, so they would otherwise spread over those
   languages as "other" mass (" A" would be 27 % Hungarian, " C" half French); the cost is a few
   one-letter words (Spanish "y", Italian "e", English "I").
2. **Word frequencies** (wordfreq's ``best`` lists): the text is normalised the way wordfreq
   normalises each language (NFC/NFKC, case folding, abjad marks, Turkish dotted i, Traditional to
   Simplified Chinese for ``zh``) and looked up in every table language's list; ``f_l`` is its
   frequency there (0 when absent), counted only if the token's letters are in a script the
   language is written in (:data:`SCRIPTS`): lists hold loanwords and stray foreign words, and
   English "tion" must not become partly Japanese, nor Gujarati in the Arabic list Arabic. When any
   ``f_l > 0``, ``P(l | token) = f_l / sum(f)``. That is a uniform prior over languages: the row
   says which language's text the token is most *typical* of, not which language contributes most
   tokens on the internet (English would otherwise absorb every shared word).

   Swahili has no wordfreq list and no script of its own, so its list is made from text we ship
   (:data:`TEXT_LISTS`): the Swahili side of the bundled crosslens-mini items and parallel word list
   (about 1,900 running words). A word counts when it occurs at least twice there (a word seen once
   in 1,900 would be credited a frequency of 5e-4, far above most such words' real one) and occurs in
   no other language's side of the same parallel text (names, numbers and loanwords: "Kenya",
   "India", "Australia"); its frequency is its count over the Swahili word total, and it then
   competes with the wordfreq lists like any list. That is weak evidence: the list has about 250
   words, skewed to the items' question words ("ni", "gani", "katika"); common Swahili words that
   are absent there count as "none" or as another language (Malay "siku"), so Swahili mass is
   undercounted, and very frequent Swahili function words win tokens that other languages share
   ("ni" is also French and Spanish).
3. **Script** where frequencies are silent: a token whose letters are all in one non-Latin script
   goes to the table languages written in it, split equally (Cyrillic: ru/uk/bg/mk/sh; Arabic:
   ar/fa/ur; Devanagari: hi; Hangul: ko; kana, with or without Han: ja; Thai: th; ...). Han
   characters are shared by Chinese and Japanese, so a Han-only token with no frequency evidence is
   split 0.5/0.5 between zh and ja (Korean counts as Hangul only: Hanja are rare in today's text).
   Scripts wordfreq has no list for (Thai, Georgian, Armenian, Ethiopic, Myanmar, Khmer, Lao,
   Sinhala, Telugu, Kannada, Malayalam, Gujarati, Gurmukhi, Odia, Tibetan) are identified by
   script alone, so they are table languages too and their tokens land in "other", not "none".
   Latin-script (and mixed-script) tokens without frequency evidence get "none". Romanised Hindi,
   pinyin and the like are Latin-script text here: only Latin-script languages' lists count for them.

The table's columns are, by default, every language wordfreq has a list for plus the script-only
ones (:data:`ALL_LANGUAGES`), so tokens of languages a study does not request count as "other"
instead of being forced onto the requested ones.

Remaining ambiguity, and what not to conclude:

* Latin sub-word pieces ("ing", "tion", "xqz") are either absent from every list ("none") or present
  in several, where the frequencies split them; short tokens shared by many Latin-script languages
  ("a", "die", "house" in code-switched text) are split the same way, so a language's mass includes
  some tokens that are just as much another's. Compare curves across layers and models, not
  absolute levels across languages.
* Languages sharing a script without frequency evidence cannot be told apart: Marathi and Nepali
  count as Hindi, Assamese as Bengali, Tigrinya as Amharic; Estonian, Yoruba and other Latin-script
  languages without a wordfreq list (or one of ours) are not identifiable at all (:func:`table_code`
  refuses them; :func:`is_language_code` tells them from codes of no language, such as ``xx``).
* "none" is not "no language": it holds code identifiers, sub-word pieces and lone bytes of
  multi-byte characters (in a byte-level vocabulary, many CJK and Indic characters are only
  reachable that way), so a rise in "none" can be a rise in sub-word predictions of any language.
* wordfreq's small lists stop at rarer frequencies than its large ones, and some lists contain
  loanwords from English; mass on a language is evidence about tokens typical of that language's
  text, not proof the model "thinks in" it.
"""

from __future__ import annotations

import bisect
import functools
import gzip
import hashlib
import importlib.metadata
import io
import json
import os
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import langcodes
import msgpack
import numpy as np
import torch
import wordfreq
from wordfreq.language_info import get_language_info
from wordfreq.preprocess import preprocess_text
from wordfreq.util import data_path

from crosslens.store import atomic_write_bytes, atomic_write_text

__all__ = [
    "ALL_LANGUAGES",
    "METHOD",
    "SCRIPTS",
    "TEXT_LISTS",
    "Coverage",
    "TokenLanguages",
    "build_token_languages",
    "is_language_code",
    "table_code",
    "table_identity",
    "text_lists",
    "token_languages",
    "tokenizer_sha256",
]

METHOD = "wordfreq-script-v2"  # bump when the rules change: a cache made by older rules is then rebuilt

# Unicode blocks of the scripts the rules use (ISO 15924 codes); "Kana" is Hiragana and Katakana.
_BLOCKS: tuple[tuple[int, int, str], ...] = (
    (0x0041, 0x005A, "Latn"),
    (0x0061, 0x007A, "Latn"),
    (0x00AA, 0x00AA, "Latn"),
    (0x00BA, 0x00BA, "Latn"),
    (0x00C0, 0x02AF, "Latn"),
    (0x0370, 0x03FF, "Grek"),
    (0x0400, 0x052F, "Cyrl"),
    (0x0530, 0x058F, "Armn"),
    (0x0590, 0x05FF, "Hebr"),
    (0x0600, 0x06FF, "Arab"),
    (0x0750, 0x077F, "Arab"),
    (0x08A0, 0x08FF, "Arab"),
    (0x0900, 0x097F, "Deva"),
    (0x0980, 0x09FF, "Beng"),
    (0x0A00, 0x0A7F, "Guru"),
    (0x0A80, 0x0AFF, "Gujr"),
    (0x0B00, 0x0B7F, "Orya"),
    (0x0B80, 0x0BFF, "Taml"),
    (0x0C00, 0x0C7F, "Telu"),
    (0x0C80, 0x0CFF, "Knda"),
    (0x0D00, 0x0D7F, "Mlym"),
    (0x0D80, 0x0DFF, "Sinh"),
    (0x0E00, 0x0E7F, "Thai"),
    (0x0E80, 0x0EFF, "Laoo"),
    (0x0F00, 0x0FFF, "Tibt"),
    (0x1000, 0x109F, "Mymr"),
    (0x10A0, 0x10FF, "Geor"),
    (0x1100, 0x11FF, "Hang"),
    (0x1200, 0x139F, "Ethi"),
    (0x1780, 0x17FF, "Khmr"),
    (0x19E0, 0x19FF, "Khmr"),
    (0x1C80, 0x1C8F, "Cyrl"),
    (0x1C90, 0x1CBF, "Geor"),
    (0x1E00, 0x1EFF, "Latn"),
    (0x1F00, 0x1FFF, "Grek"),
    (0x2C60, 0x2C7F, "Latn"),
    (0x2D00, 0x2D2F, "Geor"),
    (0x2D80, 0x2DDF, "Ethi"),
    (0x2DE0, 0x2DFF, "Cyrl"),
    (0x2E80, 0x2FDF, "Hani"),
    (0x3005, 0x3007, "Hani"),
    (0x3021, 0x3029, "Hani"),
    (0x3038, 0x303B, "Hani"),
    (0x3040, 0x30FF, "Kana"),
    (0x3130, 0x318F, "Hang"),
    (0x31F0, 0x31FF, "Kana"),
    (0x3400, 0x4DBF, "Hani"),
    (0x4E00, 0x9FFF, "Hani"),
    (0xA640, 0xA69F, "Cyrl"),
    (0xA720, 0xA7FF, "Latn"),
    (0xA8E0, 0xA8FF, "Deva"),
    (0xA960, 0xA97F, "Hang"),
    (0xAB30, 0xAB6F, "Latn"),
    (0xAC00, 0xD7FF, "Hang"),
    (0xF900, 0xFAFF, "Hani"),
    (0xFB1D, 0xFB4F, "Hebr"),
    (0xFB50, 0xFDFF, "Arab"),
    (0xFE70, 0xFEFF, "Arab"),
    (0xFF21, 0xFF3A, "Latn"),
    (0xFF41, 0xFF5A, "Latn"),
    (0xFF66, 0xFF9F, "Kana"),
    (0xFFA0, 0xFFDC, "Hang"),
    (0x20000, 0x3134F, "Hani"),
)
_BLOCK_STARTS = [start for start, _, _ in _BLOCKS]
_LATIN = frozenset({"Latn"})

WORDFREQ_LANGUAGES: tuple[str, ...] = tuple(sorted(wordfreq.available_languages(wordlist="best")))

# The scripts each table language is written in. Every wordfreq language not named here is written in
# Latin script (wordfreq's own language_info says so). Serbo-Croatian ("sh") is written in both
# (wordfreq transliterates its Cyrillic to Latin); Korean lists contain Hanja words, but Han-only
# tokens are Chinese or Japanese in today's text, so Korean is Hangul only.
_NON_LATIN: dict[str, tuple[str, ...]] = {
    "am": ("Ethi",),
    "ar": ("Arab",),
    "bg": ("Cyrl",),
    "bn": ("Beng",),
    "bo": ("Tibt",),
    "el": ("Grek",),
    "fa": ("Arab",),
    "gu": ("Gujr",),
    "he": ("Hebr",),
    "hi": ("Deva",),
    "hy": ("Armn",),
    "ja": ("Hani", "Kana"),
    "ka": ("Geor",),
    "km": ("Khmr",),
    "kn": ("Knda",),
    "ko": ("Hang",),
    "lo": ("Laoo",),
    "mk": ("Cyrl",),
    "ml": ("Mlym",),
    "my": ("Mymr",),
    "or": ("Orya",),
    "pa": ("Guru",),
    "ru": ("Cyrl",),
    "sh": ("Latn", "Cyrl"),
    "si": ("Sinh",),
    "ta": ("Taml",),
    "te": ("Telu",),
    "th": ("Thai",),
    "uk": ("Cyrl",),
    "ur": ("Arab",),
    "zh": ("Hani",),
}
# Languages without a wordfreq list whose list is counted from text we ship (step 2 of the method):
# language -> the bundled parallel files (crosslens/resources/...) whose sides are compared.
TEXT_LISTS: dict[str, tuple[str, ...]] = {"sw": ("crosslens_mini", "words/concepts.jsonl")}
TEXT_LIST_MIN_COUNT = 2  # a word seen once in ~1,900 running words says little about its frequency
SCRIPTS: dict[str, frozenset[str]] = {
    lang: frozenset(_NON_LATIN.get(lang, ("Latn",)))
    for lang in sorted({*WORDFREQ_LANGUAGES, *_NON_LATIN, *TEXT_LISTS})
}
ALL_LANGUAGES: tuple[str, ...] = tuple(SCRIPTS)
WORDFREQ_VERSION = importlib.metadata.version("wordfreq")


def table_code(code: str, languages: Sequence[str] = ALL_LANGUAGES) -> str:
    """The table column for a language code (``eng_Latn``, ``de``, ``zho_Hans``, ``zh-Hant`` -> ``en``,
    ``de``, ``zh``, ``zh``); a regional variant maps to its list as wordfreq does (``srp_Cyrl``,
    ``hrv_Latn`` -> ``sh``; ``arb_Arab`` -> ``ar``). Raises ValueError for a language the table
    cannot identify, rather than silently counting it as "other"."""
    tag = code.replace("_", "-")
    try:
        language = langcodes.get(tag).language
    except ValueError:  # langcodes.LanguageTagError: not a language tag at all
        language = None
    if language is not None and language not in languages:
        language = langcodes.closest_supported_match(tag, list(languages), max_distance=9)
    if language is None or language not in languages:
        raise ValueError(
            f"unknown language for the token-language table: {code!r} "
            f"(available: {', '.join(sorted(languages))})"
        )
    return language


def is_language_code(code: str) -> bool:
    """Whether ``code`` names a language at all (``de``, ``swh_Latn``, ``YO_NG``: yes; ``xx``, ``mini``:
    no), so a language the table cannot identify is told apart from a code that is no language."""
    try:
        language = langcodes.get(code.replace("_", "-")).language
    except ValueError:
        return False
    return language is not None and langcodes.tag_is_valid(language)


def _words(text: str) -> list[str]:
    """Runs of letters (digits, punctuation and the blank ``___`` are no words)."""
    return re.findall(r"[^\W\d_]+", text)


def _parallel_texts(source: str) -> dict[str, list[str]]:
    """Language -> the texts of one bundled parallel source: a folder of ``<lang>.jsonl`` items
    (questions and choices) or the word list (words and cloze sentences)."""
    root = resources.files("crosslens") / "resources"
    texts: dict[str, list[str]] = {}
    if source.endswith(".jsonl"):
        for line in (root / source).read_text(encoding="utf-8").splitlines():
            concept = json.loads(line)
            for lang, words in concept["words"].items():
                texts.setdefault(lang, []).extend(words)
            for lang, sentence in concept.get("cloze", {}).items():
                texts.setdefault(lang, []).append(sentence)
        return texts
    for path in sorted((root / source).iterdir(), key=lambda p: p.name):
        if path.name.endswith(".jsonl"):
            for line in path.read_text(encoding="utf-8").splitlines():
                item = json.loads(line)
                texts.setdefault(path.name.removesuffix(".jsonl"), []).extend(
                    [item["question"], *item["choices"]]
                )
    return texts


@functools.cache
def text_lists() -> dict[str, dict[str, float]]:
    """The word lists of :data:`TEXT_LISTS`: language -> {normalised word: frequency} (see the module
    docstring: counts of at least :data:`TEXT_LIST_MIN_COUNT`, words of other languages' sides left out)."""
    lists: dict[str, dict[str, float]] = {}
    for lang, sources in TEXT_LISTS.items():
        tag = langcodes.Language.get(lang)
        counts: Counter[str] = Counter()
        elsewhere: set[str] = set()
        for source in sources:
            for other, texts in _parallel_texts(source).items():
                words = [preprocess_text(w, tag) for text in texts for w in _words(text)]
                if other == lang:
                    counts.update(words)
                else:
                    elsewhere.update(words)
        total = sum(counts.values())
        lists[lang] = {
            w: n / total for w, n in sorted(counts.items()) if n >= TEXT_LIST_MIN_COUNT and w not in elsewhere
        }
    return lists


def text_lists_sha256() -> str:
    """A hash of :func:`text_lists` (part of a table's provenance: edited bundled text rebuilds it)."""
    return hashlib.sha256(json.dumps(text_lists(), sort_keys=True).encode()).hexdigest()


def table_identity(table: TokenLanguages | None = None) -> dict[str, Any]:
    """What readings through a token -> language table depend on besides the tokenizer (a fingerprint
    entry): its rules, wordfreq, our text lists and, for a table of fewer languages, those;
    ``None``: the table :func:`token_languages` builds (known without building it)."""
    if table is None:
        return {"method": METHOD, "wordfreq": WORDFREQ_VERSION, "text_lists": text_lists_sha256()[:16]}
    identity: dict[str, Any] = {
        "method": table.method,
        "wordfreq": table.wordfreq_version,
        "text_lists": table.lists_sha256[:16],
    }
    if tuple(table.languages) != ALL_LANGUAGES:
        identity["languages"] = list(table.languages)
    return identity


@dataclass(frozen=True)
class Coverage:
    """How much of a vocabulary the table identifies.

    ``per_language`` is the expected number of tokens of each language, ``sum_t P(l | t)``: a token
    split 0.5/0.5 between zh and ja counts half for each.
    """

    vocab_size: int
    assigned: int  # tokens with any language (not "none")
    per_language: dict[str, float]

    @property
    def share(self) -> float:
        return self.assigned / self.vocab_size if self.vocab_size else 0.0


@dataclass(frozen=True, eq=False)
class TokenLanguages:
    """``P(language | token)`` for one tokenizer's vocabulary.

    ``probs`` is float32, shape ``(vocab_size, len(languages) + 1)``; the last column is "none" (no
    identifiable language); every row sums to 1. ``tokenizer_sha256``, ``method``,
    ``wordfreq_version`` and ``lists_sha256`` (the hash of our own lists) say what it was built from,
    so a cached table is reused only for the same tokenizer under the same rules.
    """

    languages: tuple[str, ...]
    probs: np.ndarray
    tokenizer_sha256: str
    method: str = METHOD
    wordfreq_version: str = WORDFREQ_VERSION
    lists_sha256: str = field(default_factory=lambda: text_lists_sha256())
    _device_tables: dict[Any, torch.Tensor] = field(default_factory=dict, init=False, repr=False)

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.languages, "none")

    @property
    def provenance(self) -> dict[str, Any]:
        """What the table was built from; a cached table is reused only when this matches exactly."""
        return {
            "tokenizer_sha256": self.tokenizer_sha256,
            "method": self.method,
            "wordfreq": self.wordfreq_version,
            "text_lists": self.lists_sha256,
            "languages": list(self.languages),
        }

    def coverage(self) -> Coverage:
        """How much of the vocabulary has a language: the number to quote next to any mass curve."""
        assigned = int(np.count_nonzero(self.probs[:, -1] < 1.0))
        sums = self.probs[:, :-1].sum(axis=0, dtype=np.float64)
        return Coverage(
            vocab_size=self.probs.shape[0],
            assigned=assigned,
            per_language={lang: float(s) for lang, s in zip(self.languages, sums)},
        )

    def masses(self, probs: torch.Tensor | np.ndarray, languages: Sequence[str]) -> dict[str, Any]:
        """Probability mass of a ``(..., vocab)`` next-token distribution on each requested language,
        on "other" (the table's other languages) and on "none": one ``p @ table`` product.

        Keys are the requested codes as given, then ``"other"`` and ``"none"``; values have shape
        ``(...)`` and the type of ``probs`` (torch in, torch out). A vocabulary wider than the table
        (a head padded past the tokenizer, as in Qwen) puts the padding ids' mass on "none".
        """
        codes = [table_code(code, self.languages) for code in languages]
        if len(set(codes)) != len(codes):
            raise ValueError(f"languages {list(languages)} name the same table language twice ({codes})")
        p = torch.as_tensor(probs)
        vocab = self.probs.shape[0]
        if p.shape[-1] < vocab:
            raise ValueError(f"distribution over {p.shape[-1]} tokens, but the table has {vocab} rows")
        table = self._reduced(tuple(codes), p.device)
        out = p[..., :vocab].to(table.dtype) @ table
        if p.shape[-1] > vocab:
            out[..., -1] += p[..., vocab:].to(table.dtype).sum(-1)
        names = [*languages, "other", "none"]
        result = {name: out[..., j] for j, name in enumerate(names)}
        if isinstance(probs, np.ndarray):
            return {name: value.cpu().numpy() for name, value in result.items()}
        return result

    def _reduced(self, codes: tuple[str, ...], device: torch.device) -> torch.Tensor:
        """The table summed down to (requested..., other, none) columns, kept per device so a layer
        loop on a GPU does not copy the 262k-row table on every call."""
        key = (codes, str(device))
        if key not in self._device_tables:
            fold = np.zeros((len(self.languages) + 1, len(codes) + 2), dtype=np.float32)
            fold[:-1, len(codes)] = 1.0  # every language column counts as "other"...
            for j, code in enumerate(codes):  # ...unless requested
                row = self.languages.index(code)
                fold[row, :] = 0.0
                fold[row, j] = 1.0
            fold[-1, -1] = 1.0
            self._device_tables[key] = torch.from_numpy(self.probs @ fold).to(device)
        return self._device_tables[key]


def tokenizer_sha256(tokenizer: Any) -> str:
    """A hash of what decoding and the "special" rule depend on: the backend tokenizer's full JSON
    when there is one (vocabulary, merges, decoder, added tokens), else the sorted vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    content = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    payload = json.dumps(
        {"class": type(tokenizer).__name__, "content": content, "special": sorted(_special_ids(tokenizer))}
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special)
    return ids


def _vocab_size(tokenizer: Any) -> int:
    return max(max(tokenizer.get_vocab().values()) + 1, len(tokenizer))


def _scripts(text: str) -> frozenset[str | None]:
    """The scripts of ``text``'s letters (None for a letter outside the blocks the table knows)."""
    if text.isascii():
        return _LATIN
    found = set()
    for ch in text:
        if ch.isalpha():
            code = ord(ch)
            k = bisect.bisect_right(_BLOCK_STARTS, code) - 1
            found.add(_BLOCKS[k][2] if k >= 0 and code <= _BLOCKS[k][1] else None)
    return frozenset(found)


def _lookup_profiles(languages: Sequence[str]) -> dict[tuple, list[str]]:
    """Group wordfreq languages by how wordfreq normalises their text, so each token is normalised
    once per group rather than once per language."""
    groups: dict[tuple, list[str]] = {}
    for lang in languages:
        info = get_language_info(lang)
        key = tuple(
            info[k]
            for k in ("normal_form", "transliteration", "remove_marks", "dotless_i", "diacritics_under")
        )
        groups.setdefault((*key, info["lookup_transliteration"]), []).append(lang)
    return groups


def _simplified_map() -> dict[int, str]:
    """wordfreq's Traditional -> Simplified character map (its ``chinese`` module needs jieba)."""
    with gzip.open(data_path("_chinese_mapping.msgpack.gz")) as fh:
        return msgpack.load(fh, raw=False, strict_map_key=False)


def _frequencies(lang: str, keys: set[str]) -> dict[str, float]:
    """The frequencies in ``lang``'s list of the words in ``keys``. Reads the list directly and
    intersects bucket by bucket (C speed), instead of ``get_frequency_dict``, which builds and keeps
    a dict of the whole list in a process-wide cache (9.4M words over all languages)."""
    if lang in TEXT_LISTS:
        ours = text_lists()[lang]
        return {word: ours[word] for word in keys.intersection(ours)}
    pack = wordfreq.read_cBpack(wordfreq.available_languages(wordlist="best")[lang])
    found: dict[str, float] = {}
    for index, bucket in enumerate(pack):
        for word in keys.intersection(bucket):
            found[word] = wordfreq.cB_to_freq(-index)
    return found


def _texts(tokenizer: Any, vocab_size: int) -> list[str | None]:
    """Each id's surface text, or None for ids that cannot carry a language."""
    special = _special_ids(tokenizer)
    texts: list[str | None] = []
    for i in range(vocab_size):
        text = None if i in special else tokenizer.decode([i]).strip()
        if not text or "\ufffd" in text or not any(ch.isalpha() for ch in text):
            text = None
        elif len(text) == 1 and text.isascii():  # a letter: a label, an initial (module docstring)
            text = None
        texts.append(text)
    return texts


def build_token_languages(tokenizer: Any, languages: Sequence[str] | None = None) -> TokenLanguages:
    """``P(language | token)`` for every id of ``tokenizer`` (see the module docstring for the rules).

    ``languages`` restricts the table's columns (codes as :func:`table_code` takes them); by default
    they are :data:`ALL_LANGUAGES`, so tokens of languages a study does not request fall in "other".
    """
    cols = tuple(ALL_LANGUAGES if languages is None else dict.fromkeys(table_code(c) for c in languages))
    column = {lang: j for j, lang in enumerate(cols)}
    vocab = _vocab_size(tokenizer)
    texts = _texts(tokenizer, vocab)
    rows = [i for i, text in enumerate(texts) if text is not None]

    freq = np.zeros((vocab, len(cols)), dtype=np.float64)
    simplified = _simplified_map()
    listed = [c for c in cols if c in WORDFREQ_LANGUAGES or c in TEXT_LISTS]
    for profile, group in _lookup_profiles(listed).items():
        tag = langcodes.Language.get(group[0])
        positions: dict[str, list[int]] = {}  # normalised text -> the ids decoding to it
        for i in rows:
            key = preprocess_text(texts[i], tag)
            if profile[-1] == "zh-Hans":
                key = key.translate(simplified)
            positions.setdefault(key, []).append(i)
        words = set(positions)
        for lang in group:
            for word, f in _frequencies(lang, words).items():
                freq[positions[word], column[lang]] = f

    # A list's entry counts only for a token in a script the language is written in: English loanwords
    # in the Japanese list must not make "tion" Japanese, nor stray Gujarati in the Arabic list Arabic.
    admissible = np.zeros((vocab, len(cols)), dtype=bool)
    by_script = np.zeros(vocab, dtype=bool)  # may fall back on the script alone (not Latin)
    groups: dict[frozenset[str | None], list[int]] = {}
    for i in rows:
        groups.setdefault(_scripts(texts[i]), []).append(i)
    for scripts, ids in groups.items():
        admissible[ids] = [scripts <= SCRIPTS[lang] for lang in cols]
        by_script[ids] = "Latn" not in scripts
    freq *= admissible

    probs = np.zeros((vocab, len(cols) + 1), dtype=np.float64)
    total = freq.sum(axis=1)
    known = total > 0
    probs[known, :-1] = freq[known] / total[known, None]
    silent = ~known & by_script
    candidates = admissible[silent]
    probs[silent, :-1] = candidates / np.maximum(candidates.sum(axis=1), 1)[:, None]
    probs[probs[:, :-1].sum(axis=1) == 0, -1] = 1.0
    table = probs.astype(np.float32)
    table.setflags(write=False)
    return TokenLanguages(languages=cols, probs=table, tokenizer_sha256=tokenizer_sha256(tokenizer))


def _cache_dir() -> Path:
    """``$CROSSLENS_CACHE/token-languages``, ``CROSSLENS_CACHE`` defaulting to ``~/.cache/crosslens``."""
    env = os.environ.get("CROSSLENS_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "crosslens"
    return root / "token-languages"


def _load(path: Path, expected: dict[str, Any], vocab_size: int) -> TokenLanguages | None:
    """The cached table at ``path`` if it was built for exactly ``expected``; None when it is
    unreadable or stale (the caller rebuilds)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            probs = npz["probs"]
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    if meta != expected or probs.dtype != np.float32 or probs.shape != (vocab_size, len(ALL_LANGUAGES) + 1):
        return None
    probs.setflags(write=False)
    return TokenLanguages(
        languages=tuple(meta["languages"]),
        probs=probs,
        tokenizer_sha256=meta["tokenizer_sha256"],
        method=meta["method"],
        wordfreq_version=meta["wordfreq"],
        lists_sha256=meta["text_lists"],
    )


def token_languages(tokenizer: Any, cache_dir: Path | None = None) -> TokenLanguages:
    """The table of ``tokenizer`` over :data:`ALL_LANGUAGES`, built once and cached.

    The cache (default ``$CROSSLENS_CACHE/token-languages``) holds one ``.npz`` per tokenizer hash,
    rules version and wordfreq version (arrays only, loaded with ``allow_pickle=False``), with the
    provenance inside it and in a JSON sidecar for people. A file whose recorded tokenizer, rules or
    languages differ, or that cannot be read, is rebuilt and replaced.
    """
    folder = Path(cache_dir) if cache_dir is not None else _cache_dir()
    sha = tokenizer_sha256(tokenizer)
    path = folder / f"{sha[:24]}-{METHOD}-wordfreq{WORDFREQ_VERSION}.npz"
    expected = {
        "tokenizer_sha256": sha,
        "method": METHOD,
        "wordfreq": WORDFREQ_VERSION,
        "text_lists": text_lists_sha256(),
        "languages": list(ALL_LANGUAGES),
    }
    cached = _load(path, expected, _vocab_size(tokenizer)) if path.is_file() else None
    if cached is not None:
        return cached
    table = build_token_languages(tokenizer)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probs=table.probs, meta=np.array(json.dumps(table.provenance)))
    atomic_write_bytes(path, buffer.getvalue())
    coverage = table.coverage()
    sidecar = {
        **table.provenance,
        "vocab_size": coverage.vocab_size,
        "assigned_share": round(coverage.share, 4),
    }
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")
    return table
