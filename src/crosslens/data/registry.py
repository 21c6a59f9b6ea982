"""The dataset registry: which benchmarks exist, where they load from, and alignment across languages.

Every benchmark is read by a format-specific reader in :mod:`crosslens.data.loaders` into one list of
:class:`Item` per language; :func:`load_dataset` then keeps the items present (with the same answer)
in every requested language plus the English pivot, so that index ``i`` means the same question in
every language. Misalignment is never silent: dropped items are counted and logged, and
``strict=True`` turns the first problem into a :class:`DataError`.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from crosslens.data import loaders as L
from crosslens.data.schema import LETTERS, DataError, ParallelDataset
from crosslens.files import FileFormatError

if TYPE_CHECKING:
    from crosslens.data.loaders import Sources, Table

__all__ = [
    "DatasetInfo",
    "list_datasets",
    "load_dataset",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetInfo:
    """What ``crosslens datasets`` prints: a registered dataset and where it loads from."""

    name: str
    languages: tuple[str, ...]  # codes known in advance; a local folder may hold fewer (or more)
    pivot: str | None  # the dataset's own English code
    template: str
    splits: tuple[str, ...]  # the first is the default; () when the format has no splits
    description: str
    source: str


@dataclass(frozen=True)
class _Spec:
    info: DatasetInfo
    local: Callable[[Path, str | None, str], Sources] | None  # (root, split, dataset name)
    hub: Callable[[str | None, str], Sources] | None = None
    pivot_reader: Callable[[Path, str, str], Table] | None = None  # (file, language, dataset name)
    folders: tuple[str, ...] = ()  # sub-folder names tried under $CROSSLENS_DATA
    bundled: str | None = None  # package resource folder
    positional: bool = False  # ids are "<group>/<split>/<row>" aligned by row order within a group


def _specs() -> dict[str, _Spec]:

    def info(name: str, languages: str, pivot: str | None, template: str, splits: str, description: str,
             source: str) -> DatasetInfo:  # fmt: skip
        return DatasetInfo(
            name, tuple(languages.split()), pivot, template, tuple(splits.split()), description, source
        )

    okapi = "ar bn ca da de es eu fr gu hi hr hu hy id it kn ml mr ne nl pt ro ru sk sr sv ta te uk vi zh"
    gmmlu = (
        "am ar bn cs de el en es fa fil fr ha he hi id ig it ja ko ky lt mg ms ne nl ny pl pt ro ru si "
        "sn so sr sv sw te tr uk vi yo zh"
    )
    prox = "af ar bn cs de en es fr hi hu id it ja ko mr ne pt ru sr sw te th uk ur vi wo yo zh zu"
    mmmlu = "EN_US AR_XY BN_BD DE_DE ES_LA FR_FR HI_IN ID_ID IT_IT JA_JP KO_KR PT_BR SW_KE YO_NG ZH_CN"
    specs = [
        _Spec(
            info("belebele", "", "eng_Latn", "belebele", "",
                 "Belebele reading comprehension, 122 FLORES-200 codes (eng_Latn, deu_Latn, ...), 4 choices",
                 "data_dir/<lang>.jsonl, else Hub facebook/belebele"),
            L.belebele_files, hub=L.belebele_hub, folders=("belebele",),
        ),
        _Spec(
            info("mmmlu", mmmlu, "EN_US", "mmmlu", "",
                 "OpenAI MMMLU (human-translated MMLU test set), English from Hendrycks MMLU test CSVs",
                 "data_dir/mmlu_<XX-YY>.csv + data_dir[/test]/<subject>_test.csv, "
                 "else Hub openai/MMMLU + cais/mmlu"),
            L.mmmlu_files, hub=L.mmmlu_hub, folders=("mmmlu",), positional=True,
        ),
        _Spec(
            info("mhellaswag", f"en {okapi}", "en", "mhellaswag", "",
                 "Okapi machine-translated HellaSwag validation set, English from the original HellaSwag",
                 "data_dir/<lang>_validation.json + data_dir/hellaswag_val.jsonl, "
                 "else Hub alexandrainst/m_hellaswag + Rowan/hellaswag"),
            L.mhellaswag_files, hub=L.mhellaswag_hub, folders=("mhellaswag",),
        ),
        _Spec(
            info("okapi-mmlu", f"en {okapi}", "en", "generic", "val dev test",
                 "Okapi machine-translated MMLU (ids subject/split/row), English from Hendrycks MMLU CSVs",
                 "data_dir[/okapi]/<lang>_<split>.json + data_dir/<split>/<subject>_<split>.csv, "
                 "else Hub alexandrainst/m_mmlu + cais/mmlu"),
            L.okapi_mmlu_files, hub=L.okapi_mmlu_hub, folders=("okapi-mmlu", "mmlu"),
        ),
        _Spec(
            info("okapi-arc", f"en {okapi}", "en", "generic", "test val train",
                 "Okapi machine-translated ARC; English only from a user-supplied en_<split>.json",
                 "data_dir/<lang>_<split>.json, else Hub alexandrainst/m_arc"),
            L.okapi_arc_files, hub=L.okapi_arc_hub, pivot_reader=L.read_okapi, folders=("okapi-arc",),
        ),
        _Spec(
            info("global-mmlu", gmmlu, "en", "generic", "test dev",
                 "Global-MMLU: MMLU in 42 languages (professional, community and machine translations), "
                 "culturally sensitive (CS) / agnostic (CA) tags", "data_dir/<lang>/<split>-*.parquet, "
                 "else Hub CohereLabs/Global-MMLU"),
            L.global_mmlu_files, hub=L.global_mmlu_hub, folders=("global-mmlu",),
        ),
        _Spec(
            info("mmlu-prox", prox, "en", "generic", "test validation",
                 "MMLU-ProX: MMLU-Pro in 29 languages, up to 10 choices (letters A-J)",
                 "data_dir/<lang>/<split>-*.parquet, else Hub li-lab/MMLU-ProX"),
            L.mmlu_prox_files, hub=L.mmlu_prox_hub, folders=("mmlu-prox",),
        ),
        _Spec(
            info("xstorycloze", "en ar es eu hi id my ru sw te zh", "en", "generic", "eval train",
                 "XStoryCloze story endings (2 choices), professionally translated",
                 "data_dir/spring2016.val.<lang>.tsv.split_20_80_<split>.tsv, else Hub juletx/xstory_cloze"),
            L.xstorycloze_files, hub=L.xstorycloze_hub, folders=("xstorycloze",),
        ),
        _Spec(
            info("xcopa", "et ht id it qu sw ta th tr vi zh", None, "generic", "test val",
                 "XCOPA causal reasoning (2 choices); English only via pivot_file (a COPA jsonl)",
                 "data_dir[/<lang>]/<split>.<lang>.jsonl, else Hub cambridgeltl/xcopa"),
            L.xcopa_files, hub=L.xcopa_hub, pivot_reader=L.read_xcopa, folders=("xcopa",),
        ),
        _Spec(
            info("jsonl", "", "en", "generic", "",
                 "Your own data: <lang>.jsonl files or one file with a 'language' field (see docs/data.md)",
                 "data_dir (a folder or one .jsonl file)"),
            L.jsonl_files, pivot_reader=L.read_jsonl,
        ),
        _Spec(
            info("crosslens-mini", "en de fr es zh ja ru hi ar sw", "en", "generic", "",
                 "Small bundled parallel set for demos and tests, in the generic jsonl format",
                 "package resources crosslens/resources/crosslens_mini"),
            L.jsonl_files, bundled="crosslens_mini",
        ),
    ]  # fmt: skip
    return {s.info.name: s for s in specs}


def list_datasets() -> list[DatasetInfo]:
    """All registered datasets, in registry order."""
    return [s.info for s in _specs().values()]


def load_dataset(
    name: str,
    languages: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    strict: bool = False,
    split: str | None = None,
    pivot_file: str | Path | None = None,
    pivot: str | None = None,
) -> ParallelDataset:
    """Load ``languages`` (default: all available) of a registered dataset, aligned by item id.

    ``data_dir`` is the folder in the benchmark's official layout (see docs/data.md); without it,
    ``$CROSSLENS_DATA/<name>`` is tried, then the Hugging Face Hub where the dataset has a Hub loader.
    The English pivot is always loaded (``items[pivot]``) but is listed in ``languages`` only if
    requested. ``pivot`` overrides the English code (useful for ``jsonl``); ``pivot_file`` supplies
    English items for datasets that ship none (xcopa, okapi-arc, jsonl).
    """
    specs = _specs()
    if name not in specs:
        close = difflib.get_close_matches(name, specs, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(f"unknown dataset {name!r}{hint} (known: {', '.join(specs)})")
    try:
        return _load(specs[name], languages, data_dir, strict, split, pivot_file, pivot)
    except (DataError, FileFormatError) as e:
        raise DataError(f"{name}: {e}") from None


def _load(
    spec: _Spec,
    languages: Sequence[str] | None,
    data_dir: str | Path | None,
    strict: bool,
    split: str | None,
    pivot_file: str | Path | None,
    pivot: str | None,
) -> ParallelDataset:
    info = spec.info
    if split is None:
        split = info.splits[0] if info.splits else None
    elif split not in info.splits:
        raise DataError(f"unknown split {split!r} (available: {', '.join(info.splits) or 'none'})")
    if pivot_file is not None and spec.pivot_reader is None:
        raise DataError(
            "pivot_file is only supported for datasets without English data (xcopa, okapi-arc, jsonl)"
        )
    sources, where = _sources(spec, data_dir, split)
    pivot = pivot or (info.pivot if pivot_file is None else info.pivot or "en")
    if pivot_file is not None and spec.pivot_reader is not None:
        sources[pivot] = partial(spec.pivot_reader, Path(pivot_file), pivot, info.name)
        where += f" + pivot_file {Path(pivot_file).expanduser().resolve()}"

    available = sorted(sources)
    if languages is None:
        requested = ([pivot] if pivot in sources else []) + [lang for lang in available if lang != pivot]
    else:
        requested = list(languages)
    if not requested:
        raise DataError("no languages requested")
    for lang in requested:
        if lang not in sources:
            close = difflib.get_close_matches(lang, available, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise DataError(f"unknown language {lang!r}; {hint}available: {', '.join(available)}")
    if len(set(requested)) != len(requested):
        raise DataError(f"language listed twice in {requested}")
    if pivot is not None and pivot not in sources:
        logger.warning("%s: no English (%s) data found, so english_choices() returns None", info.name, pivot)
        pivot = None

    load = requested + ([pivot] if pivot is not None and pivot not in requested else [])
    tables = {lang: sources[lang]() for lang in load}
    ids, mismatched = _align(tables, pivot or requested[0], strict, spec.positional, info.name)
    by_id = {lang: {it.item_id: it for it in t.items} for lang, t in tables.items()}
    items = {lang: [by_id[lang][i] for i in ids] for lang in load}
    dropped = {lang: len(tables[lang].items) - len(ids) for lang in load}
    if split is not None:
        where += f" (split {split})"
    return ParallelDataset(info.name, requested, pivot, items, dropped, info.template, where, mismatched)


def _sources(spec: _Spec, data_dir: str | Path | None, split: str | None) -> tuple[Sources, str]:
    """Where the data comes from (data_dir, $CROSSLENS_DATA/<folder>, bundled resources, the Hub),
    and that place in words for fingerprints (an absolute folder, ``bundled:...`` or ``hub``)."""

    name = spec.info.name
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        if not root.exists():
            raise DataError(f"{root}: no such file or folder")
        return spec.local(root, split, name), str(root.resolve())
    env = os.environ.get("CROSSLENS_DATA")
    for folder in spec.folders if env else ():
        root = Path(env).expanduser() / folder
        if root.exists():
            return spec.local(root, split, name), str(root.resolve())
    if spec.bundled is not None:
        return spec.local(L.resource_dir(spec.bundled), split, name), f"bundled:{spec.bundled}"
    if spec.hub is not None:
        return spec.hub(split, name), f"hub:{spec.info.source.rsplit('Hub ', 1)[-1]}"
    where = f" and $CROSSLENS_DATA/{spec.folders[0]} does not exist" if spec.folders else ""
    raise DataError(f"no data_dir given{where}; pass data_dir= (this dataset has no Hub loader)")


def natural_key(item_id: str) -> tuple[str | int, ...]:
    """Sort key that orders 'x/2' before 'x/10' (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", item_id)
    return tuple(int(p) if k % 2 else p for k, p in enumerate(parts))


def _align(
    tables: dict[str, Table], reference: str, strict: bool, positional: bool, name: str
) -> tuple[list[str], int]:
    """The ids usable in every language, sorted, and how many ids present in every language were
    dropped because they disagree; drops (or, if strict, raises on) the rest."""
    by_id = {lang: {it.item_id: it for it in t.items} for lang, t in tables.items()}
    common = set.intersection(*(set(d) for d in by_id.values()))
    bad: set[str] = set()
    if positional:  # row-order alignment is only meaningful when every group has the same row count
        counts = {lang: Counter(i.rsplit("/", 2)[0] for i in d) for lang, d in by_id.items()}
        for lang, c in counts.items():
            for group, n in c.items():
                m = counts[reference].get(group, 0)
                if n != m:
                    if strict:
                        raise DataError(
                            f"{tables[lang].source}: group {group!r} has {n} rows but {m} in {reference}; "
                            "row-order alignment is unsafe"
                        )
                    bad |= {i for i in common if i.rsplit("/", 2)[0] == group}

    if strict:
        for lang, d in by_id.items():
            extra = sorted(d.keys() - common, key=natural_key)
            if extra:
                first = extra[0]
                other = next(o for o in by_id if first not in by_id[o])
                where = tables[lang].where[first]
                raise DataError(f"{where} (item {first!r}): missing in {other} ({tables[other].source})")

    ref = by_id[reference]
    for item_id in sorted(common - bad, key=natural_key):
        r = ref[item_id]
        for lang, d in by_id.items():
            it = d[item_id]
            if len(it.choices) != len(r.choices):
                problem = f"{len(it.choices)} choices, but {len(r.choices)} in {reference}"
            elif it.gold != r.gold:
                problem = f"answer {LETTERS[it.gold]}, but {LETTERS[r.gold]} in {reference}"
            else:
                continue
            if strict:
                raise DataError(
                    f"{tables[lang].where[item_id]} (item {item_id!r}): {problem} "
                    f"({tables[reference].where[item_id]})"
                )
            bad.add(item_id)

    kept = sorted(common - bad, key=natural_key)
    dropped = {lang: len(t.items) - len(kept) for lang, t in tables.items()}
    if any(dropped.values()):
        logger.warning(
            "%s: %d items aligned across %s; dropped per language %s (%d disagree on answer or choice count)",
            name,
            len(kept),
            ", ".join(tables),
            dropped,
            len(bad),
        )
    return kept, len(bad)
