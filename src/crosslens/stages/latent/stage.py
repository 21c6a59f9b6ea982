"""The latent language of the lens's whole next-token distribution (Wendler et al. 2024, "Do Llamas Work
in English?"; Wu et al. 2024, "The Semantic Hub Hypothesis").

For each prompt (the dataset's prompt, as the lens stage reads it) the lens's distribution over the
whole vocabulary is formed at the last prompt token (``positions: answer``: also at each token of the
gold answer text, fed after the prompt), at every layer of the run and through every lens, and is
reduced at once, batch by batch, to its probability mass on each language of the token -> language
table (:mod:`crosslens.data.token_languages`), on "none" (tokens of no identifiable language), and
its entropy in nats. A row is one (item, language, layer, lens, position): ``mass_<code>`` for every
language of the table (so "other" can be formed for any selection of languages), ``mass_none`` and
``entropy``; the row's masses sum to 1.

The summary splits each reading into English, the prompt's own language ("native"), the other
identified languages and none, and gives per lens, prompt language and layer the mean over items
and its t-based 95 % CI, with the table's coverage. The fingerprint holds the token table's
provenance (tokenizer hash, rules, wordfreq version, our own lists) and each lens's identity; a
folder is extended with more layers, items, languages or lens kinds, and refused when a kind was
read through another lens (another tuned-lens file) or another table.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from crosslens.data.prompts import Prompter
from crosslens.data.schema import ParallelDataset
from crosslens.data.token_languages import TokenLanguages, token_languages
from crosslens.lenses.kinds import load_lenses
from crosslens.lenses.lens import Lens
from crosslens.models.anatomy import paper_layers
from crosslens.models.loading import LoadedModel
from crosslens.models.passes import continuation_pass, length_batches, prompt_pass
from crosslens.options import OptionError
from crosslens.scoring import metrics
from crosslens.scoring.choices import encode_continuation, require_finite
from crosslens.scoring.options import EvalOptions
from crosslens.stages.api import runner
from crosslens.stages.base import Stage, Unit, plan_units
from crosslens.stages.context import JobContext
from crosslens.stages.fingerprints import data_fingerprint
from crosslens.stages.latent import FIGURE, SUMMARY, TABLE
from crosslens.stages.latent.compute import MASS, SHARES, curves, elsewhere, native_codes, readout, shares
from crosslens.stages.latent.config import DEFAULTS, POSITIONS, LatentConfig, check_languages
from crosslens.stages.prompting import build_prompter, held_out
from crosslens.store import Store, same_fingerprint

__all__ = ["LatentStage", "latent_stage", "run_latent", "build", "summarize_latent"]


@dataclass(kw_only=True)
class LatentStage(Stage):
    """Mass per language and entropy of each lens's next-token distribution, per layer and position."""

    lm: LoadedModel
    prompter: Prompter
    opts: EvalOptions
    lenses: dict[str, Lens]
    languages: list[str]
    token_table: TokenLanguages
    positions: str

    def rows(self, unit: Unit) -> pd.DataFrame:
        tok, prompter = self.lm.tokenizer, self.prompter
        items = [self.ds.item(unit.language, i) for i in unit.item_ids]
        prompts = [prompter.text(it) for it in items]
        pids = [prompter.ids(p) for p in prompts]
        answers = [
            encode_continuation(tok, p, pid, it.choices[it.gold], prompter.answer_sep, not prompter.chat)[0]
            if self.positions == "answer"
            else []
            for it, p, pid in zip(items, prompts, pids)
        ]
        layers = sorted({layer for layer, _ in unit.settings})
        rows: list[pd.DataFrame] = []
        for batch in length_batches([len(p) for p in pids], self.opts.batch_size):
            states = self._states([pids[i] for i in batch], [answers[i] for i in batch], layers)
            owner = [i for i in batch for _ in range(1 + len(answers[i]))]
            base = pd.DataFrame(
                {
                    "dataset": self.ds.name,
                    "language": unit.language,
                    "item_id": [items[i].item_id for i in owner],
                    "position": [k for i in batch for k in range(1 + len(answers[i]))],
                    "token": [tok.decode([t]) for i in batch for t in (pids[i][-1], *answers[i])],
                }
            )
            for layer, kind in unit.settings:
                values = self._read(self.lenses[kind], states[layer], layer)
                for column, value in values.items():
                    require_finite(value, f"{unit.language}, layer {layer}, {kind} lens, {column}")
                rows.append(base.assign(layer=layer, lens=kind, **values))
        columns = ["dataset", "language", "item_id", "layer", "lens", "position", "token"]
        frame = pd.concat(rows, ignore_index=True)
        return frame[columns + [c for c in frame.columns if c not in columns]]

    def _states(
        self, pids: list[list[int]], answers: list[list[int]], layers: list[int]
    ) -> dict[int, torch.Tensor]:
        """Per layer, the states read, prompt by prompt: its last token, then each of its answer tokens.

        Left padding, so a prompt's answer tokens follow it directly in the cache."""
        with_answers = any(answers)
        pp = prompt_pass(self.lm, pids, layers, "left", use_cache=with_answers)
        if not with_answers:
            return pp.last
        fed = continuation_pass(self.lm, pp, list(range(len(pids))), answers, layers)
        return {
            layer: torch.cat([torch.cat([pp.last[layer][r : r + 1], fed[layer][r].to(pp.last[layer].device)])
                              for r in range(len(pids))])
            for layer in layers
        }  # fmt: skip

    def _read(self, lens: Lens, h: torch.Tensor, layer: int) -> dict[str, np.ndarray]:
        """The readout of ``h``'s rows at ``layer`` through ``lens``, a bounded number of rows at a time
        (``max_elements`` logits), so a 262k vocabulary never materialises for the whole batch."""
        step = max(1, self.opts.max_elements // int(self.lm.anatomy.unembed_weight.shape[0]))
        parts: list[dict[str, torch.Tensor]] = []
        with torch.inference_mode():
            for start in range(0, h.shape[0], step):
                values = readout(lens.logits(h[start : start + step], layer), self.token_table)
                parts.append({k: v.float().cpu() for k, v in values.items()})
        return {k: torch.cat([p[k] for p in parts]).numpy() for k in parts[0]}

    def reusable(self, held: dict[str, Any]) -> bool:
        """Lenses compared kind by kind: rows of another lens kind are reused or extended (they are rows
        of their own), a kind read through another lens (another tuned-lens file) refuses the folder, as
        does any other difference (the rest compared as every stage compares fingerprints)."""
        lenses, before = self.fingerprint["lenses"], held.get("lenses", {})
        if any(before[k] != lenses[k] for k in before.keys() & lenses.keys()):
            return False
        rest = {k: v for k, v in self.fingerprint.items() if k != "lenses"}
        return same_fingerprint({k: v for k, v in held.items() if k != "lenses"}, rest)

    def summarize(self) -> dict[str, Any]:
        return summarize_latent(
            self.store, self.read(), self.token_table, self.languages, self.positions, list(self.lenses)
        )


def summarize_latent(
    store: Store,
    rows: pd.DataFrame,
    table: TokenLanguages,
    languages: Sequence[str],
    positions: str = DEFAULTS.positions,
    lenses: Sequence[str] = ("logit",),
) -> dict[str, Any]:
    """Per lens, prompt language and layer: the mean (95 % CI over items) of the English, native, other
    and none masses and of the entropy, at the last prompt token (``last``) and, with answer
    positions, averaged over each item's answer tokens (``answer``); writes ``latent_summary.json``."""
    if rows.empty:
        raise ValueError(f"{store.root} has no latent readings")
    native = native_codes(languages, table.languages)
    read = shares(rows, native)
    groups = {"last": read[read["position"] == 0]}
    if positions == "answer":  # each item's answer tokens averaged first, so items weigh alike
        values = [*SHARES, "entropy", *(c for c in read.columns if c.startswith(MASS))]
        keys = ["lens", "language", "layer", "item_id"]
        groups["answer"] = read[read["position"] > 0].groupby(keys, as_index=False)[values].mean()
    groups = {name: frame.assign(native_elsewhere=elsewhere(frame, native)) for name, frame in groups.items()}
    coverage = table.coverage()
    codes = sorted({c for c in native.values() if c is not None} | {"en"})
    unidentified = [lang for lang, code in native.items() if code is None]
    summary: dict[str, Any] = {
        "dataset": str(rows["dataset"].iat[0]),
        "lenses": [k for k in lenses if k in set(rows["lens"])],
        "layers": sorted(int(x) for x in rows["layer"].unique()),
        "languages": list(languages),
        "native": native,
        "unidentified": unidentified,
        "positions": positions,
        "n_items": int(rows["item_id"].nunique()),
        "level": 0.95,
        "table": {
            **{k: v for k, v in table.provenance.items() if k != "languages"},
            "vocab_size": coverage.vocab_size,
            "vocab_share": coverage.share,
            "tokens": {code: coverage.per_language[code] for code in codes},
            # the share of the distributions' mass the table gives a language, per lens and layer
            "assigned_mass": {
                lens: {int(layer): float(1.0 - g["none"].mean()) for layer, g in lg.groupby("layer")}
                for lens, lg in groups["last"].groupby("lens")
            },
        },
        "curves": {group: curves(frame) for group, frame in groups.items()},
        "figure": str(store.root / FIGURE),  # drawn by the report part (crosslens.stages.latent.report)
    }
    store.write_json(SUMMARY, metrics.to_jsonable(summary))
    return summary


def latent_stage(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    languages: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    opts: EvalOptions = EvalOptions(),
    seed: int = 0,
    lenses: Sequence[str | Lens] = tuple(DEFAULTS.lenses),
    positions: str = DEFAULTS.positions,
    shots_from: ParallelDataset | None = None,
) -> LatentStage:
    """The latent-language readings of ``lm`` on ``ds`` into ``out``, through each of ``lenses``
    (``logit``, ``tuned:PATH`` or :class:`Lens` objects, one per kind), planned but not run."""
    if positions not in POSITIONS:
        raise OptionError("positions", f"must be one of {', '.join(POSITIONS)}, got {positions!r}")
    languages = list(languages or ds.languages)
    check_languages(languages)
    layers = lm.anatomy.check_layers(layers if layers is not None else paper_layers(lm.anatomy.n_layers))
    if not layers:
        raise OptionError("layers", "is empty: give at least one layer")
    loaded = load_lenses(lenses, lm, layers)
    by_kind = {lens.kind: lens for lens in loaded}
    if len(by_kind) != len(loaded):
        raise OptionError("lenses", "name each lens kind once")
    table = token_languages(lm.tokenizer)
    prompter = build_prompter(lm, ds, languages, opts, seed, shots_from)
    fingerprint = (
        data_fingerprint(lm, ds, prompter.template)
        | prompter.fingerprint()
        | {
            "positions": positions,
            # the token -> language table, key by key so a refusal names what differs
            "token_table": table.method,
            "token_table_wordfreq": table.wordfreq_version,
            "token_table_lists": table.lists_sha256[:16],
            "tokenizer_sha256": table.tokenizer_sha256[:16],
            "lenses": {kind: lens.fingerprint() for kind, lens in by_kind.items()},
        }
    )
    meta = {"model": lm.describe(), "languages": languages, "layers": layers, "lenses": list(by_kind)}
    return LatentStage(
        ds=ds,
        table=TABLE,
        store=Store(out),
        fingerprint=fingerprint,
        meta=meta,
        units=plan_units(
            ds,
            languages,
            opts.chunk_size,
            exclude=held_out(prompter, shots_from),
            settings=[(layer, kind) for kind in by_kind for layer in layers],
        ),
        setting_columns=("layer", "lens"),
        lm=lm,
        prompter=prompter,
        opts=opts,
        lenses=by_kind,
        languages=languages,
        token_table=table,
        positions=positions,
    )


def build(ctx: JobContext) -> LatentStage:
    """The latent readings of one model x dataset (the registry's builder): the run's layers, prompts
    and lenses."""
    section = ctx.section
    assert isinstance(section, LatentConfig)
    return latent_stage(
        ctx.lm, ctx.data, ctx.out, ctx.data.languages, ctx.read_layers(), ctx.eval_options(), ctx.seed,
        section.lenses, section.positions, ctx.shots,
    )  # fmt: skip


#: Mass per language and entropy of the lens's distribution per layer, resumed, and the summary:
#: :func:`latent_stage`'s arguments, and ``progress``.
run_latent = runner(latent_stage, "run_latent")
