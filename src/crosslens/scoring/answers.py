"""Answer fields of a record: ranks, prediction and correctness from letter or full-answer scores.

Shared by every stage that ranks choices (evaluation, lens, ablation, steering), so "which answer
did the model pick" is computed one way everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from crosslens.data.schema import Item
from crosslens.models.loading import LoadedModel
from crosslens.scoring.choices import encode_continuation, rank_choices, score_prompts
from crosslens.scoring.options import CLOZE_NORMS, EvalOptions

__all__ = [
    "CLOZE_NORMS",
    "label_fields",
    "cloze_fields",
    "neutral_prompt_ids",
    "neutral_prompt_changed",
    "neutral_logprobs",
]


def label_fields(logprobs: Sequence[float], gold: int) -> dict[str, Any]:
    """ranks / pred / correct from label log-probabilities (shared by eval, lens and steering)."""
    ranks = rank_choices(logprobs)
    pred = int(ranks.index(1))
    return {
        "label_logprobs": [float(x) for x in logprobs],
        "ranks": ranks,
        "pred": pred,
        "correct": pred == gold,
    }


def cloze_fields(
    token_logprobs: Sequence[np.ndarray],
    choices: Sequence[str],
    gold: int,
    norm: str = "char",
    neutral: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Full-answer scores from each choice's token log-probs (shared by evaluation, ablation and
    steering): the total log-probability of each answer, normalised by ``norm`` (see
    :data:`CLOZE_NORMS`; ``neutral``: each answer's total after the empty prompt, for "pmi")."""
    if norm not in CLOZE_NORMS:
        raise ValueError(f"unknown cloze normalisation {norm!r}; use one of {', '.join(CLOZE_NORMS)}")
    sums = [float(np.sum(x)) for x in token_logprobs]
    texts = [c.strip() for c in choices]
    if norm == "pmi":
        if neutral is None or len(neutral) != len(sums):
            raise ValueError("pmi needs each answer's log-probability after the empty prompt")
        scores = [s - n for s, n in zip(sums, neutral)]
    else:
        size = {
            "char": [len(t) for t in texts],
            "byte": [len(t.encode("utf-8")) for t in texts],
            "token": [len(x) for x in token_logprobs],
            "none": [1] * len(texts),
        }[norm]
        scores = [s / max(1, n) for s, n in zip(sums, size)]
    pred = int(np.argmax(scores))
    return {
        "cloze_logprobs": sums,
        "cloze_tokens": [len(x) for x in token_logprobs],
        "cloze_bytes": [len(t.encode("utf-8")) for t in texts],
        **({"cloze_neutral": [float(x) for x in neutral]} if norm == "pmi" else {}),
        "cloze_norm": scores,
        "cloze_normalization": norm,
        "cloze_ranks": rank_choices(scores),
        "cloze_pred": pred,
        "cloze_correct": pred == gold,
    }


def neutral_prompt_ids(tokenizer) -> list[int]:
    """The empty prompt pmi subtracts the answer's log-probability after: lm-evaluation-harness's
    ``HFLM.prefix_token_id``, what its ``acc_mutual_info`` conditions an empty context on: the
    tokenizer's BOS token where it defines one (added to prompts or not), else its EOS token."""
    for token in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if token is not None:
            return [int(token)]
    raise ValueError("pmi needs a start or end-of-text token to condition on; this tokenizer has neither")


def neutral_prompt_changed(tokenizer) -> bool:
    """Whether :func:`neutral_prompt_ids` differs, for this tokenizer, from crosslens' first rule
    (the tokens the tokenizer adds to an empty text, else EOS): where it does (a BOS that is defined
    but not added, as SmolLM2's is), pmi folders of the first rule hold other numbers and are
    refused; where it does not (a BOS that is added, as Gemma's and Llama's are, or none at all)
    they hold the same numbers and stay reusable."""
    old = list(tokenizer("").input_ids) or [tokenizer.eos_token_id]
    return old != neutral_prompt_ids(tokenizer)


def neutral_logprobs(lm: LoadedModel, items: Sequence[Item], opts: EvalOptions) -> list[list[float]]:
    """Each answer's total log-probability after the empty prompt (one pass per distinct answer)."""
    tok = lm.tokenizer
    prompt = neutral_prompt_ids(tok)
    texts = sorted({c.strip() for it in items for c in it.choices})
    conts = [encode_continuation(tok, "", prompt, t)[0] for t in texts]
    final = lm.anatomy.n_layers
    ((_, sc),) = score_prompts(
        lm, [prompt], [final], None, [conts], opts.batch_size, opts.padding_side, opts.max_elements
    )
    sc.check("the empty prompt of pmi")
    total = {t: float(np.sum(x)) for t, x in zip(texts, sc.text_logprobs[final])}
    return [[total[c.strip()] for c in it.choices] for it in items]
