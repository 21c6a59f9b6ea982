"""The word tasks' options (config section ``words``, the ``crosslens words`` flags) and the refusals
that need no model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import Field, field_validator

from crosslens.data.schema import DataError, ParallelDataset
from crosslens.data.words import WordList, answer_word, language_name, read_words
from crosslens.lenses.kinds import LensError, check_trained_lenses, parse_lens, precheck_lens
from crosslens.options import Cli, OptionError, Options, csv
from crosslens.stages.words.tasks import Pair, Task, check_shots, pairs

if TYPE_CHECKING:
    from crosslens.stages.context import Plan, Settings

__all__ = [
    "WordsConfig",
    "DEFAULTS",
    "ENGLISH",
    "check",
    "precheck",
    "work",
    "languages_for",
    "check_words",
    "planned_pairs",
]

ENGLISH = "en"  # the latent language whose word every reading compares with


def _once(values: list[str] | None, what: str) -> list[str] | None:
    if values is not None:
        twice = sorted({v for v in values if values.count(v) > 1})
        if twice:
            raise ValueError(f"{what} {twice[0]!r} is named twice")
    return values


class WordsConfig(Options):
    """The word tasks of Wendler et al. (2024) at the run's layers, through each lens of ``lenses``."""

    tasks: Annotated[
        list[Task],
        Field(min_length=1, description="comma-separated word tasks"),
        Cli(("--task",), parse=csv),
    ] = ["translation"]
    sources: Annotated[
        list[str] | None,
        Field(
            min_length=1,
            description="comma-separated languages translated from (default: the dataset's languages "
            "that the word list has)",
        ),
        Cli(("--source",), parse=csv),
    ] = None
    targets: Annotated[
        list[str] | None,
        Field(
            min_length=1,
            description="comma-separated languages the answer is in (default: the dataset's languages that "
            "the word list has)",
        ),
        Cli(("--target",), parse=csv),
    ] = None
    lenses: Annotated[
        list[str],
        Field(min_length=1, description="logit or tuned:LENS_DIR (repeat to read through several)"),
        Cli(("--lens",)),
    ] = ["logit"]
    words: Annotated[
        Path | None,
        Field(description="a word list in the bundled JSON Lines shape (default: the bundled one)"),
    ] = None
    n_concepts: Annotated[
        int | None,
        Field(ge=1, description="the list's first N concepts only (before the tokenizer's filter)"),
    ] = None
    shots: Annotated[
        int | None,
        Field(
            ge=0, description="exemplars per prompt (default: 4 for translation and repetition, 2 for cloze)"
        ),
    ] = None
    n_boot: Annotated[int, Field(ge=0, description="bootstrap replicates over concepts for the CIs")] = 1000
    enabled: Annotated[bool, Cli(hidden=True)] = True

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        return _once(v, "task") or v

    @field_validator("sources", "targets")
    @classmethod
    def _languages(cls, v: list[str] | None) -> list[str] | None:
        return _once(v, "language")

    @field_validator("lenses")
    @classmethod
    def _lenses(cls, v: list[str]) -> list[str]:
        try:
            specs = [parse_lens(x) for x in v]
        except LensError as exc:
            raise ValueError(str(exc)) from None
        if any(s.kind == "tuned" and s.path is None for s in specs):
            raise ValueError("the word tasks read a trained tuned lens: name its folder (tuned:LENS_DIR)")
        _once([str(s) for s in specs], "lens")
        return v


DEFAULTS = WordsConfig()  # the API's defaults are the options' own


def check(settings: Settings) -> None:
    """A word list that exists, lenses that hold a lens (made for one model)."""
    section = settings.section
    assert isinstance(section, WordsConfig)
    if section.words is not None and not section.words.expanduser().is_file():
        raise OptionError("words", f"{section.words}: no such file")
    check_trained_lenses(section.lenses, len(settings.models))


def languages_for(
    words: WordList, ds: ParallelDataset, sources: Sequence[str] | None, targets: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """The sources and targets a run reads: those given, else the dataset's languages that the word
    list has (a language the list lacks is one line)."""
    default = list(dict.fromkeys(c for c in (words.code_for(lang) for lang in ds.languages) if c is not None))
    chosen = {}
    for field, given in (("sources", sources), ("targets", targets)):
        for lang in given or ():
            if lang not in words.languages:
                raise OptionError(
                    field,
                    f"the word list {words.name} has no language {lang!r} "
                    f"(it has {', '.join(words.languages)})",
                )
        if not given and not default:
            raise OptionError(
                field, f"none of {ds.name}'s languages ({', '.join(ds.languages)}) is in the word list "
                f"{words.name} ({', '.join(words.languages)}); name the languages"
            )  # fmt: skip
        chosen[field] = list(given or default)
    return chosen["sources"], chosen["targets"]


def check_words(words: WordList, planned: Sequence[Pair]) -> None:
    """Every concept has the words (and cloze sentences) the pairs read, in English too, and every
    language a prompt names has a name: one line naming the file, line and concept otherwise."""
    if ENGLISH not in words.languages:
        raise DataError(
            f"{words.source}: the word list has no English words, which every reading compares with"
        )
    langs = sorted({ENGLISH, *(p.source for p in planned), *(p.target for p in planned)})
    cloze = sorted({p.target for p in planned if p.task == "cloze"})
    words.require(langs, cloze)
    for p in planned:
        for lang in {p.source, p.target}:
            (answer_word if p.task == "cloze" else language_name)(lang)


def planned_pairs(
    section: WordsConfig, words: WordList, ds: ParallelDataset
) -> tuple[list[str], list[str], list[Pair]]:
    """The sources, targets and (task, source, target) pairs of a run, checked against the word list."""
    sources, targets = languages_for(words, ds, section.sources, section.targets)
    planned = pairs(section.tasks, sources, targets)
    check_words(words, planned)
    check_shots(words, section.tasks, section.shots)
    return sources, targets, planned


def precheck(plan: Plan) -> None:
    """Before the model loads: the word list read and checked for every pair, the lenses."""
    section = plan.section
    assert isinstance(section, WordsConfig)
    planned_pairs(section, read_words(section.words), plan.data)
    for entry in section.lenses:
        try:
            precheck_lens(entry, plan.depth)
        except LensError as exc:
            raise OptionError("lenses", str(exc)) from None


def work(plan: Plan) -> int:
    """Prompts to read (an upper bound: the tokenizer's filter drops some once the model loads)."""
    section = plan.section
    assert isinstance(section, WordsConfig)
    words = read_words(section.words)
    n = min(section.n_concepts or len(words.concepts), len(words.concepts))
    return n * len(planned_pairs(section, words, plan.data)[2])
