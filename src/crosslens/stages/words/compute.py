"""The word tasks' maths: which tokens stand for a word, which concepts a tokenizer keeps (Wendler et
al.'s filter), the readings of one next-token distribution, and CIs over concepts.

**A word's tokens.** A model answering ``中文: "`` with 花 emits the word's first token next, and
it may write the word with or without a leading space, or capitalised. A word's token set is the
first token of each variant (each accepted form, as written and with its first letter upper-cased;
each with and without a leading space), as the variant follows the prompts' closing context
``: "`` (tokenised jointly, the context cut off; :func:`~crosslens.scoring.choices.encode_continuation`),
de-duplicated. A variant whose first token is a bare space (no token joins the space and the word's
start) or part of a character (a byte token, shared by every character that starts with that byte)
adds nothing: such a token stands for no word in particular. P(word) is the sum of the next-token
probabilities of that set: the probability that the model starts writing the word. A word whose
first token is a short piece (``Bl`` of ``Blume``) counts every word starting so: the price of a
next-token readout.

**The filter.** A concept is kept for a target language when its target token set shares no token
with its English token set (else P(target) and P(English) would count the same mass twice),
neither set holds the tokenizer's unknown token and neither is empty (every variant starts with a
byte token). In translation, a concept is also left out of a pair when its target set shares a
token with its source word's (:meth:`Screen.copies`): copying from the prompt is not translating.
English as the target is not compared with English (its two probabilities are the same number).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from crosslens.data.words import Concept
from crosslens.scoring.choices import encode_continuation

__all__ = [
    "CONTEXT",
    "TOKENS_RULE",
    "REASONS",
    "LEVEL",
    "METRICS",
    "ALL",
    "FROM_ENGLISH",
    "Screen",
    "word_tokens",
    "screen",
    "readings",
    "mean_ci",
    "curves",
    "landmarks",
]

CONTEXT = ': "'  # how every word-task prompt ends, right before the answer
TOKENS_RULE = "first-token:forms*capitalised*space-v1"  # bump when word_tokens changes (fingerprinted)
LEVEL = 0.95
REASONS = {
    "shared": "share a first token with the English word",
    "unknown": "start with the tokenizer's unknown token",
    "bytes": "start with part of a character (a byte token)",
}
METRICS = ("p_target", "p_english", "mass_target", "mass_english", "entropy")


def word_tokens(tokenizer: Any, forms: Sequence[str]) -> tuple[int, ...]:
    """The first token of every variant of ``forms`` (see the module docstring), sorted."""
    context = list(tokenizer(CONTEXT, add_special_tokens=False).input_ids)
    ids: set[int] = set()
    for form in forms:
        for text in dict.fromkeys((form, form[:1].upper() + form[1:])):
            for sep in ("", " "):
                cont, _ = encode_continuation(tokenizer, CONTEXT, context, text, sep, special=False)
                first = tokenizer.decode(cont[:1]) if cont else ""
                if first.strip() and "\ufffd" not in first:  # not a bare space, not part of a character
                    ids.add(int(cont[0]))
    return tuple(sorted(ids))


@dataclass(frozen=True)
class Screen:
    """One tokenizer's view of a word list: each (concept, language)'s token set, and per target
    language the concepts kept and those dropped, by reason (:data:`REASONS`)."""

    tokens: Mapping[tuple[str, str], tuple[int, ...]]
    kept: Mapping[str, list[str]]
    dropped: Mapping[str, dict[str, list[str]]]

    def copies(self, source: str, target: str) -> list[str]:
        """The kept concepts whose target word shares a first token with their ``source`` word: in
        translation the model could copy the word from the prompt (Chinese and Japanese share many
        characters), which would read as the target, so they are left out of that pair."""
        return [c for c in self.kept[target] if set(self.tokens[(c, target)]) & set(self.tokens[(c, source)])]

    def counts(self) -> dict[str, dict[str, Any]]:
        """Per target: concepts screened, kept, and the dropped ones by reason (what the summary keeps)."""
        return {
            t: {
                "concepts": len(self.kept[t]) + sum(len(v) for v in self.dropped[t].values()),
                "kept": len(self.kept[t]),
                "dropped": {reason: list(ids) for reason, ids in self.dropped[t].items()},
            }
            for t in self.kept
        }


def screen(
    tokenizer: Any,
    concepts: Sequence[Concept],
    targets: Sequence[str],
    english: str = "en",
    sources: Sequence[str] = (),
) -> Screen:
    """Wendler et al.'s filter of ``concepts`` for each target language under ``tokenizer`` (the
    token sets of ``sources`` are kept too, for :meth:`Screen.copies`)."""
    unknown = tokenizer.unk_token_id
    tokens = {
        (c.id, lang): word_tokens(tokenizer, c.words[lang])
        for c in concepts
        for lang in dict.fromkeys([english, *targets, *sources])
    }
    kept: dict[str, list[str]] = {}
    dropped: dict[str, dict[str, list[str]]] = {}
    for target in targets:
        kept[target], dropped[target] = [], {reason: [] for reason in REASONS}
        for c in concepts:
            mine, en = tokens[(c.id, target)], tokens[(c.id, english)]
            if unknown is not None and unknown in (*mine, *en):
                dropped[target]["unknown"].append(c.id)
            elif not mine or not en:
                dropped[target]["bytes"].append(c.id)
            elif target != english and set(mine) & set(en):
                dropped[target]["shared"].append(c.id)
            else:
                kept[target].append(c.id)
    return Screen(tokens, kept, dropped)


def _set_logsumexp(z: torch.Tensor, ids: Sequence[Sequence[int]]) -> torch.Tensor:
    """log sum_{i in ids[b]} exp z_b(i) for every row b of the logits ``z`` (B, V)."""
    width = max(len(x) for x in ids)
    index = torch.tensor([list(x) + [x[0]] * (width - len(x)) for x in ids], dtype=torch.long)
    real = torch.tensor([[k < len(x) for k in range(width)] for x in ids])
    picked = z.gather(1, index.to(z.device))
    return picked.masked_fill(~real.to(z.device), -torch.inf).logsumexp(-1)


def readings(
    logits: torch.Tensor, target: Sequence[Sequence[int]], english: Sequence[Sequence[int]]
) -> tuple[dict[str, np.ndarray], torch.Tensor]:
    """From next-token logits (B, V): P(target word), P(English word) (each the sum over its token
    set), the entropy (nats, ``log Z - E_p[z]``: one pass, no 0 * log 0) and the most probable
    token; and the probabilities themselves (B, V), which the token-language masses read."""
    z = logits.float()
    log_z = z.logsumexp(-1)
    p = (z - log_z[:, None]).exp()
    found = {
        "p_target": (_set_logsumexp(z, target) - log_z).exp(),
        "p_english": (_set_logsumexp(z, english) - log_z).exp(),
        "entropy": log_z - (p * z).sum(-1),
        "top_id": z.argmax(-1),
    }
    return {k: v.cpu().numpy() for k, v in found.items()}, p


def mean_ci(values: np.ndarray, n_boot: int, seed: int, level: float = LEVEL) -> dict[str, Any]:
    """Mean over concepts with a percentile bootstrap CI (NaN skipped; no CI below two values)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    out: dict[str, Any] = {"mean": float(v.mean()) if v.size else np.nan, "ci_low": np.nan, "ci_high": np.nan}
    if v.size >= 2 and n_boot > 0:
        rng = np.random.default_rng(seed)
        reps = v[rng.integers(0, v.size, (n_boot, v.size))].mean(1)
        out["ci_low"], out["ci_high"] = (
            float(x) for x in np.percentile(reps, [50 * (1 - level), 50 * (1 + level)])
        )
    return out | {"n": int(v.size)}


ALL, FROM_ENGLISH = "all", "from_en"  # the pooled groups of :func:`curves`


def curves(rows: pd.DataFrame, n_boot: int, seed: int, english: str = "en") -> dict[str, Any]:
    """``{task: {group: {lens: {layer: {metric: {mean, ci_low, ci_high, n}}}}}}``, each a mean over
    concepts. Groups: each target language (a concept's value is its mean over the sources it was
    asked from), :data:`ALL` pooling every non-English target (its mean over every such pair), and,
    apart, :data:`FROM_ENGLISH`: translation *from* English into the other targets. Translation from
    English is left out of the other groups: its prompt holds the English word, so P(English) there
    measures copying from the prompt, not a latent English (Wendler et al. translate from other
    languages only)."""
    keys = ["task", "target", "lens", "layer", "concept"]
    copying = (rows["task"] == "translation") & (rows["source"] == english)
    latent = rows[~copying]
    groups = [
        latent.groupby(keys)[list(METRICS)].mean().reset_index(),
        _pooled(latent[latent["target"] != english], ALL),
        _pooled(rows[copying & (rows["target"] != english)], FROM_ENGLISH),
    ]
    out: dict[str, Any] = {}
    for (task, target, lens, layer), grp in pd.concat(groups).groupby(keys[:-1], sort=False):
        cell = {m: mean_ci(grp[m].to_numpy(), n_boot, seed) for m in METRICS}
        out.setdefault(task, {}).setdefault(target, {}).setdefault(lens, {})[int(layer)] = cell
    return out


def _pooled(rows: pd.DataFrame, group: str) -> pd.DataFrame:
    """Each concept's mean over the rows' pairs, per (task, lens, layer), as target ``group``."""
    keys = ["task", "lens", "layer", "concept"]
    return rows.groupby(keys)[list(METRICS)].mean().reset_index().assign(target=group)


def landmarks(curve: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """Where a P(target)-vs-P(English) curve turns: the layer (before the last) where mean P(English)
    peaks, both means there, and the first layer from which mean P(target) stays above mean
    P(English) to the last layer (None if it never does)."""
    layers = sorted(int(x) for x in curve)
    mean = {m: {x: curve[x][m]["mean"] for x in layers} for m in ("p_target", "p_english")}
    inner = layers[:-1] or layers
    peak = max(inner, key=lambda x: (mean["p_english"][x], -x))
    takeover = None
    for x in reversed(layers):
        if not mean["p_target"][x] > mean["p_english"][x]:
            break
        takeover = x
    return {
        "english_peak_layer": peak,
        "english_peak": mean["p_english"][peak],
        "target_at_english_peak": mean["p_target"][peak],
        "target_takes_over": takeover,
        "final_layer": layers[-1],
        "final_target": mean["p_target"][layers[-1]],
        "final_english": mean["p_english"][layers[-1]],
    }
