"""The word tasks of Wendler et al. (2024) as a stage: for each (task, source, target) pair and each
concept a tokenizer keeps, the next-token distribution after the prompt read through each lens at
each layer, reduced to P(target word), P(English word), the mass on English and target-language
tokens (:mod:`crosslens.data.token_languages`), the entropy and the top token.

Units are (pair, chunk of concepts) with (lens, layer) settings, so more targets, sources, tasks,
concepts, layers or lenses extend a folder; another word list, model, seed, number of exemplars or
prompt format is refused (the fingerprint). The maths: :mod:`crosslens.stages.words.compute`;
the prompts: :mod:`crosslens.stages.words.tasks`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import ValidationError

from crosslens.data.prompts import get_template
from crosslens.data.schema import DataError, ParallelDataset
from crosslens.data.token_languages import TokenLanguages, table_code, table_identity, token_languages
from crosslens.data.words import WordList, read_words
from crosslens.lenses.kinds import lens_kinds, load_lenses
from crosslens.lenses.lens import Lens
from crosslens.models.anatomy import paper_layers
from crosslens.models.loading import LoadedModel
from crosslens.models.passes import continuation_pass, prefix_groups, prompt_pass
from crosslens.options import OptionError, first_error
from crosslens.scoring import metrics
from crosslens.scoring.choices import SHARED_PREFIX_MIN, context_limit, require_finite
from crosslens.scoring.options import CHUNK_SIZE
from crosslens.stages.activations import last_token_states
from crosslens.stages.api import runner
from crosslens.stages.base import Stage, Unit
from crosslens.stages.context import JobContext
from crosslens.stages.fingerprints import data_fingerprint
from crosslens.stages.words import FIGURES, SUMMARY, TABLE
from crosslens.stages.words.compute import (
    LEVEL,
    REASONS,
    TOKENS_RULE,
    Screen,
    curves,
    landmarks,
    readings,
    screen,
)
from crosslens.stages.words.config import DEFAULTS, ENGLISH, WordsConfig, planned_pairs
from crosslens.stages.words.tasks import (
    Pair,
    exemplars,
    prompt_digest,
    render,
    shots_for,
)
from crosslens.store import Store

__all__ = ["WordsStage", "words_stage", "run_words", "build", "lens_tag", "shared_last_states"]

MAX_LOGITS = 2**26  # vocabulary logits projected at once (a 262k vocabulary: 256 states)


def lens_tag(lens: Lens) -> str:
    """A lens's name in the rows: its kind, plus a short hash of its identity when the kind alone
    does not say which lens it is (``tuned:3fa2c81b90de``), so two tuned lenses never share rows."""
    fp = lens.fingerprint()
    if fp == lens.kind:
        return lens.kind
    digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]
    return f"{lens.kind}:{digest}"


@dataclass(kw_only=True)
class WordsStage(Stage):
    """Word-task readings of one model: units are (pair, concepts) with (lens, layer) settings."""

    lm: LoadedModel
    words: WordList
    pairs: dict[str, Pair]
    lenses: dict[str, Lens]
    layers: list[int]
    screened: Screen
    copies: dict[str, list[str]]
    shots: int | None
    seed: int
    n_boot: int
    batch_size: int

    token_table: TokenLanguages | None = None

    @cached_property
    def table_languages(self) -> TokenLanguages:
        """The token -> language table: the one given, else the tokenizer's (built once, then cached)."""
        return self.token_table if self.token_table is not None else token_languages(self.lm.tokenizer)

    def digest(self, language: str, item_id: str) -> str:
        """A row reads one concept (the whole list's digest is in the fingerprint)."""
        return self.words.concept(item_id).digest

    def prompt(self, pair: Pair, concept_id: str) -> str:
        """The prompt asking ``concept_id`` in ``pair`` (exemplars drawn with the run's seed)."""
        concept = self.words.concept(concept_id)
        shots = exemplars(self.words, pair, concept.id, shots_for(pair.task, self.shots), self.seed)
        return render(pair, concept, shots)

    def _mass_languages(self, target: str) -> tuple[list[str], str | None]:
        """The languages whose token mass a row keeps, and the target's name among them (None: the
        table cannot identify the target language, e.g. Swahili, whose mass is then NaN)."""
        if target == ENGLISH:
            return [ENGLISH], ENGLISH
        try:
            table_code(target, self.table_languages.languages)
        except ValueError:
            return [ENGLISH], None
        return [ENGLISH, target], target

    def rows(self, unit: Unit) -> pd.DataFrame:
        pair, tok = self.pairs[unit.language], self.lm.tokenizer
        concepts = list(unit.item_ids)
        ids = [list(tok(self.prompt(pair, c)).input_ids) for c in concepts]
        limit = context_limit(self.lm)
        for c, x in zip(concepts, ids):
            if limit is not None and len(x) > limit:
                raise DataError(
                    f"{pair.key} {c!r}: the prompt needs {len(x)} tokens, more than the {limit} of "
                    f"{self.lm.spec}'s context; use fewer exemplars (shots)"
                )
        layers = sorted({layer for _, layer in unit.settings})
        states = shared_last_states(self.lm, ids, layers, self.batch_size)
        target = [self.screened.tokens[(c, pair.target)] for c in concepts]
        english = [self.screened.tokens[(c, ENGLISH)] for c in concepts]
        langs, target_name = self._mass_languages(pair.target)
        step = max(1, MAX_LOGITS // int(self.lm.anatomy.unembed_weight.shape[0]))
        rows: list[dict[str, Any]] = []
        for tag, layer in unit.settings:
            lens = self.lenses[tag]
            h = torch.from_numpy(states[layer])
            for start in range(0, len(concepts), step):
                part = slice(start, start + step)
                with torch.no_grad():
                    r, p = readings(lens.logits(h[part], layer), target[part], english[part])
                where = f"{pair.key}, concepts {concepts[part][0]!r}.., layer {layer} ({tag} lens)"
                require_finite(np.concatenate([r["p_target"], r["p_english"], r["entropy"]]), where)
                mass = self.table_languages.masses(p, langs)
                for k, concept in enumerate(concepts[part]):
                    top = int(r["top_id"][k])
                    rows.append(
                        {
                            "concept": concept,
                            "task": pair.task,
                            "source": pair.source,
                            "target": pair.target,
                            "lens": tag,
                            "layer": int(layer),
                            "p_target": float(r["p_target"][k]),
                            "p_english": float(r["p_english"][k]),
                            "mass_target": float(mass[target_name][k]) if target_name else float("nan"),
                            "mass_english": float(mass[ENGLISH][k]),
                            "mass_other": float(mass["other"][k]),
                            "mass_none": float(mass["none"][k]),
                            "entropy": float(r["entropy"][k]),
                            "top_token": tok.decode([top]),
                            "top_is_target": top in target[start + k],
                            "top_is_english": top in english[start + k],
                        }
                    )
        return pd.DataFrame(rows)

    def read(self) -> pd.DataFrame:
        """The rows of the selection: its pairs and concepts, its (lens, layer) settings."""
        df = self.store.read(self.table)
        if df.empty:
            return df
        keys = df["task"] + ":" + df["source"] + ">" + df["target"]
        wanted = pd.MultiIndex.from_tuples([(u.language, i) for u in self.units for i in u.item_ids])
        keep = pd.MultiIndex.from_arrays([keys, df["concept"]]).isin(wanted)
        settings = pd.MultiIndex.from_tuples(self.selected_settings())
        keep &= pd.MultiIndex.from_arrays([df["lens"], df["layer"]]).isin(settings)
        return df[keep].reset_index(drop=True)

    def summarize(self) -> dict[str, Any]:
        df = self.read()
        found = curves(df, self.n_boot, self.seed) if not df.empty else {}
        marks = {
            task: {
                target: {lens: landmarks(curve) for lens, curve in by_lens.items()}
                for target, by_lens in by_target.items()
            }
            for task, by_target in found.items()
        }
        tasks = list(dict.fromkeys(p.task for p in self.pairs.values()))
        coverage = self.table_languages.coverage()
        summary: dict[str, Any] = {
            "word_list": {
                "name": self.words.name,
                "source": self.words.source,
                "sha256": self.words.sha256,
                "concepts": len(self.words.concepts),
            },
            "tasks": tasks,
            "sources": list(dict.fromkeys(p.source for p in self.pairs.values() if p.task == "translation")),
            "targets": list(dict.fromkeys(p.target for p in self.pairs.values())),
            "pairs": list(self.pairs),
            "layers": self.layers,
            "lenses": {tag: _lens_info(lens) for tag, lens in self.lenses.items()},
            "shots": {task: shots_for(task, self.shots) for task in tasks},
            "seed": self.seed,
            "n_boot": self.n_boot,
            "level": LEVEL,
            "n_prompts": int(df[["task", "source", "target", "concept"]].drop_duplicates().shape[0])
            if len(df)
            else 0,
            "filter": self.screened.counts(),
            "copies": {key: ids for key, ids in self.copies.items() if ids},
            "reasons": REASONS,
            "token_languages": {
                "method": self.table_languages.method,
                "wordfreq": self.table_languages.wordfreq_version,
                "assigned_share": coverage.share,
            },
            "curves": found,
            "landmarks": marks,
            "examples": self.examples(),
            # drawn by the report part (crosslens.stages.words.report)
            "figures": {key: str(self.store.root / name) for key, name in FIGURES.items()},
        }
        self.store.write_json(SUMMARY, metrics.to_jsonable(summary))
        return summary

    def examples(self) -> dict[str, str]:
        """The prompt of each task's first pair and concept read (what the summary shows)."""
        out: dict[str, str] = {}
        for u in self.units:
            pair = self.pairs[u.language]
            if pair.task not in out:
                out[pair.task] = self.prompt(pair, u.item_ids[0])
        return out


def shared_last_states(
    lm: LoadedModel, prompt_ids: Sequence[Sequence[int]], layers: Sequence[int], batch_size: int
) -> dict[int, np.ndarray]:
    """float32 (n, d) states at each prompt's last token per layer, in input order. Prompts sharing a
    prefix (a pair's exemplar block) have it encoded once, their own tokens fed after its cache
    (:func:`~crosslens.models.passes.prefix_groups`, as :func:`~crosslens.scoring.choices.score_prompts`
    shares them); each prefix runs alone, so no padding sits inside a sliding window."""
    out = {layer: np.zeros((len(prompt_ids), lm.anatomy.d_model), dtype=np.float32) for layer in layers}
    groups = prefix_groups(prompt_ids, SHARED_PREFIX_MIN)
    alone = [members[0] for k, members in groups if k == 0]
    if alone:
        states = last_token_states(lm, [prompt_ids[i] for i in alone], layers, batch_size)
        for layer in layers:
            out[layer][alone] = states[layer]
    for k, members in ((k, m) for k, m in groups if k > 0):
        prefix = prompt_pass(lm, [prompt_ids[members[0]][:k]], [], use_cache=True)
        for start in range(0, len(members), batch_size):
            chunk = members[start : start + batch_size]
            fed = continuation_pass(lm, prefix, [0] * len(chunk), [prompt_ids[i][k:] for i in chunk], layers)
            for layer in layers:
                out[layer][chunk] = torch.stack([s[-1] for s in fed[layer]]).float().cpu().numpy()
    return out


def _lens_info(lens: Lens) -> dict[str, Any]:
    kind = lens_kinds().get(lens.kind)
    return {"kind": lens.kind, "title": kind.title if kind else lens.kind, "fingerprint": lens.fingerprint()}


def words_stage(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    tasks: Sequence[str] = tuple(DEFAULTS.tasks),
    sources: Sequence[str] | None = None,
    targets: Sequence[str] | None = None,
    lenses: Sequence[Lens | str] = tuple(DEFAULTS.lenses),
    layers: Sequence[int] | None = None,
    words: WordList | str | Path | None = None,
    n_concepts: int | None = None,
    shots: int | None = None,
    n_boot: int = DEFAULTS.n_boot,
    seed: int = 0,
    batch_size: int = 8,
    chunk_size: int = CHUNK_SIZE,
    template: str | None = None,
    token_table: TokenLanguages | None = None,
) -> WordsStage:
    """The word tasks of ``lm`` into ``out``, planned but not run. ``words``: a word list (default: the
    bundled one); ``sources``/``targets``: default the languages of ``ds`` the list has (``ds`` also
    names the folder's dataset, as every stage's fingerprint does); ``layers``: default the paper's
    schedule; ``lenses``: ``logit``, ``tuned:PATH`` or :class:`Lens` objects; ``token_table``: the
    token -> language table the masses are read with (default: the tokenizer's, over every language)."""
    try:  # the options' own checks, as the CLI and the config make them
        section = WordsConfig(tasks=list(tasks), sources=sources, targets=targets, n_concepts=n_concepts,
                              shots=shots, n_boot=n_boot)  # fmt: skip
    except ValidationError as exc:
        raise OptionError(*first_error(exc)) from None
    word_list = words if isinstance(words, WordList) else read_words(words)
    src, tgt, planned = planned_pairs(section, word_list, ds)
    layers = lm.anatomy.check_layers(layers if layers is not None else paper_layers(lm.anatomy.n_layers))
    read = {lens_tag(x): x for x in load_lenses(lenses, lm, layers)}
    concepts = word_list.concepts[: section.n_concepts]
    targets_read = list(dict.fromkeys(p.target for p in planned))
    screened = screen(
        lm.tokenizer, concepts, targets_read, ENGLISH, list(dict.fromkeys(p.source for p in planned))
    )
    copies = {p.key: screened.copies(p.source, p.target) for p in planned if p.task == "translation"}
    settings = tuple((tag, layer) for tag in read for layer in layers)
    units = [
        Unit(word_list.name, p.key, k // chunk_size, tuple(kept[k : k + chunk_size]), settings)
        for p in planned
        for kept in [[c for c in screened.kept[p.target] if c not in copies.get(p.key, ())]]
        for k in range(0, len(kept), chunk_size)
    ]
    if not units:
        raise DataError(
            f"{lm.spec}'s tokenizer keeps no concept of {word_list.name} for {', '.join(targets_read)} "
            f"(every one shares its first token with English or starts with the unknown token)"
        )
    fp = data_fingerprint(lm, ds, get_template(template or ds.template)) | {
        "words": {"name": word_list.name, "sha256": word_list.sha256},
        "prompts": prompt_digest(),
        "shots": shots,
        "seed": seed,
        "tokens": TOKENS_RULE,
        "token_languages": table_identity(token_table),
    }
    counts = screened.counts()
    meta = {
        "model": lm.describe(),
        "languages": list(dict.fromkeys([*src, *tgt])),
        "layers": layers,
        "seed": seed,
        "tasks": list(section.tasks),
        "pairs": [p.key for p in planned],
        "lenses": list(read),
        "word_list": word_list.source,
        "kept": {t: c["kept"] for t, c in counts.items()},
    }
    return WordsStage(
        ds=ds,
        table=TABLE,
        store=Store(out),
        fingerprint=fp,
        meta=meta,
        units=units,
        setting_columns=("lens", "layer"),
        lm=lm,
        words=word_list,
        pairs={p.key: p for p in planned},
        lenses=read,
        layers=layers,
        screened=screened,
        copies=copies,
        shots=shots,
        seed=seed,
        n_boot=n_boot,
        batch_size=batch_size,
        token_table=token_table,
    )


def build(ctx: JobContext) -> WordsStage:
    """The word tasks of one model x dataset (the registry's builder): the run's layers and seed."""
    section = ctx.section
    assert isinstance(section, WordsConfig)
    opts = ctx.eval_options()
    return words_stage(
        ctx.lm, ctx.data, ctx.out, section.tasks, section.sources, section.targets, section.lenses,
        ctx.read_layers(), section.words, section.n_concepts, section.shots, section.n_boot, ctx.seed,
        opts.batch_size, opts.chunk_size, opts.template,
    )  # fmt: skip


#: P(target word) and P(English word) per layer and lens in the word tasks: :func:`words_stage`'s
#: arguments, and ``progress``.
run_words = runner(words_stage, "run_words")
