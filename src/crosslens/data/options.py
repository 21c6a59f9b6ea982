"""Which benchmark a stage reads: one options object that ``--dataset ...`` flags and a YAML
``datasets:`` entry both fill, checked against the registry before any file is read."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated

from pydantic import Field

from crosslens.data.registry import list_datasets, load_dataset
from crosslens.data.schema import ParallelDataset
from crosslens.options import Cli, OptionError, Options, csv

__all__ = ["DatasetConfig"]


class DatasetConfig(Options):
    """One benchmark: which languages, where its files are, how many items, which prompt."""

    name: Annotated[
        str, Field(description="dataset name (see `crosslens datasets`)"), Cli(("--dataset", "-d"))
    ]
    languages: Annotated[
        list[str] | None, Field(description="comma-separated language codes (default: all)"), Cli(parse=csv)
    ] = None
    data_dir: Annotated[
        Path | None,
        Field(
            description="folder with the dataset's official files (default: $CROSSLENS_DATA, bundled, Hub)"
        ),
    ] = None
    split: Annotated[str | None, Field(description="dataset split where it has several")] = None
    limit: Annotated[int | None, Field(ge=1, description="first N aligned items only")] = None
    template: Annotated[
        str | None, Field(description="prompt template name or text (default: the dataset's)")
    ] = None
    pivot: Annotated[str | None, Field(description="the English language code, if not the dataset's own")] = (
        None
    )
    pivot_file: Annotated[
        Path | None,
        Field(description="English items for a dataset that ships none (xcopa, okapi-arc, jsonl)"),
    ] = None
    strict: Annotated[
        bool, Field(description="fail on the first data problem instead of dropping the item")
    ] = False
    fewshot_split: Annotated[
        str | None,
        Field(
            description="split few-shot exemplars are drawn from (default: items beyond the limit, else "
            "held-out items)"
        ),
    ] = None

    def check(self) -> list[str] | None:
        """Refuse (one :class:`OptionError`) what the registry already says is wrong: an unknown
        dataset, language or split, a missing folder; returns the languages when known in advance."""
        known = {info.name: info for info in list_datasets()}
        if self.name not in known:
            close = difflib.get_close_matches(self.name, list(known), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise OptionError("name", f"unknown dataset {self.name!r}{hint}; known: {', '.join(known)}")
        info = known[self.name]
        if self.languages is not None:
            if not self.languages:
                raise OptionError("languages", "must not be empty (omit it for all languages)")
            twice = sorted({lang for lang in self.languages if self.languages.count(lang) > 1})
            if twice:
                raise OptionError("languages", f"{twice} listed twice")
            for lang in self.languages if info.languages else ():
                if lang not in info.languages:
                    close = difflib.get_close_matches(lang, info.languages, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise OptionError(
                        "languages",
                        f"{self.name} has no language {lang!r}{hint}; it has {', '.join(info.languages)}",
                    )
        for key in ("split", "fewshot_split"):
            split = getattr(self, key)
            if split is not None and split not in info.splits:
                raise OptionError(
                    key, f"{self.name} has no split {split!r} (splits: {', '.join(info.splits) or 'none'})"
                )
        if self.data_dir is not None and not self.data_dir.expanduser().exists():
            raise OptionError("data_dir", f"{self.data_dir}: no such file or folder")
        if self.pivot_file is not None and not self.pivot_file.expanduser().is_file():
            raise OptionError("pivot_file", f"{self.pivot_file}: no such file")
        return self.languages or list(info.languages) or None

    def read(self, split: str | None = None) -> ParallelDataset:
        """Every aligned item of the files (before ``limit``), of ``split`` or the configured one."""
        return load_dataset(
            self.name, self.languages, data_dir=self.data_dir, strict=self.strict,
            split=split or self.split, pivot_file=self.pivot_file, pivot=self.pivot,
        )  # fmt: skip

    def select(self, full: ParallelDataset) -> ParallelDataset:
        """The items a run reads: at least one, the first ``limit`` of them."""
        return full.require_items().limit(self.limit)
