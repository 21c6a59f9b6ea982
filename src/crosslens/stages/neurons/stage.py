"""Language-specific neurons (LAPE) and a causal test: does deactivating them cause inconsistency?

**Finding them** (Tang et al. 2024, "Language-Specific Neurons: The Key to Multilingual
Capabilities in Large Language Models"). A neuron is one output of a block's gated-MLP activation,
act_fn(gate_proj(x)) (:meth:`crosslens.anatomy.Anatomy.neurons`); it is *active* on a token when
that output is > 0. Over parallel text, p[l, j, k] is the fraction of language k's tokens on which
neuron j of layer l is active. Normalised over languages, p'[l, j, :] = p / Σ_k p, its entropy is
LAPE: low entropy = active mostly for few languages. As in the paper's code:

1. a neuron is a candidate only if some language's p exceeds the ``filter_rate`` quantile of all
   p values (rarely active neurons have meaningless entropies);
2. the ``top_rate`` fraction of all neurons with the lowest LAPE among candidates is kept;
3. a kept neuron is specific to every language whose p exceeds the ``activation_bar`` quantile of
   all p values (so one neuron may belong to several languages, or to none).

The text is the items' own text (passage, question and answer choices, no prompt template: the
template's words are the same in every language) of a seeded sample of items that is held out of
the evaluation; the first token (BOS) and padding are not counted.

**The causal test.** For each language m under test, the neurons specific to m are set to 0 during
the forward pass (the activation output, so they contribute nothing to down_proj), and every
language is evaluated (answer letters and full-answer cloze scores) on the held-out items. Each of
the K controls deactivates as many *random* neurons of the same layers (seeded per draw, none of
m's own); the drawn ids are saved (``neuron_sets/`` and the summary). The effects are the paired
changes against the unablated model on the same items: accuracy (exact McNemar test), the gold
answer's score, consistency with English and tr+ from English, each with a paired bootstrap CI;
the LAPE effect is also set against the K controls' effects (their mean, spread, empirical p).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save

from crosslens.data.prompts import Prompter, Template, get_template
from crosslens.data.schema import Item, ParallelDataset
from crosslens.models.anatomy import Anatomy
from crosslens.models.loading import LoadedModel
from crosslens.models.passes import length_batches, prompt_pass
from crosslens.options import check_seed
from crosslens.scoring import metrics
from crosslens.scoring.choices import LabelPlan, label_plan
from crosslens.scoring.options import EvalOptions
from crosslens.scoring.records import item_rows
from crosslens.stages.api import runner
from crosslens.stages.base import Done, Stage, plan_units, setting_key
from crosslens.stages.context import JobContext
from crosslens.stages.fingerprints import data_fingerprint, scoring_fingerprint
from crosslens.stages.neurons import FIGURES, LAPE_TABLE, SETS_TABLE, SUMMARY, TABLE
from crosslens.stages.neurons.config import DEFAULTS, NeuronsConfig, check_rates, precheck_data
from crosslens.stages.sampling import held_out_sample, items_digest
from crosslens.store import atomic_write_bytes, no_fingerprint, same_fingerprint, settings_mismatch, unit_name

if TYPE_CHECKING:
    from crosslens.stages.base import Unit

__all__ = [
    "NeuronStats",
    "item_text",
    "count_active",
    "lape_entropy",
    "select_neurons",
    "random_control",
    "control_kinds",
    "deactivate",
    "NeuronStage",
    "neuron_stage",
    "run_neurons",
    "build",
    "STATS_FILE",
]

STATS_FILE = "neuron_stats.safetensors"
BASELINE = ("", "none")  # the setting of the unablated model
GOLD_METRICS = ("accuracy", "gold_score", "consistency_pivot", "tr_plus_from_pivot")

#: (layer -> neuron indices) of one set of neurons; layers numbered 1..n_layers like blocks.
NeuronSet = dict[int, np.ndarray]


def item_text(item: Item) -> str:
    """The parallel text of an item: passage, question and choices, without any prompt template."""
    return "\n".join(t for t in (item.context, item.question, *item.choices) if t)


# -- activation statistics ----------------------------------------------------------------------------
@dataclass
class NeuronStats:
    """Per language, on how many tokens each neuron was active (> 0), and how many tokens were read."""

    active: np.ndarray  # (n_layers, n_neurons, n_languages) counts
    tokens: np.ndarray  # (n_languages,) tokens counted
    languages: list[str]
    fingerprint: dict[str, Any] | None = None

    @property
    def probs(self) -> np.ndarray:
        """p[l, j, k]: the fraction of language k's tokens on which neuron j of layer l + 1 is active."""
        return self.active / np.maximum(self.tokens, 1)[None, None, :]

    def save(self, path: Path) -> None:
        tensors = {
            "active": torch.from_numpy(self.active.astype(np.int64)),
            "tokens": torch.from_numpy(self.tokens),
        }
        meta = {"languages": json.dumps(self.languages), "fingerprint": json.dumps(self.fingerprint)}
        atomic_write_bytes(path, save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: Path) -> NeuronStats:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if "fingerprint" not in meta:
            raise no_fingerprint(path)
        t = load_file(str(path))
        return cls(
            t["active"].numpy(),
            t["tokens"].numpy(),
            json.loads(meta["languages"]),
            json.loads(meta["fingerprint"]),
        )


def count_active(
    lm: LoadedModel, texts: Mapping[str, Sequence[str]], batch_size: int = 8, max_tokens: int = 512
) -> NeuronStats:
    """Count, per language of ``texts``, the tokens on which each MLP neuron of every block is > 0.

    Texts are cut to ``max_tokens`` tokens. The first token when it is BOS, and padding, are not
    counted. One forward pass per batch serves every layer.
    """
    anatomy = lm.anatomy
    layers = range(1, anatomy.n_layers + 1)
    languages = list(texts)
    active = np.zeros((anatomy.n_layers, anatomy.n_neurons, len(languages)), dtype=np.int64)
    tokens = np.zeros(len(languages), dtype=np.int64)
    bos = lm.tokenizer.bos_token_id
    counts: dict[int, torch.Tensor] = {}
    valid: list[torch.Tensor] = []  # the current batch's (batch, width, 1) mask of counted tokens

    def hook(layer: int) -> Callable[..., None]:
        def count(_m: torch.nn.Module, _a: tuple, out: torch.Tensor) -> None:
            on = (out > 0) & valid[0].to(out.device)
            counts[layer] = counts.get(layer, 0) + on.sum(dim=(0, 1)).cpu()

        return count

    handles = []
    try:
        for layer in layers:
            handles.append(anatomy.neurons(layer).register_forward_hook(hook(layer)))
        for k, lang in enumerate(languages):
            ids = [lm.tokenizer(t).input_ids[:max_tokens] for t in texts[lang]]
            counts.clear()
            for batch in length_batches([len(p) for p in ids], batch_size):
                rows = [ids[i] for i in batch]
                width = max(len(r) for r in rows)
                mask = torch.zeros((len(rows), width, 1), dtype=torch.bool)
                for r, p in enumerate(rows):  # left padding, as prompt_pass lays prompts out
                    skip = int(bos is not None and len(p) > 1 and p[0] == bos)
                    mask[r, width - len(p) + skip :] = True
                valid[:] = [mask]
                tokens[k] += int(mask.sum())
                prompt_pass(lm, rows, [], use_cache=False)
            for layer, c in counts.items():
                active[layer - 1, :, k] = c.numpy()
    finally:
        for h in handles:
            h.remove()
    return NeuronStats(active, tokens, languages)


# -- selection (pure) ---------------------------------------------------------------------------------
def lape_entropy(probs: np.ndarray) -> np.ndarray:
    """LAPE per neuron: the entropy of its activation probabilities normalised over languages
    (the last axis); 0 log 0 = 0, and a neuron never active has entropy 0."""
    total = probs.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(total > 0, probs / total, 0.0)
        logs = np.where(norm > 0, np.log(np.where(norm > 0, norm, 1.0)), 0.0)
    return -(norm * logs).sum(axis=-1)


def _kth_smallest(values: np.ndarray, rate: float) -> float:
    """The value at rank round(n * rate) (1-based) of ``values`` sorted ascending."""
    flat = np.sort(values.ravel())
    k = min(max(1, round(flat.size * rate)), flat.size)
    return float(flat[k - 1])


def select_neurons(
    probs: np.ndarray,
    languages: Sequence[str],
    top_rate: float = 0.01,
    filter_rate: float = 0.95,
    activation_bar: float = 0.95,
) -> tuple[dict[str, NeuronSet], dict[str, Any]]:
    """Language-specific neurons from activation probabilities ``probs`` (layers, neurons, languages).

    Returns, per language, {layer (1-based): sorted neuron indices} and the thresholds used.
    Ties in entropy are broken by (layer, neuron) order, so the selection is deterministic.
    """
    check_rates(top_rate, filter_rate, activation_bar)
    n_layers, n_neurons, _ = probs.shape
    entropy = lape_entropy(probs)
    candidate_bar = _kth_smallest(probs, filter_rate)
    entropy = np.where((probs > candidate_bar).any(axis=-1), entropy, np.inf)
    n_keep = round(entropy.size * top_rate)
    order = np.argsort(entropy.ravel(), kind="stable")[:n_keep]
    order = order[np.isfinite(entropy.ravel()[order])]
    bar = _kth_smallest(probs, activation_bar)
    layer_of, neuron_of = np.divmod(order, n_neurons)
    chosen = probs[layer_of, neuron_of] > bar  # (kept, languages)
    out: dict[str, NeuronSet] = {}
    for k, lang in enumerate(languages):
        rows = chosen[:, k]
        out[lang] = {
            int(layer) + 1: np.sort(neuron_of[rows][layer_of[rows] == layer])
            for layer in np.unique(layer_of[rows])
        }
    info = {
        "top_rate": top_rate,
        "filter_rate": filter_rate,
        "activation_bar": activation_bar,
        "candidate_threshold": candidate_bar,
        "activation_threshold": bar,
        "n_kept": int(len(order)),
        "n_neurons": int(n_layers * n_neurons),
    }
    return out, info


def _count(neurons: NeuronSet) -> int:
    return int(sum(len(v) for v in neurons.values()))


def control_kinds(k: int) -> list[str]:
    """The settings of ``k`` random controls: ``random`` (the first draw, named as when there was only
    one, so earlier folders stay reusable), then ``random:1`` .. ``random:k-1``."""
    return ["random"] + [f"random:{i}" for i in range(1, k)]


def control_label(language: str, kind: str) -> str:
    """What a control's draw is seeded with besides the seed: the language (the first draw, as
    always), ``<language>:random:<i>`` for the others; each draw is fixed and independent of K."""
    return language if kind == "random" else f"{language}:{kind}"


def random_control(neurons: NeuronSet, n_neurons: int, seed: int, label: str) -> NeuronSet:
    """As many random neurons per layer as ``neurons`` has, none of them, drawn with a seed derived
    from ``seed`` and ``label`` (so each language's control is fixed and independent)."""
    digest = int.from_bytes(hashlib.sha256(f"{seed}:{label}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(digest)
    out: NeuronSet = {}
    for layer in sorted(neurons):
        own = neurons[layer]
        pool = np.setdiff1d(np.arange(n_neurons), own)
        if len(pool) < len(own):
            raise ValueError(f"layer {layer} has too few other neurons for a random control of {len(own)}")
        out[layer] = np.sort(rng.choice(pool, size=len(own), replace=False))
    return out


@contextlib.contextmanager
def deactivate(anatomy: Anatomy, neurons: NeuronSet) -> Iterator[None]:
    """Zero ``neurons`` (layer -> indices) in every forward pass run inside the block.

    Like the steering hooks: nothing is registered for an empty set, hooks are registered inside
    ``try`` and removed in ``finally`` (also when the forward pass raises), and the model's own
    tensors are never modified.
    """
    handles = []

    def hook(index: torch.Tensor) -> Callable[..., torch.Tensor]:
        def zero(_m: torch.nn.Module, _a: tuple, out: torch.Tensor) -> torch.Tensor:
            out = out.clone()
            out[..., index.to(out.device)] = 0
            return out

        return zero

    try:
        for layer, idx in sorted(neurons.items()):
            if len(idx):
                module = anatomy.neurons(layer)
                handles.append(module.register_forward_hook(hook(torch.as_tensor(idx, dtype=torch.long))))
        yield
    finally:
        for h in handles:
            h.remove()


# -- the stage ---------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class NeuronStage(Stage):
    """Evaluation records of the held-out items under each ablation (the baseline included).

    Settings are (ablated language, kind): ("", "none"), (m, "lape"), (m, "random"). The activation
    statistics are an artefact (``neuron_stats.safetensors``, reused only with their fingerprint);
    the LAPE table is rewritten from them on every run.
    """

    lm: LoadedModel
    template: Template
    plan: LabelPlan
    opts: EvalOptions
    languages: list[str]
    ablate: list[str]
    find_items: list[str]
    top_rate: float
    filter_rate: float
    activation_bar: float
    n_boot: int
    seed: int
    controls: int = 1
    _stats: NeuronStats | None = field(default=None, init=False, repr=False)

    @property
    def stats_path(self) -> Path:
        return self.store.root / STATS_FILE

    @cached_property
    def find_digest(self) -> str:
        """Content digest of the text the neurons are found from, in every language."""
        return "+".join(items_digest(self.ds, lang, self.find_items) for lang in self.languages)

    def digest(self, language: str, item_id: str) -> str:
        """An ablated row depends on its item and on the neurons, i.e. the text they were found from."""
        return f"{self.ds.item(language, item_id).digest}+{self.find_digest}"

    def stats_fingerprint(self) -> dict[str, Any]:
        return data_fingerprint(self.lm, self.ds, self.template) | {
            "languages": self.languages,
            "text_items": self.find_items,
            "text_digest": self.find_digest,
        }

    def _saved(self) -> NeuronStats | None:
        if not self.stats_path.is_file():
            return None
        stats = NeuronStats.load(self.stats_path)
        expected = self.stats_fingerprint()
        if not same_fingerprint(stats.fingerprint or {}, expected):
            raise settings_mismatch(
                f"{self.stats_path} holds neuron statistics", stats.fingerprint or {}, expected
            )
        return stats

    def check(self) -> Done:
        done = super().check()
        for table in (LAPE_TABLE, SETS_TABLE):
            for path, meta in self.store.index(table):
                if not same_fingerprint(self.store.fingerprint_of(path, meta), self.fingerprint):
                    raise self.store.mismatch(table, meta["fingerprint"], self.fingerprint)  # type: ignore[index]
        self._saved()
        return done

    def stats(self) -> NeuronStats:
        """The activation statistics: the saved ones (checked), else counted now and saved."""
        if self._stats is None:
            stats = self._saved()
            if stats is None:
                texts = {
                    lang: [item_text(self.ds.item(lang, i)) for i in self.find_items]
                    for lang in self.languages
                }
                stats = count_active(self.lm, texts, self.opts.batch_size)
                stats.fingerprint = self.stats_fingerprint()
                stats.save(self.stats_path)
            self._stats = stats
        return self._stats

    @cached_property
    def selection(self) -> tuple[dict[str, NeuronSet], dict[str, Any]]:
        return select_neurons(
            self.stats().probs, self.languages, self.top_rate, self.filter_rate, self.activation_bar
        )

    def neuron_set(self, language: str, kind: str) -> NeuronSet:
        """The neurons a setting deactivates."""
        if kind == "none":
            return {}
        own = self.selection[0][language]
        if kind == "lape":
            return own
        return random_control(own, self.lm.anatomy.n_neurons, self.seed, control_label(language, kind))

    def prepare(self) -> None:
        """Count (or reuse) the activation statistics, select, and write the LAPE table and the neuron
        sets the settings deactivate (tables already there passed :meth:`check`, so they were written
        from these very statistics; sets of new settings are added)."""
        if not self.store.has_rows(LAPE_TABLE):
            meta = {"stage": LAPE_TABLE, "fingerprint": self.fingerprint}
            self.store.write_unit(LAPE_TABLE, "lape.parquet", self.lape_table(), meta)
        held = {key for _, meta in self.store.index(SETS_TABLE) for key in (meta or {}).get("settings", [])}
        for setting in self.selected_settings():
            if setting == BASELINE or setting_key(setting) in held:
                continue
            meta = {"stage": SETS_TABLE, "fingerprint": self.fingerprint, "settings": [setting_key(setting)]}
            name = unit_name(self.ds.name, setting[0], 0, [], [setting[1]])
            self.store.write_unit(SETS_TABLE, name, self.set_rows(*setting), meta)

    def set_rows(self, language: str, kind: str) -> pd.DataFrame:
        """One row per (layer, neuron) a setting deactivates."""
        rows = [
            {"ablated": language, "neurons": kind, "layer": layer, "neuron": int(j)}
            for layer, idx in sorted(self.neuron_set(language, kind).items())
            for j in idx
        ]
        return pd.DataFrame(rows, columns=["ablated", "neurons", "layer", "neuron"])

    def lape_table(self) -> pd.DataFrame:
        """One row per (layer, neuron, language) for every neuron kept by LAPE (specific or not)."""
        stats = self.stats()
        probs = stats.probs
        entropy = lape_entropy(probs)
        selected, _ = self.selection
        specific = {
            (lang, layer, int(j)) for lang, per in selected.items() for layer, idx in per.items() for j in idx
        }
        kept = sorted({(layer, j) for _, layer, j in specific})
        rows = [
            {
                "layer": layer,
                "neuron": j,
                "language": lang,
                "activation_probability": float(probs[layer - 1, j, k]),
                "entropy": float(entropy[layer - 1, j]),
                "specific": (lang, layer, j) in specific,
            }
            for layer, j in kept
            for k, lang in enumerate(stats.languages)
        ]
        columns = ["layer", "neuron", "language", "activation_probability", "entropy", "specific"]
        return pd.DataFrame(rows, columns=columns)

    def rows(self, unit: Unit) -> pd.DataFrame:
        items = [self.ds.item(unit.language, i) for i in unit.item_ids]
        frames = []
        for ablated, kind in unit.settings:
            neurons = self.neuron_set(ablated, kind)
            with deactivate(self.lm.anatomy, neurons):
                df = item_rows(
                    self.lm, items, Prompter(self.template, self.lm.tokenizer), self.plan, self.opts
                )
            frames.append(df.assign(ablated=ablated, neurons=kind, n_ablated=_count(neurons)))
        return pd.concat(frames, ignore_index=True)

    def summarize(self) -> dict[str, Any]:
        rows = self.read()
        selected, info = self.selection
        pivot = self.ds.pivot if self.ds.pivot in self.languages else None
        base = rows[rows["neurons"] == "none"]
        cloze = "cloze_correct" in rows
        effects: dict[str, Any] = {}
        controls = control_kinds(self.controls)
        for m in self.ablate:
            effects[m] = {}
            for kind in ["lape", *controls]:
                treated = rows[(rows["ablated"] == m) & (rows["neurons"] == kind)]
                if treated.empty:
                    continue
                entry = {
                    "n_neurons": int(treated["n_ablated"].iloc[0]),
                    "neurons": {str(x): ids.tolist() for x, ids in sorted(self.neuron_set(m, kind).items())},
                    "letters": metrics.paired_effects(
                        base, treated, pivot, n_boot=self.n_boot, seed=self.seed, scores_col="label_logprobs"
                    ),
                }
                if cloze:
                    entry["cloze"] = metrics.paired_effects(
                        base, treated, pivot, n_boot=self.n_boot, seed=self.seed,
                        correct_col="cloze_correct", ranks_col="cloze_ranks", scores_col="cloze_norm",
                    )  # fmt: skip
                effects[m][kind] = entry
            drawn = [effects[m][k] for k in controls if k in effects[m]]
            if "lape" in effects[m] and drawn:
                effects[m]["lape"]["controls"] = _against_controls(effects[m]["lape"], drawn)
        summary = {
            "languages": self.languages,
            "ablated_languages": self.ablate,
            "pivot": pivot,
            "n_text_items": len(self.find_items),
            "n_eval_items": int(base["item_id"].nunique()),
            "n_layers": self.lm.anatomy.n_layers,
            "text_tokens": dict(zip(self.stats().languages, self.stats().tokens.tolist())),
            "selection": info,
            "per_layer": {
                lang: {str(layer): len(idx) for layer, idx in sorted(per.items())}
                for lang, per in selected.items()
            },
            "n_specific": {lang: _count(per) for lang, per in selected.items()},
            "overlap": _overlap(selected, self.languages),
            "effects": effects,
            "controls": self.controls,
            # the gold score of cloze effects is the gold answer's cloze score under this normalisation
            "cloze_norm": self.opts.cloze_norm if cloze else None,
            "n_boot": self.n_boot,
            "seed": self.seed,
            # drawn by the report part (crosslens.stages.neurons.report)
            "figures": {k: str(self.store.root / f) for k, f in FIGURES.items() if k == "neurons" or effects},
        }
        self.store.write_json(SUMMARY, metrics.to_jsonable(summary))
        return summary


def _against_controls(lape: Mapping[str, Any], drawn: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per form (letters, cloze), language and measure, the LAPE set's change against the changes the
    K random sets cause (:func:`crosslens.scoring.metrics.against_controls`: mean, sd, empirical p)."""
    out: dict[str, Any] = {"n": len(drawn)}
    for form in ("letters", "cloze"):
        if form not in lape:
            continue
        out[form] = {
            lang: {
                key: metrics.against_controls(
                    effect[key]["delta"], [c[form][lang][key]["delta"] for c in drawn if key in c[form][lang]]
                )
                for key in GOLD_METRICS
                if key in effect
            }
            for lang, effect in lape[form].items()
        }
    return out


def _overlap(selected: Mapping[str, NeuronSet], languages: Sequence[str]) -> dict[str, dict[str, int]]:
    """Neurons specific to both a and b, for every pair (the diagonal: each language's own count)."""
    sets = {
        lang: {(layer, int(j)) for layer, idx in selected[lang].items() for j in idx} for lang in languages
    }
    return {a: {b: len(sets[a] & sets[b]) for b in languages} for a in languages}


def neuron_stage(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    ablate: Sequence[str] | None = DEFAULTS.ablate,
    n_text_items: int = DEFAULTS.n_text_items,
    top_rate: float = DEFAULTS.top_rate,
    filter_rate: float = DEFAULTS.filter_rate,
    activation_bar: float = DEFAULTS.activation_bar,
    n_boot: int = DEFAULTS.n_boot,
    seed: int = 0,
    opts: EvalOptions = EvalOptions(),
    controls: int = DEFAULTS.controls,
) -> NeuronStage:
    """Language-specific neurons of ``lm`` on ``ds`` and their ablation, into ``out``, planned but
    not run (the statistics are counted when it begins)."""
    check_seed(seed)
    from crosslens.store import Store

    section = NeuronsConfig(
        ablate=ablate,
        n_text_items=n_text_items,
        top_rate=top_rate,
        filter_rate=filter_rate,
        activation_bar=activation_bar,
        n_boot=n_boot,
        controls=controls,
    )  # fmt: skip  (validates the values like a config or the CLI would)
    languages = list(ds.languages)
    precheck_data(section, ds)
    ablate = list(dict.fromkeys(ablate if ablate is not None else languages))
    lm.anatomy.neurons(1)  # refuses a family without a known MLP activation module, before any work
    template = get_template(opts.template or ds.template)
    plan = label_plan(lm.tokenizer, max(5, ds.max_choices()))
    find = held_out_sample(ds.item_ids(), n_text_items, seed, "n_text_items")
    fp = (
        data_fingerprint(lm, ds, template)
        | scoring_fingerprint(plan, opts, lm.tokenizer)
        | {
            "languages": languages,
            "text_items": find,
            "top_rate": top_rate,
            "filter_rate": filter_rate,
            "activation_bar": activation_bar,
            "seed": seed,
        }
    )
    meta = {
        "model": lm.describe(),
        "languages": languages,
        "ablated_languages": ablate,
        "text_items": find,
        "text": "item passage + question + choices, no template; held out of the evaluation",
    }
    settings = [BASELINE] + [(m, kind) for m in ablate for kind in ["lape", *control_kinds(controls)]]
    return NeuronStage(
        ds=ds,
        table=TABLE,
        store=Store(out),
        fingerprint=fp,
        meta=meta,
        units=plan_units(ds, languages, opts.chunk_size, exclude=find, settings=settings),
        setting_columns=("ablated", "neurons"),
        lm=lm,
        template=template,
        plan=plan,
        opts=opts,
        languages=languages,
        ablate=ablate,
        find_items=find,
        top_rate=top_rate,
        filter_rate=filter_rate,
        activation_bar=activation_bar,
        n_boot=n_boot,
        seed=seed,
        controls=controls,
    )


def build(ctx: JobContext) -> NeuronStage:
    """Neurons and their ablation for one model x dataset (the registry's builder)."""
    n = ctx.section
    assert isinstance(n, NeuronsConfig)
    return neuron_stage(
        ctx.lm, ctx.data, ctx.out, n.ablate, n.n_text_items, n.top_rate, n.filter_rate, n.activation_bar,
        n.n_boot, ctx.seed, ctx.eval_options(), n.controls,
    )  # fmt: skip


#: Find language-specific neurons on held-out items, then evaluate the rest with each language's neurons
#: (and a random control) deactivated: :func:`neuron_stage`'s arguments, and ``progress``. Writes
#: ``neuron_stats.safetensors``, the ``neurons/`` and ``ablation/`` tables and ``neurons_summary.json``.
run_neurons = runner(neuron_stage, "run_neurons")
