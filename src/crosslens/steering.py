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
from safetensors.torch import load_file, save

from crosslens import __version__, metrics
from crosslens.activations import collect_activations
from crosslens.anatomy import Anatomy, _block_output
from crosslens.data import ParallelDataset
from crosslens.evaluate import EvalOptions, cloze_fields, data_fingerprint, label_fields, scoring_fingerprint
from crosslens.models import LoadedModel
from crosslens.passes import continuation_pass, extend_pass, length_batches, prompt_pass
from crosslens.prompts import Template, get_template, render
from crosslens.scoring import LabelPlan, encode_continuation, label_plan, require_finite, score_prompts
from crosslens.stages import Done, Stage, Unit, plan_units, run_stage
from crosslens.store import RunMismatchError, Store, atomic_write_bytes, no_fingerprint, settings_mismatch

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
        meta = {"fingerprint": json.dumps(self.fingerprint), "digests": json.dumps(self.digests)}
        atomic_write_bytes(Path(path), save(tensors, metadata=meta))

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
    anatomy: Anatomy, layer: int, delta: torch.Tensor, index: torch.Tensor | None
) -> Iterator[None]:
    """Add ``delta[b]`` to the output of block ``layer`` at position ``index[b]`` of each row b, or,
    with ``index=None``, ``delta`` (one vector) at every position of every forward pass run inside
    the block (``--positions all``: what lm-evaluation-harness's steered model and repeng do).

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
        d = delta.to(device=h.device, dtype=h.dtype)
        if index is None:
            h = h + d
        else:
            rows = torch.arange(h.shape[0], device=h.device)
            h = h.clone()
            h[rows, index.reshape(-1).to(h.device)] += d
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


#: Per prompt: the label log-probs, and (with continuations) each choice's token log-probs.
Scored = tuple[np.ndarray, list[np.ndarray] | None]


def steer_grid(
    lm: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    label_ids: Sequence[Sequence[int]],
    deltas: Sequence[tuple[int, torch.Tensor]],
    continuations: Sequence[Sequence[Sequence[int]]] | None = None,
    batch_size: int = 8,
    max_rows: int = 256,
) -> list[list[Scored]]:
    """Scores of every prompt under every setting ``(layer, delta)`` (delta = gamma * v, added at
    the last prompt token), the cached way: ``result[setting][prompt]``.

    Per batch: one pass over the prompts minus their last token (cache kept); then, for a group of
    settings at once, the last prompt token of every (setting, prompt) as one-token rows, each
    carrying its own delta at its own layer — its state predicts the labels and every choice's
    first token; then, from that extended cache (the steered token's keys and values included),
    the answer choices' further tokens, unsteered, as in a full forward with the hook.
    """
    final = lm.anatomy.n_layers
    result: list[list[Scored]] = [[(np.empty(0), None)] * len(prompt_ids) for _ in deltas]
    for batch in length_batches([len(p) for p in prompt_ids], batch_size):
        if any(len(prompt_ids[i]) < 2 for i in batch):
            raise ValueError("steering needs prompts of at least two tokens")
        pp = prompt_pass(lm, [prompt_ids[i][:-1] for i in batch], [final], "left", use_cache=True)
        choices = [[list(c) for c in continuations[i]] if continuations is not None else [] for i in batch]
        group = max(1, max_rows // len(batch))
        for start in range(0, len(deltas), group):
            chunk = list(deltas[start : start + group])
            owner = [b for _ in chunk for b in range(len(batch))]
            with contextlib.ExitStack() as stack:
                for layer in sorted({s_layer for s_layer, _ in chunk}):
                    delta = torch.stack(
                        [
                            d if s_layer == layer else torch.zeros_like(d)
                            for s_layer, d in chunk
                            for _ in batch
                        ]
                    )
                    stack.enter_context(
                        add_at_positions(lm.anatomy, layer, delta, torch.zeros(len(owner), dtype=torch.long))
                    )
                last, steered = extend_pass(
                    lm, pp, owner, [[prompt_ids[i][-1]] for _ in chunk for i in batch], [final]
                )
            # The choices' further tokens follow the steered last token (not steered themselves).
            rest = [(r, c) for r, b in enumerate(owner) for c in choices[b] if len(c) > 1]
            tails = continuation_pass(lm, steered, [r for r, _ in rest], [c[:-1] for _, c in rest], [final])
            _read_grid(lm, result, start, chunk, batch, choices, label_ids, last[final], rest, tails[final])
    return result


def _read_grid(
    lm: LoadedModel,
    result: list[list[Scored]],
    start: int,
    chunk: list[tuple[int, torch.Tensor]],
    batch: list[int],
    choices: list[list[list[int]]],
    label_ids: Sequence[Sequence[int]],
    last: list[torch.Tensor],
    rest: list[tuple[int, list[int]]],
    tails: list[torch.Tensor],
) -> None:
    """One projection for every read position of a group (a one-row projection reads the whole
    unembedding for a single state and runs far below the machine's matmul peak): each steered
    last token (its labels and every choice's first token), then the choices' further tokens."""
    final = lm.anatomy.n_layers
    owner = [b for _ in chunk for b in range(len(batch))]
    firsts = [list(label_ids[batch[b]]) + [c[0] for c in choices[b]] for b in owner]
    width = max(len(f) for f in firsts)
    further = [t for _, c in rest for t in c[1:]]
    targets = torch.zeros((len(firsts) + len(further), width), dtype=torch.long)
    for r, f in enumerate(firsts):
        targets[r, : len(f)] = torch.tensor(f)
    if further:
        targets[len(firsts) :, 0] = torch.tensor(further)
    lp = lm.anatomy.token_logprobs(torch.cat([*(s[-1:] for s in last), *tails]), final, targets).cpu().numpy()
    tail_at = dict(
        zip(((r, id(c)) for r, c in rest), len(firsts) + np.cumsum([0] + [len(c) - 1 for _, c in rest]))
    )
    for r, b in enumerate(owner):
        n_lab = len(label_ids[batch[b]])
        texts = None
        if choices[b]:
            texts = []
            for j, c in enumerate(choices[b]):
                at = tail_at.get((r, id(c)))
                more = lp[at : at + len(c) - 1, 0] if at is not None else np.empty(0, dtype=lp.dtype)
                texts.append(np.concatenate([lp[r, n_lab + j : n_lab + j + 1], more]))
        result[start + r // len(batch)][batch[b]] = (lp[r, :n_lab], texts)


WRONG_LANGUAGE = "wrong-language"
POSITIONS = ("last", "all")
# pmi is left out: its empty-prompt reference would itself be steered (or not), a choice no paper
# makes for us; the length normalisations need no second reading.
STEER_CLOZE_NORMS = ("char", "byte", "token", "none")


def control_names(k: int, wrong: bool) -> list[str]:
    """The controls of a grid: ``random:0`` .. ``random:k-1`` and, with ``wrong``, the wrong language."""
    return [f"random:{i}" for i in range(k)] + ([WRONG_LANGUAGE] if wrong else [])


def wrong_language(languages: Sequence[str], pivot: str | None, language: str) -> str | None:
    """The language whose vector is the wrong-language control of ``language``: the next steered
    language in the run's order (cyclic); None for the pivot or when only one language is steered."""
    steered = [m for m in languages if m != pivot]
    if language not in steered or len(steered) < 2:
        return None
    return steered[(steered.index(language) + 1) % len(steered)]


def control_vector(
    v: torch.Tensor, control: str, seed: int, language: str, layer: int, other: torch.Tensor | None
) -> torch.Tensor:
    """A control with exactly the norm of ``v``: a random direction (``random:k``, drawn from a
    normal distribution with a seed derived from ``seed``, the language, the layer and k), or the
    ``other`` language's vector rescaled (``wrong-language``)."""
    norm = torch.linalg.vector_norm(v.double())
    if control == WRONG_LANGUAGE:
        if other is None:
            raise ValueError(f"no wrong-language control for {language!r}: steer at least two languages")
        direction = other.double()
    elif control.startswith("random:"):
        key = f"{seed}:{language}:{layer}:{control}".encode()
        rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
        direction = torch.from_numpy(rng.standard_normal(v.numel()))
    else:
        raise ValueError(f"unknown steering control {control!r}")
    return (direction * (norm / torch.linalg.vector_norm(direction))).to(v.dtype)


def full_scores(
    lm: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    label_ids: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[Sequence[int]]] | None,
    opts: EvalOptions,
) -> list[Scored]:
    """Scores of full forward passes (under whatever hooks the caller holds), in input order."""
    final = lm.anatomy.n_layers
    out: list[Scored] = [(np.empty(0), None)] * len(prompt_ids)
    for i, sc in score_prompts(
        lm,
        prompt_ids,
        [final],
        label_ids,
        continuations,
        opts.batch_size,
        opts.padding_side,
        opts.max_elements,
    ):
        out[i] = (sc.label_logprobs[final], sc.text_logprobs[final] if continuations is not None else None)
    return out


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
    seed: int = 0
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

    def delta(self, language: str, layer: int, gamma: float, control: str) -> torch.Tensor:
        """gamma times the vector a setting adds: v(m -> en), or one of its controls."""
        sv = self.vectors()
        v = sv.get(language, layer)
        if control:
            other = wrong_language(self.languages, self.ds.pivot, language)
            v = control_vector(
                v, control, self.seed, language, layer, sv.get(other, layer) if other else None
            )
        return gamma * v

    def rows(self, unit: Unit) -> pd.DataFrame:
        ds = self.ds
        items = [ds.item(unit.language, i) for i in unit.item_ids]
        texts = [render(it, self.template) for it in items]
        pids = [self.lm.tokenizer(t).input_ids for t in texts]
        lids = [self.plan.for_n(len(it.choices)) for it in items]
        conts = None
        if self.opts.cloze:
            conts = [
                [encode_continuation(self.lm.tokenizer, t, p, c)[0] for c in it.choices]
                for it, t, p in zip(items, texts, pids)
            ]
        steered = unit.language != ds.pivot
        deltas = {
            s: self.delta(unit.language, s[0], s[1], s[3])
            if steered
            else torch.zeros(self.lm.anatomy.d_model)
            for s in unit.settings
        }
        zero = [s for s in unit.settings if not torch.any(deltas[s] != 0)]
        last = [s for s in unit.settings if s not in zero and s[2] == "last"]
        scored: dict[tuple, list[Scored]] = {}
        if zero:  # every unsteered setting (gamma = 0, the pivot) has the same scores: computed once
            (unsteered,) = steer_grid(
                self.lm, pids, lids, [(1, deltas[zero[0]])], conts, self.opts.batch_size
            )
            scored |= {s: unsteered for s in zero}
        grid = steer_grid(self.lm, pids, lids, [(s[0], deltas[s]) for s in last], conts, self.opts.batch_size)
        scored |= dict(zip(last, grid))
        for s in unit.settings:
            if s not in scored:  # positions "all": a full forward with gamma * v at every position
                with add_at_positions(self.lm.anatomy, s[0], deltas[s], None):
                    scored[s] = full_scores(self.lm, pids, lids, conts, self.opts)
        other = wrong_language(self.languages, ds.pivot, unit.language) or ""
        rows = []
        for s in unit.settings:
            layer, g, positions, control = s
            for it, (lp, texts_lp) in zip(items, scored[s]):
                where = (
                    f"item {it.item_id!r} ({it.language}), layer {layer}, gamma {g:+g}, {control or 'vector'}"
                )
                require_finite(lp, where)
                row = {
                    "dataset": ds.name,
                    "language": it.language,
                    "item_id": it.item_id,
                    "layer": layer,
                    "gamma": g,
                    "positions": positions,
                    "control": control,
                    "control_language": other if control == WRONG_LANGUAGE else "",
                    "steered": steered,
                    "gold": it.gold,
                    **label_fields(lp, it.gold),
                }
                if texts_lp is not None:
                    for x in texts_lp:
                        require_finite(x, where)
                    row |= cloze_fields(texts_lp, it.choices, it.gold, self.opts.cloze_norm)
                rows.append(row)
        return pd.DataFrame(rows)

    def summarize(self) -> dict[str, Any]:
        return summarize_steering(self.store, self.ds.pivot, self.read(), seed=self.seed)


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
    controls: int = 0,
    positions: Sequence[str] = ("last",),
) -> SteerStage:
    """Steering of ``lm`` on ``ds`` into ``out``, planned but not run (vectors are built in ``begin``).

    ``controls``: K random directions with the norm of each vector, plus the wrong language's
    vector (when two or more languages are steered), through the same grid. ``positions``: where
    gamma * v is added, ``last`` (the last prompt token, the paper's) and / or ``all``.
    """
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
    if controls < 0:
        raise ValueError(f"--controls must be >= 0, got {controls}")
    positions = list(dict.fromkeys(positions))
    bad = [p for p in positions if p not in POSITIONS]
    if bad or not positions:
        raise ValueError(
            f"--positions must be {' or '.join(POSITIONS)}, got {bad[0] if bad else 'nothing'!r}"
        )
    if opts.cloze and opts.cloze_norm not in STEER_CLOZE_NORMS:
        raise ValueError(
            f"steering normalises full answers by {', '.join(STEER_CLOZE_NORMS)}, not {opts.cloze_norm!r}"
        )
    gammas = sorted({float(g) for g in gammas} | {0.0})  # gamma = 0 is the unsteered baseline
    template = get_template(opts.template or ds.template)
    plan = label_plan(lm.tokenizer, max(5, ds.max_choices()))
    vec_items = sample_vector_items(ds.item_ids(), n_vectors, seed)
    langs = [ds.pivot] + [m for m in languages if m != ds.pivot]
    fp = (
        data_fingerprint(lm, ds, template)
        | scoring_fingerprint(plan, opts)
        | {
            "vector_items": vec_items,
            "seed": seed,  # draws the random controls
            "settings": "layer, gamma, positions, control",
        }
    )
    names = control_names(controls, controls > 0 and len([m for m in langs if m != ds.pivot]) > 1)
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
        "positions": positions,
        "controls": names,
        "control_seeds": "random:k: a normal direction seeded by sha256('seed:language:layer:random:k') "
        "at the norm of v; wrong-language: the next steered language's vector at the same norm",
    }
    settings = [
        (layer, g, where, control)
        for layer in layers
        for g in gammas
        for where in positions
        for control in ([""] + (names if g != 0.0 else []))
    ]
    return SteerStage(
        ds=ds,
        table=STEER,
        store=Store(out),
        fingerprint=fp,
        meta=meta,
        units=plan_units(ds, langs, opts.chunk_size, exclude=vec_items, settings=settings),
        setting_columns=("layer", "gamma", "positions", "control"),
        lm=lm,
        languages=langs,
        layers=layers,
        vector_items=vec_items,
        template=template,
        plan=plan,
        opts=opts,
        seed=seed,
    )


def job_stage(config: ExperimentConfig, lm: LoadedModel, spec: str, job: Job, out: Path) -> SteerStage:
    """Steering of one model x dataset of an experiment (registry builder)."""
    s, ds = config.steering, job.data
    assert s is not None  # the registry builds this stage only when steering is enabled
    return steer_stage(
        lm, ds, out, ds.languages, s.layers_for(spec), s.gammas, s.n_vectors, config.seed,
        config.eval_options(job.index), s.controls, s.positions,
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
    controls: int = 0,
    positions: Sequence[str] = ("last",),
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Build vectors from ``n_vectors`` sampled items, evaluate the rest under every (layer, gamma,
    positions) and every control."""
    stage = steer_stage(lm, ds, out, languages, layers, gammas, n_vectors, seed, opts, controls, positions)
    return run_stage(stage, progress)


#: The answer forms a steering effect is measured on: (prefix of its keys, correct, ranks, scores).
FORMS = (("", "correct", "ranks", "label_logprobs"), ("cloze_", "cloze_correct", "cloze_ranks", "cloze_norm"))
METRICS = ("accuracy", "consistency_en", "tr_plus_from_en")
Setting = tuple[int, float, str]  # (layer, gamma, positions)
Form = tuple[str, str, str, str]


def _forms(df: pd.DataFrame) -> list[Form]:
    return [f for f in FORMS if f[1] in df]


def _language_metrics(grp: pd.DataFrame, pivot: str, forms: list[Form]) -> dict[str, dict]:
    """Accuracy, consistency with and tr+ from the pivot, per steered language, for every form."""
    out: dict[str, dict[str, float]] = {}
    for prefix, correct, ranks, _ in forms:
        acc = grp.groupby("language")[correct].mean()
        for m in (m for m in acc.index if m != pivot):
            out.setdefault(m, {}).update(
                {
                    f"{prefix}accuracy": float(acc[m]),
                    f"{prefix}consistency_en": metrics.consistency(grp, pivot, m, ranks_col=ranks),
                    f"{prefix}tr_plus_from_en": metrics.positive_transfer(grp, pivot, m, correct_col=correct),
                }
            )
    return out


def _add_paired_tests(df: pd.DataFrame, per: dict[Setting, dict], pivot: str, n_boot: int, seed: int) -> None:
    """Add to each steered (language, setting) its change against gamma = 0 on the same items, for
    every form: paired bootstrap CIs (accuracy, consistency with and tr+ from English, the gold
    answer's score), the exact McNemar p-value and its Holm adjustment over the whole grid of
    gamma != 0 settings (one family per form; gamma = 0 itself gets p = 1 and changes of 0)."""
    real = df[df["control"] == ""]
    for prefix, correct, ranks, scores in _forms(df):
        tests: list[dict[str, Any]] = []
        for layer, g, where in per:
            at = (real["layer"] == layer) & (real["positions"] == where)
            base, treated = real[at & (real["gamma"] == 0.0)], real[at & (real["gamma"] == g)]
            effects = metrics.paired_effects(
                base, treated, pivot, n_boot=n_boot, seed=seed,
                correct_col=correct, ranks_col=ranks, scores_col=scores,
            )  # fmt: skip
            for m, values in per[(layer, g, where)].items():
                e = effects[m]
                values[f"{prefix}paired"] = {
                    k: e[k] for k in ("accuracy", "consistency_pivot", "tr_plus_from_pivot", "gold_score")
                }
                values[f"{prefix}p_mcnemar"] = e["accuracy"]["p_mcnemar"]
                if g == 0.0:  # the baseline against itself: p = 1, every change 0; not a test of the family
                    values[f"{prefix}p_holm"] = 1.0
                else:
                    tests.append(values)
        for values, adjusted in zip(tests, metrics.holm([t[f"{prefix}p_mcnemar"] for t in tests])):
            values[f"{prefix}p_holm"] = adjusted


def _null(effect: float, null: list[float]) -> dict[str, Any]:
    """The effect against the controls' effects: their mean and spread, and the two-sided empirical
    p-value (1 + #{|null| >= |effect|}) / (K + 1)."""
    v = np.array([x for x in null if not np.isnan(x)], dtype=float)
    out: dict[str, Any] = {
        "effect": effect,
        "null_mean": math.nan,
        "null_std": math.nan,
        "p_empirical": math.nan,
    }
    if v.size and not np.isnan(effect):
        out["null_mean"] = float(v.mean())
        out["null_std"] = float(v.std(ddof=1)) if v.size > 1 else math.nan
        out["p_empirical"] = (1 + int(np.sum(np.abs(v) >= abs(effect) - 1e-12))) / (v.size + 1)
    return out | {"n": int(v.size)}


def _add_controls(
    df: pd.DataFrame, per: dict[Setting, dict], pivot: str, keys: list[str]
) -> dict[Setting, dict]:
    """Compare every steering effect with its controls' effects (random directions of the same norm)
    and report the wrong language's; per language, and for the mean over languages per setting."""
    out: dict[Setting, dict] = {}
    forms = _forms(df)
    for (layer, g, where), langs in per.items():
        at = df[(df["layer"] == layer) & (df["gamma"] == g) & (df["positions"] == where)]
        names = sorted(set(at["control"]) - {""})
        if g == 0.0 or not names:
            continue
        base = per[(layer, 0.0, where)]
        ctl = {c: _language_metrics(at[at["control"] == c], pivot, forms) for c in names}
        randoms = [c for c in names if c.startswith("random:")]
        setting: dict[str, Any] = {"n_controls": len(randoms), "wrong_language": {}}
        for key in keys:
            deltas = {m: langs[m][key] - base[m][key] for m in langs}
            null = {c: {m: ctl[c][m][key] - base[m][key] for m in langs} for c in names}
            for m in langs:
                langs[m].setdefault("controls", {})[key] = _null(deltas[m], [null[c][m] for c in randoms])
                if WRONG_LANGUAGE in null:
                    langs[m].setdefault("wrong_language", {})[key] = null[WRONG_LANGUAGE][m]
            mean = float(np.nanmean(list(deltas.values())))
            setting[key] = _null(mean, [float(np.nanmean(list(null[c].values()))) for c in randoms])
            if WRONG_LANGUAGE in null:
                setting["wrong_language"][key] = float(np.nanmean(list(null[WRONG_LANGUAGE].values())))
        out[(layer, g, where)] = setting
    return out


def summarize_steering(
    store: Store, pivot: str, rows: pd.DataFrame | None = None, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Per (layer, gamma, positions): accuracy, consistency with English and tr+(en, m) per language
    for letters and (when scored) cloze, their change against gamma = 0, and means with 95 % CIs
    across the steered languages (Figs. 4, 5, 7-11). Per steered language, also the paired tests
    of :func:`_add_paired_tests` (``n_boot`` replicates; ``p_mcnemar``, ``p_holm``); per setting,
    how many languages survive Holm, and the comparison with the controls (:func:`_add_controls`).

    ``rows``: the steering rows to summarise (default: every row of the folder's table).
    """
    df = store.read(STEER) if rows is None else rows
    if df.empty:
        raise ValueError(f"{store.root} has no steering records")
    forms = _forms(df)
    keys = [f"{prefix}{k}" for prefix, *_ in forms for k in METRICS]
    real = df[df["control"] == ""]
    per: dict[Setting, dict] = {
        (int(layer), float(g), str(where)): _language_metrics(grp, pivot, forms)
        for (layer, g, where), grp in real.groupby(["layer", "gamma", "positions"])
    }
    _add_paired_tests(df, per, pivot, n_boot, seed)
    controls = _add_controls(df, per, pivot, keys)
    settings = []
    for (layer, g, where), langs in sorted(per.items()):
        base = per[(layer, 0.0, where)]
        entry: dict[str, Any] = {"layer": layer, "gamma": g, "positions": where, "per_language": langs}
        for prefix, *_ in forms:
            entry[f"{prefix}n_significant_holm"] = sum(
                1 for v in langs.values() if v.get(f"{prefix}p_holm", 1.0) < 0.05
            )
        for key in keys:
            vals = np.array([langs[m][key] for m in langs], dtype=float)
            delta = np.array([langs[m][key] - base[m][key] for m in langs], dtype=float)
            entry[key] = dict(zip(("mean", "ci_low", "ci_high"), metrics.ci95_across(vals)))
            entry[f"delta_{key}"] = dict(zip(("mean", "ci_low", "ci_high"), metrics.ci95_across(delta)))
        if (layer, g, where) in controls:
            entry["controls"] = controls[(layer, g, where)]
        settings.append(entry)
    first = min(per)
    summary = {
        "pivot": pivot,
        "n_boot": n_boot,
        "forms": [prefix.rstrip("_") or "letters" for prefix, *_ in forms],
        "multiple_testing": "Holm over every (language, layer, gamma != 0, positions) of the grid, per form; "
        "exact McNemar",
        "settings": settings,
        "unsteered_accuracy": {m: v["accuracy"] for m, v in per[(first[0], 0.0, first[2])].items()},
    }
    store.write_json("steer_summary.json", metrics.to_jsonable(summary))
    return summary
