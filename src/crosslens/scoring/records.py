"""Evaluation records: one row per (language, item) with letter and full-answer scores at the final layer.

The row layout every records table shares (``crosslens eval``, ``import-lmeval``, the neurons
stage's ablations), and the table's name in a result folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from crosslens.data.prompts import Prompter
from crosslens.data.schema import Item
from crosslens.models.loading import LoadedModel
from crosslens.scoring import RECORDS
from crosslens.scoring.answers import cloze_fields, label_fields, neutral_logprobs
from crosslens.scoring.choices import LabelPlan, encode_continuation, score_prompts
from crosslens.scoring.options import EvalOptions

__all__ = ["RECORDS", "item_rows", "chance_level"]


def item_rows(
    lm: LoadedModel, items: list[Item], prompter: Prompter, plan: LabelPlan, opts: EvalOptions
) -> pd.DataFrame:
    """Evaluation records of ``items``: label scores and (with ``opts.cloze``) full-answer scores at
    the final layer, one row per item (also under any hooks the caller holds, e.g. ablations)."""
    tok = lm.tokenizer
    prompts = [prompter.text(it) for it in items]
    prompt_ids = [prompter.ids(p) for p in prompts]
    conts: list[list[list[int]]] | None = None
    if opts.cloze:
        conts = [
            [
                encode_continuation(tok, p, pid, c, prompter.answer_sep, not prompter.chat)[0]
                for c in it.choices
            ]
            for it, p, pid in zip(items, prompts, prompt_ids)
        ]
    label_ids = [plan.for_n(len(it.choices)) for it in items]
    neutral = neutral_logprobs(lm, items, opts) if opts.cloze and opts.cloze_norm == "pmi" else None
    final = lm.anatomy.n_layers
    shots = prompter.exemplars()
    rows: list[dict[str, Any]] = [{} for _ in items]
    for i, sc in score_prompts(
        lm, prompt_ids, [final], label_ids, conts, opts.batch_size, opts.padding_side, opts.max_elements
    ):
        it = items[i]
        sc.check(f"item {it.item_id!r} ({it.language})")
        row = {
            "dataset": it.dataset,
            "language": it.language,
            "item_id": it.item_id,
            "n_choices": len(it.choices),
            "gold": it.gold,
            **label_fields(sc.label_logprobs[final], it.gold),
            "prompt": prompts[i],
            "prompt_tokens": len(prompt_ids[i]),
            **({"fewshot_items": shots} if shots else {}),
        }
        if conts is not None:
            row |= cloze_fields(
                sc.text_logprobs[final], it.choices, it.gold, opts.cloze_norm, neutral[i] if neutral else None
            )
        rows[i] = row
    return pd.DataFrame(rows)


def chance_level(folder: Path) -> float | None:
    """1 / number of choices, averaged over a result folder's evaluated items (None without records)."""
    files = sorted(f for f in (folder / RECORDS).glob("*.parquet") if not f.name.startswith("."))
    if not files:
        return None
    n = pd.concat([pd.read_parquet(f, columns=["n_choices"]) for f in files])["n_choices"]
    return float((1.0 / n).mean())
