"""Prompt templates: the paper's zero-shot multiple-choice prompts (Appendix A, Table 3).

A template is a format string over four placeholders:

- ``{question}``: the question (or HellaSwag context);
- ``{choices}``: ``A: <choice 1> B: <choice 2> ...`` with as many letters as the item has choices;
- ``{context}``: the passage, required (the Belebele template);
- ``{context_block}``: the passage followed by one space, or nothing when the item has none.

Every inserted field is stripped of leading/trailing whitespace so parts are separated by exactly
one space. The English instruction is kept for every language, as in the paper.

A :class:`Prompter` turns items into what one model reads: the template, optionally after K
exemplars with their answer letters (the same exemplar items in every language) and optionally
inside the model's chat template, as a user turn followed by the generation prompt.
"""

from __future__ import annotations

import difflib
import hashlib
import random
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crosslens.data.schema import LETTERS, DataError, Item, ParallelDataset

__all__ = [
    "LETTERS",
    "TEMPLATES",
    "FEWSHOT_DELIMITER",
    "Template",
    "Prompter",
    "get_template",
    "labels",
    "render",
    "draw_exemplars",
    "exemplars_for",
    "template_hash",
]

INSTRUCTION = (
    "Given the following question and answer choices, output the letter corresponding to the correct answer."
)
PLACEHOLDERS = frozenset({"question", "choices", "context", "context_block"})
_HASH_VERSION = "crosslens-prompt-v1"  # bump when render() changes how fields are inserted


def labels(n: int) -> list[str]:
    """The answer letters for ``n`` choices: ``labels(4) == ['A', 'B', 'C', 'D']``."""
    if not 2 <= n <= len(LETTERS):
        raise ValueError(f"expected 2 to {len(LETTERS)} choices, got {n}")
    return list(LETTERS[:n])


@dataclass(frozen=True)
class Template:
    """A named prompt format string (see the module docstring for placeholders)."""

    name: str
    text: str


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template("belebele", f"{INSTRUCTION} {{context}} Question: {{question}} {{choices}} Answer:"),
        Template("mmmlu", f"{INSTRUCTION} Question: {{question}} {{choices}} Answer:"),
        Template("mhellaswag", f"{INSTRUCTION} Question: {{question}} {{choices}} Answer:"),
        Template("generic", f"{INSTRUCTION} {{context_block}}Question: {{question}} {{choices}} Answer:"),
    )
}


def get_template(name_or_text: str) -> Template:
    """A built-in template by name, or a user's format string (checked, named ``custom``)."""
    if name_or_text in TEMPLATES:
        return TEMPLATES[name_or_text]
    if "{" not in name_or_text:
        close = difflib.get_close_matches(name_or_text, TEMPLATES, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"unknown template {name_or_text!r}; {hint}use one of {', '.join(TEMPLATES)} "
            "or a format string with {question} and {choices}"
        )
    try:
        fields = [
            (f, spec, conv) for _, f, spec, conv in string.Formatter().parse(name_or_text) if f is not None
        ]
    except ValueError as e:
        raise ValueError(f"template {name_or_text!r} is not a valid format string ({e})") from None
    for f, spec, conv in fields:
        if f not in PLACEHOLDERS:
            raise ValueError(
                f"template placeholder {{{f}}} is unknown; allowed: {', '.join(sorted(PLACEHOLDERS))} "
                "(write {{ and }} for literal braces)"
            )
        if spec or conv:
            raise ValueError(f"template placeholder {{{f}}} must not carry a format spec or conversion")
    missing = {"question", "choices"} - {f for f, _, _ in fields}
    if missing:
        raise ValueError(f"template must contain {{{sorted(missing)[0]}}}")
    if name_or_text != name_or_text.rstrip():
        raise ValueError("template must not end in whitespace (the answer letter's token follows it)")
    return Template("custom", name_or_text)


FEWSHOT_DELIMITER = "\n\n"  # between exemplars, and before the question (lm-evaluation-harness's default)


def render(item: Item, template: Template, shots: Sequence[Item] = ()) -> str:
    """The full prompt for one item; with the built-in templates it ends in ``Answer:``.

    ``shots``: exemplars, each rendered the same way and followed by its answer letter, before the
    question. A template that opens with the paper's instruction states it once, at the top.
    """
    parts = [f"{_render(s, template)} {labels(len(s.choices))[s.gold]}" for s in shots] + [
        _render(item, template)
    ]
    if shots and template.text.startswith(INSTRUCTION + " "):
        parts = [INSTRUCTION] + [p.removeprefix(INSTRUCTION + " ") for p in parts]
    return FEWSHOT_DELIMITER.join(parts)


def _render(item: Item, template: Template) -> str:
    context = item.context.strip() if item.context else ""
    if not context and "context" in {f for _, f, _, _ in string.Formatter().parse(template.text)}:
        raise ValueError(f"template {template.name!r} needs a passage, but item {item.item_id!r} has none")
    choices = " ".join(
        f"{letter}: {c.strip()}" for letter, c in zip(labels(len(item.choices)), item.choices, strict=True)
    )
    return template.text.format(
        question=item.question.strip(),
        choices=choices,
        context=context,
        context_block=f"{context} " if context else "",
    )


def template_hash(template: Template) -> str:
    """A stable id of the prompt text (16 hex chars); results made with another prompt are refused."""
    return hashlib.sha256(f"{_HASH_VERSION}\n{template.text}".encode()).hexdigest()[:16]


def draw_exemplars(item_ids: Sequence[str], k: int, seed: int) -> list[str]:
    """The seeded draw of ``k`` exemplar items (in the order they are shown)."""
    if not 0 <= k <= len(item_ids):
        raise DataError(f"num_fewshot: {k} needs {k} items to draw exemplars from, there are {len(item_ids)}")
    return random.Random(f"fewshot-{seed}").sample(list(item_ids), k)


@dataclass(frozen=True)
class Prompter:
    """What one model reads for each item: the template, exemplars before it, the chat turn around it.

    ``shots``: exemplars per language (the same items in every language, so consistency compares
    like with like). ``chat``: the prompt becomes the user turn of the tokenizer's chat template
    (after a system turn with ``system``) followed by its generation prompt; answers then follow
    the generation prompt directly (no space, as lm-evaluation-harness does with chat templates)
    and the rendered text already holds the special tokens (none are added when tokenising).
    Without ``chat``, ``system`` is a paragraph before the prompt.
    """

    template: Template
    tokenizer: Any = field(repr=False, compare=False)
    shots: Mapping[str, tuple[Item, ...]] = field(default_factory=dict)
    chat: bool = False
    system: str | None = None
    shots_source: str = ""

    def __post_init__(self) -> None:
        if self.chat and not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(
                "apply_chat_template: this model's tokenizer has no chat template (a base model); "
                "leave the option out"
            )
        if self.system is not None and not self.system.strip():
            raise ValueError("system_instruction is empty")

    def text(self, item: Item) -> str:
        """The rendered prompt of ``item`` (what the records keep)."""
        return self.wrap(render(item, self.template, self.shots.get(item.language, ())), item.item_id)

    def wrap(self, body: str, where: str = "") -> str:
        """``body`` as the model reads it: after the system text, or as the chat's user turn."""
        if not self.chat:
            return f"{self.system.strip()}{FEWSHOT_DELIMITER}{body}" if self.system else body
        turns = ([{"role": "system", "content": self.system.strip()}] if self.system else []) + [
            {"role": "user", "content": body}
        ]
        try:
            return self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # jinja's TemplateError, e.g. a template that refuses a system turn
            raise ValueError(
                f"the chat template refused the prompt{f' of item {where!r}' if where else ''}: {e}"
            ) from None

    def ids(self, text: str) -> list[int]:
        """Token ids of a rendered prompt (a chat-rendered one already holds its special tokens)."""
        return list(self.tokenizer(text, add_special_tokens=not self.chat).input_ids)

    @property
    def answer_sep(self) -> str:
        """What goes between the prompt and an answer text: a space, nothing after a chat turn."""
        return "" if self.chat else " "

    def exemplars(self) -> list[str]:
        return [it.item_id for it in next(iter(self.shots.values()), ())]

    def fingerprint(self) -> dict[str, Any]:
        """What the prompts depend on beyond the template (empty for a plain zero-shot prompt)."""
        fp: dict[str, Any] = {}
        if self.shots:
            digest = hashlib.sha256(
                "\n".join(it.digest for lang in sorted(self.shots) for it in self.shots[lang]).encode()
            ).hexdigest()[:16]
            ids = self.exemplars()
            fp["fewshot"] = {"k": len(ids), "items": ids, "source": self.shots_source, "digest": digest}
        if self.chat:
            fp["chat_template"] = hashlib.sha256(self.tokenizer.chat_template.encode()).hexdigest()[:16]
        if self.system:
            fp["system_instruction"] = self.system
        return fp


def exemplars_for(
    pool: ParallelDataset, languages: Sequence[str], k: int, seed: int
) -> dict[str, tuple[Item, ...]]:
    """``k`` exemplars drawn from ``pool`` (an evaluated dataset's held-out items, or another split),
    the same items in each of ``languages``."""
    if k == 0:
        return {}
    missing = [lang for lang in languages if lang not in pool.items]
    if missing:
        raise DataError(f"the few-shot items ({pool.source}) have no {missing[0]!r} items")
    ids = draw_exemplars(pool.item_ids(), k, seed)
    return {lang: tuple(pool.item(lang, i) for i in ids) for lang in languages}
