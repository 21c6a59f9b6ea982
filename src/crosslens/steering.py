"""Cross-lingual activation steering (paper §2.3, Eq. 8, §4.3).

v^l_{m->en} = mean over N parallel items of h_l(q_en) - h_l(q_m) at the last prompt token. At
inference gamma * v is added to the output of block l at the last prompt token only (gamma > 0
toward English, < 0 away). The N items the vectors come from are held out of evaluation.

Because only the last position changes, a prompt minus its last token is encoded once, its KV
cache kept, and every (layer, gamma) setting is a one-token forward from that cache: a grid of G
settings costs about one prompt pass plus G one-token passes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from crosslens import __version__, metrics
from crosslens.activations import collect_activations
from crosslens.anatomy import Anatomy, _block_output
from crosslens.data import ParallelDataset
from crosslens.evaluate import EvalOptions, data_fingerprint, label_fields
from crosslens.models import LoadedModel
from crosslens.passes import continuation_pass, length_batches, prompt_pass
from crosslens.prompts import Template, get_template, render
from crosslens.scoring import LabelPlan, label_plan, require_finite
from crosslens.stages import Done, Stage, Unit, plan_units, run_stage
from crosslens.store import RunMismatchError, Store, no_fingerprint, settings_mismatch

if TYPE_CHECKING:
    from crosslens.config import ExperimentConfig
    from crosslens.runner import Job

__all__ = [
    "SteeringVectors",
    "sample_vector_items",
    "build_vectors",
    "add_at_positions",
    "steer_grid",
    "SteerStage",
    "steer_stage",
    "run_steering",
    "summarize_steering",
    "STEER",
    "VECTORS_FILE",
]

STEER = "steer"


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def check_gammas(gammas: Sequence[float]) -> list[float]:
    """Multipliers that γ·v can be computed with: finite and within float32's range."""
    bad = [g for g in gammas if not math.isfinite(g) or abs(g) > FLOAT32_MAX]
    if bad:
        raise ValueError(f"--gammas: {bad[0]!r} is not a usable multiplier (finite, |γ| < {FLOAT32_MAX:.3g})")
    return [float(g) for g in gammas]


def sample_vector_items(item_ids: Sequence[str], n: int, seed: int) -> list[str]:
    """The seeded random sample of items steering vectors are built from (held out afterwards)."""
    if n >= len(item_ids):
        raise ValueError(
            f"--n-vectors {n} leaves no items to evaluate (the dataset has {len(item_ids)} aligned items)"
        )
    return sorted(random.Random(seed).sample(list(item_ids), n))


def items_digest(ds: ParallelDataset, language: str, item_ids: Sequence[str]) -> str:
    """One content digest of ``item_ids`` in ``language`` (what a vector's mean is taken over)."""
    text = "\n".join(ds.item(language, i).digest for i in item_ids)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class SteeringVectors:
    """v[language][layer] (float32, d_model) with the provenance needed to reuse them safely.

    ``fingerprint`` names the model, data source, prompt template and vector items; ``digests``
    maps each language to the content digest of its vector items (v_m reads language m and the
    pivot). Both are stored inside the safetensors file.
    """

    vectors: dict[str, dict[int, torch.Tensor]]
    fingerprint: dict[str, Any]
    digests: dict[str, str]

    def get(self, language: str, layer: int) -> torch.Tensor:
        return self.vectors[language][layer]

    def has(self, language: str, layer: int) -> bool:
        return layer in self.vectors.get(language, {})

    def save(self, path: str | Path) -> None:
        tensors = {
            f"{lang}/layer_{layer}": v.contiguous()
            for lang, per in self.vectors.items()
            for layer, v in per.items()
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        meta = {"fingerprint": json.dumps(self.fingerprint), "digests": json.dumps(self.digests)}
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> SteeringVectors:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        if "fingerprint" not in meta or "digests" not in meta:
            raise no_fingerprint(Path(path))
        vectors: dict[str, dict[int, torch.Tensor]] = {}
        for name, v in load_file(str(path)).items():
            lang, layer = name.rsplit("/layer_", 1)
            vectors.setdefault(lang, {})[int(layer)] = v
        return cls(vectors, json.loads(meta["fingerprint"]), json.loads(meta["digests"]))

    def check(self, path: Path, fingerprint: dict[str, Any], digests: dict[str, str]) -> None:
        """Refuse vectors made for another model, prompt, data or item sample (one line)."""
        if self.fingerprint != fingerprint:
            raise settings_mismatch(f"{path} holds steering vectors", self.fingerprint, fingerprint)
        changed = sorted(m for m in self.digests if m in digests and self.digests[m] != digests[m])
        if changed:
            raise RunMismatchError(
                f"{path} holds steering vectors built from different data for {', '.join(changed)} "
                "(the vector items changed); use another --out folder or delete it"
            )


def build_vectors(
    lm: LoadedModel,
    ds: ParallelDataset,
    languages: Sequence[str],
    layers: Sequence[int],
    item_ids: Sequence[str],
    template_name: str | None = None,
    batch_size: int = 8,
) -> SteeringVectors:
    """Eq. 8 for every language m in ``languages`` (the pivot gets the zero vector) and layer."""
    if ds.pivot is None:
        raise ValueError(f"dataset '{ds.name}' has no English pivot to steer toward")
    template = get_template(template_name or ds.template)
    langs = [ds.pivot] + [m for m in languages if m != ds.pivot]
    acts = collect_activations(lm, ds, langs, layers, item_ids, template, batch_size)
    vectors = {
        m: {
            layer: torch.from_numpy((acts.of(layer, ds.pivot) - acts.of(layer, m)).mean(0))
            for layer in acts.layers
        }
        for m in langs
    }
    return SteeringVectors(
        vectors,
        vectors_fingerprint(lm, ds, template, item_ids),
        {m: items_digest(ds, m, item_ids) for m in langs},
    )


def vectors_fingerprint(
    lm: LoadedModel, ds: ParallelDataset, template: Template, item_ids: Sequence[str]
) -> dict[str, Any]:
    return data_fingerprint(lm, ds, template) | {"pivot": ds.pivot, "vector_items": list(item_ids)}


@contextlib.contextmanager
def add_at_positions(
    anatomy: Anatomy, layer: int, delta: torch.Tensor, index: torch.Tensor
) -> Iterator[None]:
    """Add ``delta[b]`` to the output of block ``layer`` at position ``index[b]`` of each row b.

    Every other position is untouched. An all-zero ``delta`` registers no hook at all, so gamma = 0
    reproduces unsteered results bit for bit. The hook is registered inside ``try`` and removed in
    ``finally``, also when the forward pass raises.
    """
    if not 1 <= layer <= anatomy.n_layers:
        raise ValueError(f"steering layer {layer} out of range 1..{anatomy.n_layers}")
    if not torch.any(delta != 0):
        yield
        return

    def hook(_m: torch.nn.Module, _a: tuple, output: object) -> object:
        h = _block_output(output)
        rows = torch.arange(h.shape[0], device=h.device)
        h = h.clone()
        h[rows, index.reshape(-1).to(h.device)] += delta.to(device=h.device, dtype=h.dtype)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = None
    try:
        # prepend: the edit happens before any recording hook reads this block's output.
        handle = anatomy.blocks[layer - 1].register_forward_hook(hook, prepend=True)
        yield
    finally:
        if handle is not None:
            handle.remove()


def steered_full_forward(
    lm: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    layer: int,
    delta: torch.Tensor,
    label_ids: Sequence[Sequence[int]],
    padding_side: str = "left",
) -> list[np.ndarray]:
    """Reference path: a full forward per prompt batch with the hook at the last real token."""
    final = lm.anatomy.n_layers

    def steer(last_index: torch.Tensor) -> contextlib.AbstractContextManager:
        return add_at_positions(lm.anatomy, layer, delta, last_index)

    pp = prompt_pass(lm, prompt_ids, [final], padding_side, use_cache=False, steer=steer)
    return [
        lm.anatomy.token_logprobs(pp.last[final][b : b + 1], final, torch.as_tensor([label_ids[b]]))[
            0
        ].numpy()
        for b in range(len(prompt_ids))
    ]


def steer_grid(
    lm: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    label_ids: Sequence[Sequence[int]],
    vectors: dict[int, torch.Tensor],
    settings: Sequence[tuple[int, float]],
    batch_size: int = 8,
    max_rows: int = 256,
) -> dict[tuple[int, float], list[np.ndarray]]:
    """Label log-probs for every prompt under every (layer, gamma) setting, the cached way.

    Per batch: one pass over the prompts minus their last token (cache kept), then the last
    tokens of all prompts x a group of settings as a single one-token batch, each row carrying its
    own gamma * v at its own layer.
    """
    final = lm.anatomy.n_layers
    result = {s: [np.empty(0)] * len(prompt_ids) for s in settings}
    for batch in length_batches([len(p) for p in prompt_ids], batch_size):
        if any(len(prompt_ids[i]) < 2 for i in batch):
            raise ValueError("steering needs prompts of at least two tokens")
        pp = prompt_pass(lm, [prompt_ids[i][:-1] for i in batch], [final], "left", use_cache=True)
        group = max(1, max_rows // len(batch))
        for start in range(0, len(settings), group):
            chunk = list(settings[start : start + group])
            owner = [b for _ in chunk for b in range(len(batch))]
            tokens = [[prompt_ids[i][-1]] for _ in chunk for i in batch]  # x_T: its state predicts the label
            with contextlib.ExitStack() as stack:
                for layer in sorted({s[0] for s in chunk}):
                    delta = torch.stack(
                        [
                            (gamma * vectors[layer]) if s_layer == layer else torch.zeros_like(vectors[layer])
                            for s_layer, gamma in chunk
                            for _ in batch
                        ]
                    )
                    stack.enter_context(
                        add_at_positions(lm.anatomy, layer, delta, torch.zeros(len(owner), dtype=torch.long))
                    )
                states = continuation_pass(lm, pp, owner, tokens, [final])[final]
            # One projection for every row of the group: a one-row projection reads the whole
            # unembedding for a single state and runs far below the machine's matmul peak.
            width = max(len(label_ids[i]) for i in batch)
            targets = torch.tensor(
                [list(label_ids[i]) + [0] * (width - len(label_ids[i])) for _ in chunk for i in batch]
            )
            lp = lm.anatomy.token_logprobs(torch.cat(states), final, targets).cpu().numpy()
            for r, (s, b) in enumerate((s, b) for s in chunk for b in range(len(batch))):
                result[s][batch[b]] = lp[r, : len(label_ids[batch[b]])]
    return result


VECTORS_FILE = "steering_vectors.safetensors"


@dataclass(kw_only=True)
class SteerStage(Stage):
    """Steering records of one dataset: every held-out item under every (layer, gamma) setting."""

    lm: LoadedModel
    languages: list[str]  # the pivot first
    layers: list[int]
    vector_items: list[str]
    template: Template
    plan: LabelPlan
    opts: EvalOptions
    _vectors: SteeringVectors | None = field(default=None, init=False, repr=False)

    @property
    def vectors_path(self) -> Path:
        return self.store.root / VECTORS_FILE

    @cached_property
    def vector_digests(self) -> dict[str, str]:
        return {m: items_digest(self.ds, m, self.vector_items) for m in self.languages}

    def digest(self, language: str, item_id: str) -> str:
        """A steered row depends on its item and on v_m, i.e. the vector items in m and the pivot."""
        d = self.vector_digests
        return f"{self.ds.item(language, item_id).digest}+{d[language]}+{d[self.ds.pivot]}"

    def vectors_fingerprint(self) -> dict[str, Any]:
        return vectors_fingerprint(self.lm, self.ds, self.template, self.vector_items)

    def check(self) -> Done:
        done = super().check()
        if self.vectors_path.is_file():
            SteeringVectors.load(self.vectors_path).check(
                self.vectors_path, self.vectors_fingerprint(), self.vector_digests
            )
        return done

    def prepare(self) -> None:
        """Build the vectors once; on a rerun reuse the saved ones and build only missing ones."""
        self.vectors()

    def vectors(self) -> SteeringVectors:
        """The saved vectors (checked), extended by any (language, layer) this run needs and lacks."""
        if self._vectors is not None:
            return self._vectors
        path, digests = self.vectors_path, self.vector_digests
        sv = None
        if path.is_file():
            sv = SteeringVectors.load(path)
            sv.check(path, self.vectors_fingerprint(), digests)
        langs = [m for m in self.languages if sv is None or any(not sv.has(m, x) for x in self.layers)]
        if langs:
            layers = [x for x in self.layers if sv is None or any(not sv.has(m, x) for m in langs)]
            new = build_vectors(
                self.lm,
                self.ds,
                [m for m in langs if m != self.ds.pivot],
                layers,
                self.vector_items,
                self.opts.template,
                self.opts.batch_size,
            )
            if sv is None:
                sv = new
            else:  # never replace a vector already on disk: rows may already have used it
                for m, per in new.vectors.items():
                    for layer, v in per.items():
                        if not sv.has(m, layer):
                            sv.vectors.setdefault(m, {})[layer] = v
                sv.digests |= new.digests
            sv.save(path)
        self._vectors = sv
        return sv

    def rows(self, unit: Unit) -> pd.DataFrame:
        ds, settings = self.ds, list(unit.settings)
        items = [ds.item(unit.language, i) for i in unit.item_ids]
        pids = [self.lm.tokenizer(render(it, self.template)).input_ids for it in items]
        lids = [self.plan.for_n(len(it.choices)) for it in items]
        steered = unit.language != ds.pivot
        sv = self.vectors()
        vecs = {layer: sv.get(unit.language, layer) for layer in {layer for layer, _ in settings}}
        unsteered = (settings[0][0], 0.0)
        grid = steer_grid(
            self.lm, pids, lids, vecs, settings if steered else [unsteered], self.opts.batch_size
        )
        rows = []
        for layer, g in settings:
            lps = grid[(layer, g)] if steered else grid[unsteered]
            for it, lp in zip(items, lps):
                require_finite(lp, f"item {it.item_id!r} ({it.language}), layer {layer}, gamma {g:+g}")
            rows += [
                {
                    "dataset": ds.name,
                    "language": it.language,
                    "item_id": it.item_id,
                    "layer": layer,
                    "gamma": g,
                    "steered": steered,
                    "gold": it.gold,
                    **label_fields(lp, it.gold),
                }
                for it, lp in zip(items, lps)
            ]
        return pd.DataFrame(rows)

    def summarize(self) -> dict[str, Any]:
        return summarize_steering(self.store, self.ds.pivot, self.read())


def steer_stage(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    languages: Sequence[str],
    layers: Sequence[int],
    gammas: Sequence[float],
    n_vectors: int = 50,
    seed: int = 0,
    opts: EvalOptions = EvalOptions(),
) -> SteerStage:
    """Steering of ``lm`` on ``ds`` into ``out``, planned but not run (vectors are built in ``begin``)."""
    if not gammas:
        raise ValueError("--gammas is empty: give at least one multiplier")
    check_gammas(gammas)
    if n_vectors < 1:
        raise ValueError(f"--n-vectors must be >= 1 (the vectors are means over items), got {n_vectors}")
    if ds.pivot is None:
        raise ValueError(f"dataset '{ds.name}' has no English pivot to steer toward")
    layers = lm.anatomy.check_layers(layers)
    if 0 in layers:
        raise ValueError("steering layers start at 1 (layer 0 is the embeddings output)")
    gammas = sorted({float(g) for g in gammas} | {0.0})  # gamma = 0 is the unsteered baseline
    template = get_template(opts.template or ds.template)
    plan = label_plan(lm.tokenizer)
    vec_items = sample_vector_items(ds.item_ids(), n_vectors, seed)
    langs = [ds.pivot] + [m for m in languages if m != ds.pivot]
    fp = data_fingerprint(lm, ds, template) | {"label_form": plan.form, "vector_items": vec_items}
    meta = {
        "model": lm.describe(),
        "languages": langs,
        "vector_items": vec_items,
        "crosslens_version": __version__,
        "command": " ".join(sys.argv),
        "pivot_rows": "evaluated unsteered (v_en->en = 0), repeated per setting",
        "layers": layers,
        "gammas": gammas,
        "n_vectors": n_vectors,
        "seed": seed,
    }
    settings = [(layer, g) for layer in layers for g in gammas]
    return SteerStage(
        ds=ds,
        table=STEER,
        store=Store(out),
        fingerprint=fp,
        meta=meta,
        units=plan_units(ds, langs, opts.chunk_size, exclude=vec_items, settings=settings),
        setting_columns=("layer", "gamma"),
        lm=lm,
        languages=langs,
        layers=layers,
        vector_items=vec_items,
        template=template,
        plan=plan,
        opts=opts,
    )


def job_stage(config: ExperimentConfig, lm: LoadedModel, spec: str, job: Job, out: Path) -> SteerStage:
    """Steering of one model x dataset of an experiment (registry builder)."""
    s, ds = config.steering, job.data
    assert s is not None  # the registry builds this stage only when steering is enabled
    return steer_stage(
        lm, ds, out, ds.languages, s.layers_for(spec), s.gammas, s.n_vectors, config.seed,
        config.eval_options(job.index),
    )  # fmt: skip


def run_steering(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    languages: Sequence[str],
    layers: Sequence[int],
    gammas: Sequence[float],
    n_vectors: int = 50,
    seed: int = 0,
    opts: EvalOptions = EvalOptions(),
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Build vectors from ``n_vectors`` sampled items, evaluate the rest under every (layer, gamma)."""
    return run_stage(steer_stage(lm, ds, out, languages, layers, gammas, n_vectors, seed, opts), progress)


def summarize_steering(store: Store, pivot: str, rows: pd.DataFrame | None = None) -> dict[str, Any]:
    """Per (layer, gamma): accuracy, consistency with English and tr+(en, m) per language, their
    change against gamma = 0, and means with 95 % CIs across the steered languages (Figs. 4, 5, 7-11).

    ``rows``: the steering rows to summarise (default: every row of the folder's table).
    """
    df = store.read(STEER) if rows is None else rows
    if df.empty:
        raise ValueError(f"{store.root} has no steering records")
    per: dict[tuple[int, float], dict[str, dict[str, float]]] = {}
    for (layer, g), grp in df.groupby(["layer", "gamma"]):
        acc = grp.groupby("language")["correct"].mean()
        langs = [m for m in acc.index if m != pivot]
        per[(int(layer), float(g))] = {
            m: {
                "accuracy": float(acc[m]),
                "consistency_en": metrics.consistency(grp, pivot, m),
                "tr_plus_from_en": metrics.positive_transfer(grp, pivot, m),
            }
            for m in langs
        }
    settings = []
    for (layer, g), langs in sorted(per.items()):
        base = per[(layer, 0.0)]
        entry: dict[str, Any] = {"layer": layer, "gamma": g, "per_language": langs}
        for key in ("accuracy", "consistency_en", "tr_plus_from_en"):
            vals = np.array([langs[m][key] for m in langs], dtype=float)
            delta = np.array([langs[m][key] - base[m][key] for m in langs], dtype=float)
            entry[key] = dict(zip(("mean", "ci_low", "ci_high"), metrics.ci95_across(vals)))
            entry[f"delta_{key}"] = dict(zip(("mean", "ci_low", "ci_high"), metrics.ci95_across(delta)))
        settings.append(entry)
    summary = {
        "pivot": pivot,
        "settings": settings,
        "unsteered_accuracy": {
            m: v["accuracy"] for m, v in per[(min(layer for layer, _ in per), 0.0)].items()
        },
    }
    store.write_json("steer_summary.json", metrics.to_jsonable(summary))
    return summary
