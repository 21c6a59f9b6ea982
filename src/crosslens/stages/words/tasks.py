"""The three word tasks of Wendler et al. (2024) and their prompts.

Every prompt is few-shot: exemplar lines, one per other concept, then the query line, which stops
right after the opening quote of the answer, so the next token *is* the answer's first token:

* **translation** (source A, target B)::

      Français: "chien" - 中文: "狗"
      ...
      Français: "fleur" - 中文: "

* **repetition** (B to B): the same lines with the target language on both sides
  (``中文: "花" - 中文: "``);
* **cloze** (in B): the concept's one-blank sentence followed by the target language's word for
  "Answer" (``... Réponse: "``), after exemplar sentences answered the same way.

Exemplars are concepts of the whole word list (not only those a tokenizer keeps) in an order
drawn with the run's seed for each (task, source, target): every prompt of a pair shows the first
``k`` of them, except that the concept asked is never its own exemplar (the next one stands in).
So a pair's prompts share one exemplar block (encoded once: the prompts differ only in their last
line), and a prompt never depends on which other pairs or concepts a run reads. Wendler et al.
draw exemplars per concept; fixed exemplars per pair are lm-evaluation-harness's practice and
make a run several times faster. Words are the canonical (first) forms.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from crosslens.data.words import ANSWER_WORDS, LANGUAGE_NAMES, Concept, WordList, answer_word, language_name
from crosslens.options import OptionError

__all__ = [
    "Task",
    "TASKS",
    "DEFAULT_SHOTS",
    "Pair",
    "pairs",
    "shots_for",
    "check_shots",
    "exemplars",
    "render",
    "prompt_digest",
]

Task = Literal["translation", "repetition", "cloze"]
TASKS: tuple[str, ...] = get_args(Task)

#: Exemplars per prompt when the run sets none: Wendler et al.'s (four pairs before the query for
#: translation and repetition, two sentences before the cloze).
DEFAULT_SHOTS = {"translation": 4, "repetition": 4, "cloze": 2}

_VERSION = "crosslens-words-v1"  # bump when render() changes the prompt text


@dataclass(frozen=True, order=True)
class Pair:
    """One (task, source, target) combination: the unit of planning (repetition and cloze have the
    target as their source)."""

    task: str
    source: str
    target: str

    @property
    def key(self) -> str:
        """The pair as a shard's "language" and a summary key: ``translation:fr>zh``."""
        return f"{self.task}:{self.source}>{self.target}"

    @classmethod
    def of(cls, key: str) -> Pair:
        task, _, langs = key.partition(":")
        source, _, target = langs.partition(">")
        return cls(task, source, target)


def pairs(tasks: Sequence[str], sources: Sequence[str], targets: Sequence[str]) -> list[Pair]:
    """Every pair the tasks make of the languages: translation from each source into each other
    target; repetition and cloze in each target."""
    out: list[Pair] = []
    for task in tasks:
        if task == "translation":
            out += [Pair(task, s, t) for s in sources for t in targets if s != t]
        else:
            out += [Pair(task, t, t) for t in targets]
    if not out:
        raise OptionError(
            "targets", f"translation needs a source other than the target (sources {list(sources)}, "
            f"targets {list(targets)})"
        )  # fmt: skip
    return out


def shots_for(task: str, shots: int | None) -> int:
    """The exemplars per prompt of ``task``: the run's, else Wendler et al.'s."""
    return DEFAULT_SHOTS[task] if shots is None else shots


def check_shots(words: WordList, tasks: Sequence[str], shots: int | None) -> None:
    """Enough other concepts for every prompt's exemplars."""
    k = max(shots_for(task, shots) for task in tasks)
    if k >= len(words.concepts):
        raise OptionError(
            "shots", f"{k} exemplars need {k + 1} concepts; {words.name} has {len(words.concepts)}"
        )


def exemplars(words: WordList, pair: Pair, concept: str, k: int, seed: int) -> list[Concept]:
    """The first ``k`` concepts other than ``concept`` of the pair's seeded order of the whole list."""
    check_shots(words, [pair.task], k)
    order = random.Random(f"words-{seed}-{pair.key}").sample(list(words.concepts), len(words.concepts))
    return [c for c in order if c.id != concept][:k]


def _line(pair: Pair, concept: Concept, answer: bool) -> str:
    if pair.task == "cloze":
        head = f'{concept.cloze[pair.target]} {answer_word(pair.target)}: "'
    else:
        source, target = language_name(pair.source), language_name(pair.target)
        head = f'{source}: "{concept.word(pair.source)}" - {target}: "'
    return head + (f'{concept.word(pair.target)}"' if answer else "")


def render(pair: Pair, concept: Concept, shots: Sequence[Concept]) -> str:
    """The prompt asking ``concept`` in ``pair``: the exemplars' lines, then the open query line."""
    return "\n".join([*(_line(pair, s, True) for s in shots), _line(pair, concept, False)])


def prompt_digest() -> str:
    """What the prompts' text depends on besides the words (the language names, the answer words,
    the format): part of every result's fingerprint."""
    doc = json.dumps([_VERSION, LANGUAGE_NAMES, ANSWER_WORDS], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()[:16]
