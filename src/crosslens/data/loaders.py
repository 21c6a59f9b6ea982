"""Readers for each benchmark's official file format, from local files or the Hugging Face Hub.

Each ``read_*`` function turns one file into a :class:`Table` of :class:`~crosslens.data.Item` for
one language and raises a one-line :class:`~crosslens.data.DataError` naming the file, line and
item id for anything malformed. Each ``*_files`` / ``*_hub`` function maps the language codes a
folder (or Hub repo) offers to lazy readers, so only the requested languages are read.
Alignment across languages lives in :mod:`crosslens.data`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator

from crosslens.data.schema import LETTERS, DataError, Item
from crosslens.files import Schema, json_records, read_text, validate

Sources = dict[str, Callable[[], "Table"]]
"""Language code -> a function that reads that language's items."""


@dataclass
class Table:
    """One language's items from one source, remembering where each item came from (for errors)."""

    language: str
    source: str
    items: list[Item] = field(default_factory=list)
    where: dict[str, str] = field(default_factory=dict)

    def add(self, item: Item, where: str) -> None:
        if item.item_id in self.where:
            raise DataError(
                f"{where} (item {item.item_id!r}): duplicate id (first at {self.where[item.item_id]})"
            )
        self.items.append(item)
        self.where[item.item_id] = where


class _Row:
    """Field access on one raw record; every failure names the record's location and item id."""

    def __init__(self, raw: Any, where: str) -> None:
        if not isinstance(raw, Mapping):
            raise DataError(f"{where}: expected an object with named fields, got {type(raw).__name__}")
        self.raw, self.where = raw, where
        self.item_id: str | None = None

    def error(self, message: str) -> DataError:
        who = f" (item {self.item_id!r})" if self.item_id is not None else ""
        return DataError(f"{self.where}{who}: {message}")

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def text(self, key: str) -> str:
        value = self.value(key)
        if not isinstance(value, str):
            raise self.error(f"field {key!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise self.error(f"field {key!r} is empty")
        return value

    def integer(self, key: str) -> int:
        value = self.value(key)
        if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"field {key!r} must be an integer, got {value!r}")
        return value

    def letter(self, key: str, n: int) -> int:
        value = self.value(key)
        allowed = LETTERS[:n]
        if not isinstance(value, str) or value.strip() not in allowed:
            raise self.error(f"field {key!r} must be one of {', '.join(allowed)}, got {value!r}")
        return allowed.index(value.strip())

    def item(self, **fields: Any) -> Item:
        try:
            return Item(**fields)
        except DataError as e:
            raise self.error(str(e)) from None

    def value(self, key: str) -> Any:
        if key not in self.raw:
            raise self.error(f"field {key!r} is missing")
        return self.raw[key]


# ---------------------------------------------------------------- raw file access
# Text and JSON are read by :mod:`crosslens.files` (one FileFormatError line for unreadable files, bytes
# that are not UTF-8 and invalid JSON); the fields of a release's records are checked by ``_Row``,
# which its CSV, Parquet and Hub rows share.


def _csv_rows(path: Path, **fmt: Any) -> Iterator[tuple[str, list[str]]]:
    """(location, row) with the line number where each (possibly multi-line) record starts."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""), **fmt)
    start = 1
    try:
        for row in reader:
            if row:
                yield f"{path} line {start}", row
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(f"{path} line {start}: malformed CSV ({e})") from None


def _header_rows(path: Path, columns: Iterable[str], **fmt: Any) -> Iterator[_Row]:
    """Rows of a CSV/TSV with a header, as records keyed by column name."""
    rows = _csv_rows(path, **fmt)
    first = next(rows, None)
    if first is None:
        raise DataError(f"{path}: file is empty")
    header = first[1]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataError(f"{path} line 1: column {missing[0]!r} is missing from the header")
    for where, row in rows:
        if len(row) != len(header):
            raise DataError(f"{where}: expected {len(header)} columns, got {len(row)}")
        yield _Row(dict(zip(header, row, strict=True)), where)


def _find(root: Path, pattern: str, what: str, subdirs: bool = False) -> dict[str, Path]:
    """Language code (the pattern's group 'lang') -> file, for files in root (and its sub-folders)."""
    if root.is_file():
        raise DataError(f"{root}: expected a folder holding {what}")
    found: dict[str, Path] = {}
    for path in sorted(root.glob("*/*" if subdirs else "*")) + (sorted(root.glob("*")) if subdirs else []):
        m = re.fullmatch(pattern, path.name)
        if m and path.is_file():
            lang = m["lang"]
            if lang in found and found[lang] != path:
                raise DataError(f"{root}: two files for language {lang!r}: {found[lang].name}, {path}")
            found[lang] = path
    if not found:
        raise DataError(f"{root}: no {what} found")
    return found


def _table(language: str, source: str, rows: Iterable[_Row], parse: Callable[[_Row], Item]) -> Table:
    table = Table(language, source)
    for row in rows:
        table.add(parse(row), row.where)
    return table


def _json_rows(path: Path) -> Iterator[_Row]:
    return (_Row(raw, where) for where, raw in json_records(path))


def resource_dir(name: str) -> Path:
    """A data folder bundled in the package (crosslens/resources/<name>)."""
    return Path(str(resources.files("crosslens") / "resources" / name))


# ---------------------------------------------------------------- Hugging Face Hub


def _hub() -> Any:
    """The optional `datasets` library, imported only when a Hub load is asked for."""
    try:
        import datasets
    except ImportError:
        raise DataError(
            "no data_dir given and the Hugging Face `datasets` library is not installed: "
            "`pip install datasets` to load from the Hub, or pass data_dir= a local copy"
        ) from None
    return datasets


def _hub_configs(repo: str, pattern: str) -> list[str]:
    return [c for c in _hub().get_dataset_config_names(repo) if re.fullmatch(pattern, c)]


def _hub_rows(repo: str, config: str | None, split: str) -> Iterator[_Row]:
    rows = _hub().load_dataset(repo, config, split=split)
    return (_Row(raw, f"hub {repo}/{config}/{split} row {k}") for k, raw in enumerate(rows))


def _hub_table(
    repo: str, config: str | None, split: str, language: str, parse: Callable[[_Row], Item]
) -> Table:
    return _table(language, f"hub {repo}/{config}/{split}", _hub_rows(repo, config, split), parse)


def _hub_languages(
    repo: str, split: str, parse: Callable[..., Item], dataset: str, exclude: tuple[str, ...] = ()
) -> Sources:
    """One reader per language config (a 2-3 letter code) of a Hub repository, ``split`` of each."""
    return {
        lang: partial(_hub_table, repo, lang, split, lang, partial(parse, language=lang, dataset=dataset))
        for lang in _hub_configs(repo, r"[a-z]{2,3}")
        if lang not in exclude
    }


# ---------------------------------------------------------------- Belebele


def _belebele_item(row: _Row, language: str, dataset: str) -> Item:
    row.item_id = f"{row.text('link')}#{row.integer('question_number')}"
    return row.item(
        dataset=dataset,
        item_id=row.item_id,
        language=language,
        question=row.text("question"),
        choices=tuple(row.text(f"mc_answer{k}") for k in range(1, 5)),
        gold=row.integer("correct_answer_num") - 1,
        context=row.text("flores_passage"),
    )


def read_belebele(path: Path, language: str, dataset: str = "belebele") -> Table:
    """One ``<lang>.jsonl`` of the Belebele release; id ``<link>#<question_number>``."""
    return _table(
        language, str(path), _json_rows(path), partial(_belebele_item, language=language, dataset=dataset)
    )


def belebele_files(root: Path, split: str | None, dataset: str) -> Sources:
    files = _find(root, r"(?P<lang>[a-z]{3}_[A-Z][a-z]{3})\.jsonl", "Belebele files (<lang>.jsonl)")
    return {lang: partial(read_belebele, path, lang, dataset) for lang, path in files.items()}


def belebele_hub(split: str | None, dataset: str) -> Sources:
    repo = "facebook/belebele"
    parse = partial(_belebele_item, dataset=dataset)
    return {
        lang: partial(_hub_table, repo, lang, "test", lang, partial(parse, language=lang))
        for lang in _hub_configs(repo, r"[a-z]{3}_[A-Z][a-z]{3}")
    }


# ---------------------------------------------------------------- MMLU family (Hendrycks CSVs, MMMLU, Okapi)

_MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")


def read_mmlu_csvs(folder: Path, split: str, language: str, dataset: str) -> Table:
    """Hendrycks ``<subject>_<split>.csv`` files (no header); id ``<subject>/<split>/<row>`` (0-based)."""
    files = _find(folder, rf"(?P<lang>.+)_{split}\.csv", f"MMLU files (<subject>_{split}.csv)")
    table = Table(language, str(folder))
    for subject, path in files.items():
        for n, (where, raw) in enumerate(_csv_rows(path)):
            if len(raw) != len(_MMLU_COLUMNS):
                raise DataError(f"{where}: expected {len(_MMLU_COLUMNS)} columns, got {len(raw)}")
            row = _Row(dict(zip(_MMLU_COLUMNS, raw, strict=True)), where)
            row.item_id = f"{subject}/{split}/{n}"
            table.add(
                row.item(
                    dataset=dataset,
                    item_id=row.item_id,
                    language=language,
                    question=row.text("question"),
                    choices=tuple(row.text(c) for c in "ABCD"),
                    gold=row.letter("answer", 4),
                ),
                where,
            )
    return table


def _mmmlu_table(language: str, source: str, rows: Iterable[_Row], dataset: str) -> Table:
    """MMMLU rows; a row's id is ``<Subject>/test/<k>`` for the k-th row of that subject (file order)."""
    seen: dict[str, int] = {}
    table = Table(language, source)
    for row in rows:
        subject = row.text("Subject").strip()
        k = seen[subject] = seen.get(subject, -1) + 1
        row.item_id = f"{subject}/test/{k}"
        item = row.item(
            dataset=dataset,
            item_id=row.item_id,
            language=language,
            question=row.text("Question"),
            choices=tuple(row.text(c) for c in "ABCD"),
            gold=row.letter("Answer", 4),
        )
        table.add(item, row.where)
    return table


def read_mmmlu(path: Path, language: str, dataset: str = "mmmlu") -> Table:
    """One OpenAI ``mmlu_XX-YY.csv`` (header ``[,]Question,A,B,C,D,Answer,Subject``; index optional)."""
    rows = _header_rows(path, ("Question", "A", "B", "C", "D", "Answer", "Subject"))
    return _mmmlu_table(language, str(path), rows, dataset)


def mmmlu_files(root: Path, split: str | None, dataset: str) -> Sources:
    files = _find(
        root, r"mmlu_(?P<lang>[A-Z]{2}-[A-Z]{2})\.csv", "MMMLU files (mmlu_XX-YY.csv)", subdirs=True
    )
    sources: Sources = {
        lang.replace("-", "_"): partial(read_mmmlu, path, lang.replace("-", "_"), dataset)
        for lang, path in files.items()
    }
    for folder in (root / "test", root):
        if any(folder.glob("*_test.csv")):
            sources["EN_US"] = partial(read_mmlu_csvs, folder, "test", "EN_US", dataset)
            break
    return sources


def _cais_mmlu_item(
    row: _Row, counts: dict[str, int], dataset: str, split: str = "test", language: str = "EN_US"
) -> Item:
    """A row of cais/mmlu ``all``; id ``<subject>/<split>/<k>`` for the k-th row of its subject, the
    row of the Hendrycks CSV (the Hub keeps subjects in file order)."""
    subject = row.text("subject")
    counts[subject] = counts.get(subject, -1) + 1
    row.item_id = f"{subject}/{split}/{counts[subject]}"
    choices = row.value("choices")
    return row.item(
        dataset=dataset,
        item_id=row.item_id,
        language=language,
        question=row.text("question"),
        choices=tuple(choices),
        gold=row.integer("answer"),
    )


def mmmlu_hub(split: str | None, dataset: str) -> Sources:
    repo = "openai/MMMLU"

    def translated(lang: str) -> Table:
        return _mmmlu_table(lang, f"hub {repo}/{lang}/test", _hub_rows(repo, lang, "test"), dataset)

    sources: Sources = {lang: partial(translated, lang) for lang in _hub_configs(repo, r"[A-Z]{2}_[A-Z]{2}")}
    sources["EN_US"] = partial(
        _hub_table, "cais/mmlu", "all", "test", "EN_US", partial(_cais_mmlu_item, counts={}, dataset=dataset)
    )
    return sources


def _okapi_item(row: _Row, language: str, dataset: str) -> Item:
    row.item_id = str(row.integer("id")) if isinstance(row.raw.get("id"), int) else row.text("id")
    keys = ["option_a", "option_b", "option_c", "option_d", "option_e"]
    while keys and not row.has(keys[-1]):  # ARC has 3- and 5-option questions; trailing ones may be absent
        keys.pop()
    choices = tuple(row.text(k) for k in keys)
    return row.item(
        dataset=dataset,
        item_id=row.item_id,
        language=language,
        question=row.text("instruction"),
        choices=choices,
        gold=row.letter("answer", len(choices)),
    )


def read_okapi(path: Path, language: str, dataset: str) -> Table:
    """One Okapi ``<lang>_<split>.json`` ({id, instruction, option_a.., answer letter})."""
    return _table(
        language, str(path), _json_rows(path), partial(_okapi_item, language=language, dataset=dataset)
    )


def okapi_mmlu_files(root: Path, split: str | None, dataset: str) -> Sources:
    okapi = root / "okapi" if (root / "okapi").is_dir() else root
    files = _find(okapi, rf"(?P<lang>[a-z]{{2,3}})_{split}\.json", f"Okapi MMLU files (<lang>_{split}.json)")
    sources: Sources = {lang: partial(read_okapi, path, lang, dataset) for lang, path in files.items()}
    if (root / str(split)).is_dir():
        sources["en"] = partial(read_mmlu_csvs, root / str(split), str(split), "en", dataset)
    return sources


def okapi_arc_files(root: Path, split: str | None, dataset: str) -> Sources:
    files = _find(root, rf"(?P<lang>[a-z]{{2,3}})_{split}\.json", f"Okapi ARC files (<lang>_{split}.json)")
    return {lang: partial(read_okapi, path, lang, dataset) for lang, path in files.items()}


# The Okapi sets on the Hub (alexandrainst/m_mmlu, m_arc, m_hellaswag: what lm-eval's okapi tasks
# load) name their splits differently from the Okapi release files.
_OKAPI_HUB_SPLITS = {"okapi-mmlu": {"dev": "train", "val": "val", "test": "test"},
                     "okapi-arc": {"train": "train", "val": "validation", "test": "test"}}  # fmt: skip
_CAIS_SPLITS = {"dev": "dev", "val": "validation", "test": "test"}


def _okapi_hub(repo: str, split: str, dataset: str) -> Sources:
    return _hub_languages(repo, _OKAPI_HUB_SPLITS[dataset][split], _okapi_item, dataset, exclude=("en",))


def okapi_mmlu_hub(split: str | None, dataset: str) -> Sources:
    """alexandrainst/m_mmlu, ids ``<subject>/<split>/<N>`` as in the release; English from cais/mmlu."""
    sources = _okapi_hub("alexandrainst/m_mmlu", str(split), dataset)
    cais = partial(_cais_mmlu_item, counts={}, dataset=dataset, split=str(split), language="en")
    sources["en"] = partial(_hub_table, "cais/mmlu", "all", _CAIS_SPLITS[str(split)], "en", cais)
    return sources


def okapi_arc_hub(split: str | None, dataset: str) -> Sources:
    """alexandrainst/m_arc (no English: give pivot_file, as with the release files)."""
    return _okapi_hub("alexandrainst/m_arc", str(split), dataset)


# ---------------------------------------------------------------- HellaSwag


def _hellaswag_item(row: _Row, language: str, dataset: str) -> Item:
    row.item_id = str(row.integer("ind"))
    endings = row.value("endings")
    if not isinstance(endings, list):
        raise row.error(f"field 'endings' must be a list, got {type(endings).__name__}")
    return row.item(
        dataset=dataset,
        item_id=row.item_id,
        language=language,
        question=row.text("ctx"),
        choices=tuple(endings),
        gold=row.integer("label"),
    )


def read_hellaswag(path: Path, language: str, dataset: str = "mhellaswag") -> Table:
    """Okapi ``<lang>_validation.json`` or the original ``hellaswag_val.jsonl``; id = ``ind``."""
    return _table(
        language, str(path), _json_rows(path), partial(_hellaswag_item, language=language, dataset=dataset)
    )


def mhellaswag_files(root: Path, split: str | None, dataset: str) -> Sources:
    files = _find(
        root, r"(?P<lang>[a-z]{2,3})_validation\.json", "Okapi HellaSwag files (<lang>_validation.json)"
    )
    english = root / "hellaswag_val.jsonl"
    if english.is_file():
        if "en" in files:
            raise DataError(f"{root}: two files for language 'en': {files['en'].name}, {english.name}")
        files["en"] = english
    return {lang: partial(read_hellaswag, path, lang, dataset) for lang, path in files.items()}


def mhellaswag_hub(split: str | None, dataset: str) -> Sources:
    """alexandrainst/m_hellaswag (split ``val``); English from the original Rowan/hellaswag validation."""
    sources = _hub_languages("alexandrainst/m_hellaswag", "val", _hellaswag_item, dataset, exclude=("en",))
    english = partial(_hellaswag_item, language="en", dataset=dataset)
    sources["en"] = partial(_hub_table, "Rowan/hellaswag", None, "validation", "en", english)
    return sources


# ---------------------------------------------------------------- Global-MMLU, MMLU-ProX (Hub parquet layout)


def _parquet_rows(paths: list[Path]) -> Iterator[_Row]:
    import pyarrow.parquet as pq

    for path in paths:
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow's ArrowInvalid and OSError: a truncated or foreign file
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
        for k, raw in enumerate(table.to_pylist()):
            yield _Row(raw, f"{path} row {k}")


def _parquet_sources(
    root: Path, split: str, what: str, parse: Callable[[_Row, str, str], Item], dataset: str
) -> Sources:
    """``<root>/<lang>/<split>[-NNNNN-of-NNNNN].parquet`` (a Hub repo's files) -> one reader per language."""
    if root.is_file():
        raise DataError(f"{root}: expected a folder holding {what}")
    shards: dict[str, list[Path]] = {}
    for path in sorted(root.glob("*/*.parquet")):
        if re.fullmatch(rf"{re.escape(split)}(-\d+-of-\d+)?\.parquet", path.name):
            shards.setdefault(path.parent.name, []).append(path)
    if not shards:
        raise DataError(f"{root}: no {what} found (<lang>/{split}-*.parquet)")

    def read(lang: str) -> Table:
        return _table(
            lang,
            str(root / lang),
            _parquet_rows(shards[lang]),
            partial(parse, language=lang, dataset=dataset),
        )

    return {lang: partial(read, lang) for lang in shards}


_GLOBAL_MMLU_TAGS = ("CA", "CS")  # culturally agnostic / culturally sensitive (2,850 annotated questions)


def _global_mmlu_item(row: _Row, language: str, dataset: str) -> Item:
    row.item_id = row.text("sample_id").strip()
    label = row.raw.get("cultural_sensitivity_label")
    tags = (label.strip(),) if isinstance(label, str) and label.strip() in _GLOBAL_MMLU_TAGS else ()
    return row.item(
        dataset=dataset,
        item_id=row.item_id,
        language=language,
        question=row.text("question"),
        choices=tuple(row.text(f"option_{c}") for c in "abcd"),
        gold=row.letter("answer", 4),
        tags=tags,
    )


def global_mmlu_files(root: Path, split: str | None, dataset: str) -> Sources:
    """CohereLabs/Global-MMLU's files: ``<lang>/<split>-*.parquet``; id = ``sample_id``."""
    return _parquet_sources(root, str(split), "Global-MMLU files", _global_mmlu_item, dataset)


def global_mmlu_hub(split: str | None, dataset: str) -> Sources:
    return _hub_languages("CohereLabs/Global-MMLU", str(split), _global_mmlu_item, dataset)


def _mmlu_prox_item(row: _Row, language: str, dataset: str) -> Item:
    row.item_id = str(row.integer("question_id"))
    given = [row.raw.get(f"option_{k}") for k in range(len(LETTERS))]
    present = [isinstance(x, str) and x.strip() not in ("", "N/A") for x in given]
    n = present.index(False) if False in present else len(present)
    if any(present[n:]):
        raise row.error(f"option_{present.index(True, n)} follows an empty option_{n}")
    choices = tuple(row.text(f"option_{k}") for k in range(n))
    gold = row.letter("answer", n)
    if row.has("answer_index") and row.integer("answer_index") != gold:
        raise row.error(
            f"answer {row.value('answer')!r} and answer_index {row.value('answer_index')} disagree"
        )
    return row.item(dataset=dataset, item_id=row.item_id, language=language, question=row.text("question"),
                    choices=choices, gold=gold)  # fmt: skip


def mmlu_prox_files(root: Path, split: str | None, dataset: str) -> Sources:
    """li-lab/MMLU-ProX's files: ``<lang>/<split>-*.parquet``; up to 10 options; id = ``question_id``."""
    return _parquet_sources(root, str(split), "MMLU-ProX files", _mmlu_prox_item, dataset)


def mmlu_prox_hub(split: str | None, dataset: str) -> Sources:
    return _hub_languages("li-lab/MMLU-ProX", str(split), _mmlu_prox_item, dataset)


# ---------------------------------------------------------------- XStoryCloze

_STORY_COLUMNS = (
    "InputStoryid",
    "InputSentence1",
    "InputSentence2",
    "InputSentence3",
    "InputSentence4",
    "RandomFifthSentenceQuiz1",
    "RandomFifthSentenceQuiz2",
    "AnswerRightEnding",
)


def _story_item(row: _Row, language: str, dataset: str, names: tuple[str, ...] = _STORY_COLUMNS) -> Item:
    row.item_id = row.text(names[0]).strip()
    return row.item(
        dataset=dataset,
        item_id=row.item_id,
        language=language,
        question=" ".join(row.text(k).strip() for k in names[1:5]),
        choices=(row.text(names[5]), row.text(names[6])),
        gold=row.integer(names[7]) - 1,
    )


def read_xstorycloze(path: Path, language: str, dataset: str = "xstorycloze") -> Table:
    """One XStoryCloze TSV; quote characters are literal text (``QUOTE_NONE``), as in the release."""
    rows = _header_rows(path, _STORY_COLUMNS, delimiter="\t", quoting=csv.QUOTE_NONE)
    return _table(language, str(path), rows, partial(_story_item, language=language, dataset=dataset))


def xstorycloze_files(root: Path, split: str | None, dataset: str) -> Sources:
    pattern = rf"spring2016\.val\.(?P<lang>[a-z]{{2,3}})\.tsv\.split_20_80_{split}\.tsv"
    files = _find(root, pattern, f"XStoryCloze files (spring2016.val.<lang>.tsv.split_20_80_{split}.tsv)")
    return {lang: partial(read_xstorycloze, path, lang, dataset) for lang, path in files.items()}


_HUB_STORY_COLUMNS = (
    "story_id",
    "input_sentence_1",
    "input_sentence_2",
    "input_sentence_3",
    "input_sentence_4",
    "sentence_quiz1",
    "sentence_quiz2",
    "answer_right_ending",
)


def xstorycloze_hub(split: str | None, dataset: str) -> Sources:
    repo = "juletx/xstory_cloze"
    return {
        lang: partial(
            _hub_table,
            repo,
            lang,
            str(split),
            lang,
            partial(_story_item, language=lang, dataset=dataset, names=_HUB_STORY_COLUMNS),
        )
        for lang in _hub_configs(repo, r"[a-z]{2}")
    }


# ---------------------------------------------------------------- XCOPA

_COPA_QUESTIONS = {"cause": "What was the cause?", "effect": "What happened as a result?"}


def _copa_item(row: _Row, language: str, dataset: str) -> Item:
    row.item_id = str(row.integer("idx"))
    kind = row.text("question").strip()
    if kind not in _COPA_QUESTIONS:
        raise row.error(f"field 'question' must be 'cause' or 'effect', got {kind!r}")
    return row.item(
        dataset=dataset,
        item_id=row.item_id,
        language=language,
        question=_COPA_QUESTIONS[kind],
        choices=(row.text("choice1"), row.text("choice2")),
        gold=row.integer("label"),
        context=row.text("premise"),
    )


def read_xcopa(path: Path, language: str, dataset: str = "xcopa") -> Table:
    """One (X)COPA jsonl; the premise becomes the context and cause/effect an English question."""
    return _table(
        language, str(path), _json_rows(path), partial(_copa_item, language=language, dataset=dataset)
    )


def xcopa_files(root: Path, split: str | None, dataset: str) -> Sources:
    pattern = rf"{split}\.(?P<lang>[a-z]{{2,3}})\.jsonl"
    files = _find(root, pattern, f"XCOPA files ({split}.<lang>.jsonl)", subdirs=True)
    return {lang: partial(read_xcopa, path, lang, dataset) for lang, path in files.items()}


def xcopa_hub(split: str | None, dataset: str) -> Sources:
    repo = "cambridgeltl/xcopa"
    hub_split = "validation" if split == "val" else str(split)
    return {
        lang: partial(
            _hub_table, repo, lang, hub_split, lang, partial(_copa_item, language=lang, dataset=dataset)
        )
        for lang in _hub_configs(repo, r"[a-z]{2}")
    }


# ---------------------------------------------------------------- generic jsonl


def _text_id(value: Any) -> Any:
    """An integer id is the item id it spells (``"id": 7`` is item ``'7'``)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _index(value: Any) -> Any:
    """An answer index written as text (``"2"``) is that number."""
    return int(value) if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value) else value


class JsonlRecord(Schema):
    """One record of the generic format: ``{id, question, choices, answer[, context][, language]}``."""

    id: Annotated[str, BeforeValidator(_text_id)]
    question: str
    choices: list[str]
    answer: Annotated[int, BeforeValidator(_index)]
    context: str | None = None
    language: str | None = None  # in a single file holding every language


def _generic_item(record: JsonlRecord, where: str, language: str, dataset: str) -> Item:
    try:
        return Item(dataset=dataset, item_id=record.id, language=language, question=record.question,
                    choices=tuple(record.choices), gold=record.answer, context=record.context)  # fmt: skip
    except DataError as e:
        raise DataError(f"{where} (item {record.id!r}): {e}") from None


def read_jsonl(path: Path, language: str, dataset: str = "jsonl") -> Table:
    """One ``<lang>.jsonl`` in the generic format ({id, question, choices, answer[, context]})."""
    table = Table(language, str(path))
    for where, raw in json_records(path):
        table.add(_generic_item(validate(raw, JsonlRecord, where), where, language, dataset), where)
    return table


def _split_by_language(path: Path, dataset: str) -> dict[str, Table]:
    """One generic jsonl file whose lines carry a 'language' field, split into per-language tables."""
    tables: dict[str, Table] = {}
    for where, raw in json_records(path):
        record = validate(raw, JsonlRecord, where)
        lang = (record.language or "").strip()
        if not lang:
            raise DataError(f"{where}: language: required in a file of every language")
        table = tables.setdefault(lang, Table(lang, str(path)))
        table.add(_generic_item(record, where, lang, dataset), where)
    if not tables:
        raise DataError(f"{path}: file has no items")
    return tables


def jsonl_files(root: Path, split: str | None, dataset: str) -> Sources:
    if root.is_file():
        return {lang: (lambda t=table: t) for lang, table in _split_by_language(root, dataset).items()}
    files = _find(root, r"(?P<lang>[^.]+)\.jsonl", "generic files (<lang>.jsonl)")
    return {lang: partial(read_jsonl, path, lang, dataset) for lang, path in files.items()}
