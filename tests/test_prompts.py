"""Prompt templates: byte-exact against the paper's Appendix A (Table 3), and template validation."""

from __future__ import annotations

import pytest

from crosslens.data.prompts import TEMPLATES, Template, get_template, labels, render, template_hash
from crosslens.data.schema import Item

# Table 3 of the paper, verbatim; rendering items whose texts are the placeholders must reproduce it.
PAPER = {
    "belebele": "Given the following question and answer choices, output the letter corresponding to the correct answer. <passage> Question: <question> A: <mc answer 1> B: <mc answer 2> C: <mc answer 3> D: <mc answer 4> Answer:",  # noqa: E501
    "mmmlu": "Given the following question and answer choices, output the letter corresponding to the correct answer. Question: <question> A: <option a> B: <option b> C: <option c> D: <option d> Answer:",  # noqa: E501
    "mhellaswag": "Given the following question and answer choices, output the letter corresponding to the correct answer. Question: <ctx> A: <ending 1> B: <ending 2> C: <ending 3> D: <ending 4> Answer:",  # noqa: E501
}


def item(question: str, choices: list[str], context: str | None = None, gold: int = 0) -> Item:
    return Item("t", "1", "en", question, tuple(choices), gold, context)


def test_paper_templates_byte_exact():
    examples = {
        "belebele": item("<question>", [f"<mc answer {k}>" for k in range(1, 5)], "<passage>"),
        "mmmlu": item("<question>", [f"<option {c}>" for c in "abcd"]),
        "mhellaswag": item("<ctx>", [f"<ending {k}>" for k in range(1, 5)]),
    }
    for name, example in examples.items():
        assert render(example, TEMPLATES[name]).encode() == PAPER[name].encode()


def test_generic_matches_mmmlu_shape_and_adds_passage():
    four = item("<question>", [f"<option {c}>" for c in "abcd"])
    assert render(four, TEMPLATES["generic"]) == PAPER["mmmlu"]
    with_context = item("<question>", [f"<mc answer {k}>" for k in range(1, 5)], "<passage>")
    assert render(with_context, TEMPLATES["generic"]) == PAPER["belebele"]


def test_generic_two_and_five_choices():
    two = render(item("Q?", ["yes", "no"]), TEMPLATES["generic"])
    assert two.endswith(" Question: Q? A: yes B: no Answer:")
    five = render(item("Q?", list("vwxyz")), TEMPLATES["generic"])
    assert five.endswith(" A: v B: w C: x D: y E: z Answer:")


def test_fields_are_stripped_to_single_spaces():
    messy = item("  Q?\n", [" a ", "b\t"], context="\n Passage. ")
    assert render(messy, TEMPLATES["generic"]).endswith("answer. Passage. Question: Q? A: a B: b Answer:")
    assert "  " not in render(messy, TEMPLATES["generic"])


def test_belebele_template_needs_a_passage():
    with pytest.raises(ValueError, match="needs a passage"):
        render(item("Q?", ["a", "b"]), TEMPLATES["belebele"])


def test_labels():
    assert labels(2) == ["A", "B"] and labels(5) == list("ABCDE") and labels(10) == list("ABCDEFGHIJ")
    for bad in (1, 11):
        with pytest.raises(ValueError):
            labels(bad)


def test_get_template_by_name_and_custom_text():
    assert get_template("mmmlu") is TEMPLATES["mmmlu"]
    custom = get_template("Frage: {question} {choices} Antwort:")
    assert custom == Template("custom", "Frage: {question} {choices} Antwort:")
    assert render(item("Q?", ["a", "b"]), custom) == "Frage: Q? A: a B: b Antwort:"


@pytest.mark.parametrize(
    "text,message",
    [
        ("belebel", r"unknown template 'belebel'; did you mean 'belebele'\?"),
        ("{question} {answers} Answer:", r"placeholder \{answers\} is unknown"),
        ("{question} Answer:", r"must contain \{choices\}"),
        ("{question!r} {choices} Answer:", "must not carry a format spec"),
        ("{question} {choices} Answer: ", "must not end in whitespace"),
        ("{question {choices}", "not a valid format string"),
    ],
)
def test_get_template_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        get_template(text)


def test_template_hash_is_stable_and_text_sensitive():
    assert template_hash(TEMPLATES["mmmlu"]) == template_hash(Template("other-name", TEMPLATES["mmmlu"].text))
    assert template_hash(TEMPLATES["mmmlu"]) != template_hash(TEMPLATES["generic"])
    assert len(template_hash(TEMPLATES["generic"])) == 16
    assert template_hash(TEMPLATES["generic"]) == "f293a65143e63924"  # pinned: changing it breaks resuming
