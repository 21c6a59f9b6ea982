"""The item schema: one multiple-choice question in one language, and items aligned across languages.

Readers (:mod:`crosslens.data.loaders`) produce :class:`Item`; alignment (:mod:`crosslens.data.registry`)
produces a :class:`ParallelDataset`, in which index ``i`` means the same question in every language.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property

from crosslens.errors import CrosslensError

__all__ = ["LETTERS", "DataError", "Item", "ParallelDataset"]


LETTERS = "ABCDEFGHIJ"  # answer labels: up to 10 choices (MMLU-Pro / MMLU-ProX)


class DataError(CrosslensError, ValueError):
    """A data file or request is unusable; the message is one line naming the file and item id."""


@dataclass(frozen=True)
class Item:
    """One multiple-choice question in one language (``gold`` is the 0-based index of the answer)."""

    dataset: str
    item_id: str
    language: str
    question: str
    choices: tuple[str, ...]
    gold: int
    context: str | None = None
    tags: tuple[str, ...] = ()  # e.g. Global-MMLU's culturally sensitive (CS) / agnostic (CA) label

    def __post_init__(self) -> None:
        object.__setattr__(self, "tags", tuple(self.tags))
        object.__setattr__(self, "choices", tuple(self.choices))
        n = len(self.choices)
        if not 2 <= n <= len(LETTERS):
            raise DataError(f"expected 2 to {len(LETTERS)} choices, got {n}")
        for what, text in (
            ("item id", self.item_id),
            ("language", self.language),
            ("question", self.question),
        ):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"{what} is empty")
        for k, choice in enumerate(self.choices, 1):
            if not isinstance(choice, str) or not choice.strip():
                raise DataError(f"choice {k} is empty")
        if self.context is not None and (not isinstance(self.context, str) or not self.context.strip()):
            raise DataError("context is empty")
        if isinstance(self.gold, bool) or not isinstance(self.gold, int) or not 0 <= self.gold < n:
            raise DataError(f"answer index {self.gold!r} (0-based) is out of range for {n} choices")

    @cached_property
    def digest(self) -> str:
        """A content hash of everything a result can depend on: id, language, texts and the answer.

        Results reused from disk are checked against it, so changed data under the same dataset name
        and item id is never mistaken for the data the results were computed on.
        """
        fields = [self.item_id, self.language, self.context, self.question, list(self.choices), self.gold]
        if self.tags:  # untagged items keep the digests of the results made before tags existed
            fields.append(list(self.tags))
        return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()[:16]


@dataclass
class ParallelDataset:
    """Items aligned across languages: ``items[lang][i]`` is the same question for every language."""

    name: str
    languages: list[str]
    pivot: str | None
    items: dict[str, list[Item]]
    dropped: dict[str, int]
    template: str
    source: str = ""  # where the items were read from (a folder, bundled resources, the Hub)
    mismatched: int = 0  # ids present in every language but dropped: choice count or answer differ
    _index: dict[str, dict[str, Item]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index = {lang: {it.item_id: it for it in items} for lang, items in self.items.items()}

    def __len__(self) -> int:
        return len(self.item_ids())

    def item_ids(self) -> list[str]:
        """The aligned item ids, in the order shared by every language."""
        first = next(iter(self.items.values()), [])
        return [it.item_id for it in first]

    def max_choices(self) -> int:
        """The most answer choices any item has (how many answer letters are read)."""
        return max((len(it.choices) for items in self.items.values() for it in items), default=2)

    def item(self, language: str, item_id: str) -> Item:
        if language not in self._index:
            raise DataError(
                f"{self.name}: language {language!r} is not loaded (loaded: {', '.join(self.items)})"
            )
        try:
            return self._index[language][item_id]
        except KeyError:
            raise DataError(f"{self.name}: no aligned item {item_id!r}") from None

    def drop_report(self) -> list[str]:
        """One line per language that lost items, with the real reasons."""
        lines = []
        for lang, n in self.dropped.items():
            if n:
                missing = n - self.mismatched
                reasons = [f"{missing} missing in other languages"] if missing else []
                if self.mismatched:
                    reasons.append(f"{self.mismatched} whose choice count or answer differs across languages")
                lines.append(f"{self.name}/{lang}: dropped {n} items ({'; '.join(reasons)})")
        return lines

    def require_items(self) -> ParallelDataset:
        """This dataset, or one DataError line saying why no item is left (stages never run over none)."""
        if not len(self):
            why = "; ".join(self.drop_report()) or "the files hold no items"
            raise DataError(f"{self.name}: no items aligned across {', '.join(self.items)} ({why})")
        return self

    def english_choices(self, item_id: str) -> tuple[str, ...] | None:
        """The pivot's answer options for this item (the English answers a logit lens looks for)."""
        return None if self.pivot is None else self.item(self.pivot, item_id).choices

    def subset(self, item_ids: Sequence[str]) -> ParallelDataset:
        """A new dataset with only these ids, in the given order (unknown or repeated ids are errors)."""
        ids = list(item_ids)
        repeated = [i for i, n in Counter(ids).items() if n > 1]
        if repeated:
            raise DataError(f"{self.name}: item {repeated[0]!r} is repeated in subset()")
        lang = next(iter(self._index))
        unknown = [i for i in ids if i not in self._index[lang]]
        if unknown:
            raise DataError(f"{self.name}: no aligned item {unknown[0]!r}")
        items = {lang: [self._index[lang][i] for i in ids] for lang in self.items}
        return replace(self, items=items, languages=list(self.languages), dropped=dict(self.dropped))

    def limit(self, n: int | None) -> ParallelDataset:
        """The first ``n`` aligned items (all of them when ``n`` is None)."""
        if n is not None and n < 1:
            raise DataError(f"limit must be >= 1, got {n}")
        return self.subset(self.item_ids()[:n])
