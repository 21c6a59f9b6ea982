"""How prompts are made and answers scored: the options a user sets (:class:`ScoringOptions`, filled by
the CLI and the YAML alike) and what a scoring pass needs (:class:`EvalOptions`)."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, field_validator

from crosslens.options import Cli, Options

__all__ = ["EvalOptions", "ScoringOptions", "ClozeNorm", "CLOZE_NORMS", "PROMPT_FIELDS", "batch_size_for"]

# The options that change the prompt itself: a stage that does not honour them would silently read
# other prompts than the run's others, so a config setting them with such a stage on is refused.
PROMPT_FIELDS = ("num_fewshot", "apply_chat_template", "system_instruction")

# How a full answer's total log-probability becomes the score its choices are ranked by:
# "char" (crosslens 0.1 and lm-eval's acc_norm: per character), "byte" (per UTF-8 byte: fairer
# across scripts, whose characters carry very different amounts of text, see lm-eval issue 3278),
# "token" (per token of the model), "pmi" (minus the answer's log-probability after an empty
# prompt, lm-eval's acc_mutual_info) and "none" (the total, lm-eval's acc).
ClozeNorm = Literal["char", "byte", "token", "pmi", "none"]
CLOZE_NORMS: tuple[str, ...] = typing.get_args(ClozeNorm)

AUTO_BATCH = {"cpu": 16, "accelerator": 64}  # prompts per pass for batch size "auto"


def batch_size_for(value: int | str, device: str) -> int:
    """``auto``: 16 prompts per pass on CPU, 64 on an accelerator (halved on out-of-memory)."""
    if value == "auto":
        return AUTO_BATCH["cpu" if device == "cpu" else "accelerator"]
    return int(value)


class ScoringOptions(Options):
    """The prompt around a question and how full answers are ranked (evaluation, lens, ablation, steering)."""

    cloze: Annotated[
        bool, Field(description="also score the full answer texts (cloze)"), Cli(("--cloze/--no-cloze",))
    ] = True
    cloze_norm: Annotated[
        ClozeNorm,
        Field(
            description="full-answer score: log-prob per char, byte or token, pmi (minus the log-prob after "
            "an empty prompt) or none (the total)"
        ),
    ] = "char"
    num_fewshot: Annotated[
        int,
        Field(
            ge=0,
            description="exemplars with their answer letters before each question (same items everywhere)",
        ),
    ] = 0
    apply_chat_template: Annotated[
        bool,
        Field(description="the prompt as the user turn of the model's chat template"),
        Cli(("--apply-chat-template",)),
    ] = False
    system_instruction: Annotated[
        str | None,
        Field(description="a system turn (without a chat template: a paragraph before the prompt)"),
    ] = None

    @field_validator("cloze_norm")
    @classmethod
    def _norm_needs_cloze(cls, v: str, info) -> str:
        if info.data.get("cloze") is False:
            raise ValueError(f"{v!r} ranks full answers, which are not scored without cloze")
        return v

    @field_validator("system_instruction")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("is empty: give the text of the system turn, or leave it out")
        return v


_SCORING = ScoringOptions()  # the defaults below are the options' own
CHUNK_SIZE = 32  # items per unit of work: the resume granularity (RunOptions' default too)
PADDING_SIDE = "left"


@dataclass(frozen=True)
class EvalOptions:
    """What a scoring pass needs. Batching, padding, chunking and ``max_elements`` change speed, never
    results (beyond float rounding); the prompt (template, exemplars, chat turn) and cloze options do."""

    template: str | None = None  # template name or text; None = the dataset's default
    batch_size: int = AUTO_BATCH["cpu"]
    padding_side: str = PADDING_SIDE
    chunk_size: int = CHUNK_SIZE
    cloze: bool = _SCORING.cloze
    cloze_norm: str = _SCORING.cloze_norm  # one of CLOZE_NORMS
    num_fewshot: int = _SCORING.num_fewshot
    apply_chat_template: bool = _SCORING.apply_chat_template
    system_instruction: str | None = _SCORING.system_instruction
    max_elements: int = 2**26  # logits projected at once (memory budget of the vocabulary projection)
