"""Prompt templates: the paper's zero-shot multiple-choice prompts (Appendix A, Table 3).

A template is a format string over four placeholders:

- ``{question}``: the question (or HellaSwag context);
- ``{choices}``: ``A: <choice 1> B: <choice 2> ...`` with as many letters as the item has choices;
- ``{context}``: the passage, required (the Belebele template);
- ``{context_block}``: the passage followed by one space, or nothing when the item has none.

Every inserted field is stripped of leading/trailing whitespace so parts are separated by exactly
one space. The English instruction is kept for every language, as in the paper.
"""

from __future__ import annotations

import difflib
import hashlib
import string
from dataclasses import dataclass

from crosslens.data import Item

__all__ = ["LETTERS", "TEMPLATES", "Template", "get_template", "labels", "render", "template_hash"]

LETTERS = "ABCDE"
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


def render(item: Item, template: Template) -> str:
    """The full prompt for one item; with the built-in templates it ends in ``Answer:``."""
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
