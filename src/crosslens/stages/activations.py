"""Residual-stream activations of prompts, for parallel items in many languages.

Two poolings: ``last`` (the state at the last prompt token, the one that predicts the answer: the
paper's choice for PCA and steering) and ``mean`` (the mean over the prompt's tokens, leaving out
a leading BOS token, whose state is the same in every language and would inflate similarity).

Stored as safetensors (never pickle): one tensor ``layer_<l>`` of shape (languages x items, d) per
layer, float32 on CPU, with the row order (language-major), item ids and the fingerprint of what
they were computed from in the metadata. :class:`ActivationFile` is that file as an artefact of a
stage folder: reused (and extended by missing layers) only when its fingerprint matches exactly.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save

from crosslens.data.prompts import Template, render
from crosslens.data.schema import ParallelDataset
from crosslens.models.loading import LoadedModel
from crosslens.models.passes import length_batches, prompt_pass
from crosslens.options import OptionError
from crosslens.stages.base import Done, Stage
from crosslens.store import atomic_write_bytes, no_fingerprint, same_fingerprint, settings_mismatch

__all__ = [
    "POOLS",
    "Activations",
    "ActivationFile",
    "SampleStage",
    "activations_file",
    "parallel_digest",
    "last_token_states",
    "prompt_states",
    "collect_activations",
]

POOLS = ("last", "mean")


def prompt_states(
    lm: LoadedModel,
    prompt_ids: Sequence[Sequence[int]],
    layers: Sequence[int],
    batch_size: int = 8,
    pool: str = "last",
) -> dict[int, np.ndarray]:
    """float32 (n_prompts, d) pooled states per layer, in input order (``pool``: last | mean)."""
    if pool not in POOLS:
        raise OptionError("pool", f"must be one of {', '.join(POOLS)}, got {pool!r}")
    layers = lm.anatomy.check_layers(layers)
    bos = lm.tokenizer.bos_token_id
    out = {layer: np.zeros((len(prompt_ids), lm.anatomy.d_model), dtype=np.float32) for layer in layers}
    for batch in length_batches([len(p) for p in prompt_ids], batch_size):
        ids = [prompt_ids[i] for i in batch]
        start = [int(len(p) > 1 and bos is not None and p[0] == bos) for p in ids]
        pp = prompt_pass(lm, ids, layers, use_cache=False, pool_from=start if pool == "mean" else None)
        states = pp.mean if pool == "mean" else pp.last
        assert states is not None
        for layer in layers:
            out[layer][batch] = states[layer].float().cpu().numpy()
    return out


def last_token_states(
    lm: LoadedModel, prompt_ids: Sequence[Sequence[int]], layers: Sequence[int], batch_size: int = 8
) -> dict[int, np.ndarray]:
    """float32 (n_prompts, d) states at each prompt's last token, per layer, in input order."""
    return prompt_states(lm, prompt_ids, layers, batch_size, "last")


@dataclass
class Activations:
    """Last-token activations of the same items in several languages."""

    layers: list[int]
    languages: list[str]
    item_ids: list[str]
    states: dict[int, np.ndarray]  # layer -> (len(languages) * len(item_ids), d), language-major
    fingerprint: dict | None = None  # what they were computed with (model, prompts, data), if known

    def of(self, layer: int, language: str) -> np.ndarray:
        k = self.languages.index(language)
        n = len(self.item_ids)
        return self.states[layer][k * n : (k + 1) * n]

    def only(self, layers: Sequence[int]) -> Activations:
        """The same activations restricted to ``layers``."""
        return Activations(list(layers), self.languages, self.item_ids, {x: self.states[x] for x in layers})

    def save(self, path: str | Path) -> None:
        """Write atomically, with the fingerprint in the file's metadata."""
        meta = {
            "layers": json.dumps(self.layers),
            "languages": json.dumps(self.languages),
            "item_ids": json.dumps(self.item_ids),
            "fingerprint": json.dumps(self.fingerprint),
        }
        tensors = {
            f"layer_{layer}": torch.from_numpy(np.ascontiguousarray(s)) for layer, s in self.states.items()
        }
        # A unique temporary file per writer: two Ray workers of a stage pair sharing this file
        # (PCA and similarity) may write it at once; the last rename wins, both hold the same data.
        atomic_write_bytes(Path(path), save(tensors, metadata=meta))

    @classmethod
    def load(cls, path: str | Path) -> Activations:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
        tensors = load_file(str(path))
        layers = json.loads(meta["layers"])
        return cls(
            layers,
            json.loads(meta["languages"]),
            json.loads(meta["item_ids"]),
            {layer: tensors[f"layer_{layer}"].numpy() for layer in layers},
            json.loads(meta.get("fingerprint", "null")),
        )


def collect_activations(
    lm: LoadedModel,
    ds: ParallelDataset,
    languages: Sequence[str],
    layers: Sequence[int],
    item_ids: Sequence[str],
    template: Template,
    batch_size: int = 8,
    pool: str = "last",
) -> Activations:
    """Pooled prompt activations for ``item_ids`` in every language of ``languages``."""
    prompts = [
        lm.tokenizer(render(ds.item(lang, i), template)).input_ids for lang in languages for i in item_ids
    ]
    states = prompt_states(lm, prompts, layers, batch_size, pool)
    return Activations(sorted(states), list(languages), list(item_ids), states)


def parallel_digest(ds: ParallelDataset, languages: Sequence[str], item_id: str) -> str:
    """The content digest of one item in every language of ``languages`` (what a joint analysis
    of parallel states depends on)."""
    return "+".join(ds.item(lang, item_id).digest for lang in languages)


def activations_file(root: Path, pool: str) -> Path:
    """Where a folder keeps its activations of one pooling (PCA and similarity share them)."""
    return root / ("activations.safetensors" if pool == "last" else f"activations_{pool}.safetensors")


@dataclass
class ActivationFile:
    """The activations of a stage folder: the same items in every language, one pooling.

    ``fingerprint`` is what they are computed from (model, prompts, data source, languages, the
    item sample and its content digests, pooling); the PCA and similarity stages build the same
    one for the same sample, so they share one file. Anything else on disk is refused, one line.
    """

    path: Path
    fingerprint: dict[str, Any]
    lm: LoadedModel
    ds: ParallelDataset
    languages: list[str]
    item_ids: list[str]
    template: Template
    pool: str
    batch_size: int
    _acts: Activations | None = field(default=None, init=False, repr=False)

    @classmethod
    def plan(
        cls,
        lm: LoadedModel,
        ds: ParallelDataset,
        root: Path,
        languages: Sequence[str],
        item_ids: Sequence[str],
        template: Template,
        pool: str = "last",
        batch_size: int = 8,
    ) -> ActivationFile:
        """The activation file of ``root`` for these items, languages and pooling (nothing is read)."""
        from crosslens.stages.fingerprints import data_fingerprint

        if pool not in POOLS:
            raise OptionError("pool", f"must be one of {', '.join(POOLS)}, got {pool!r}")
        digests = [parallel_digest(ds, languages, i) for i in item_ids]
        fp = data_fingerprint(lm, ds, template) | {
            "languages": list(languages),
            "items": list(item_ids),
            "item_digests": digests,
            "pool": pool,
        }
        return cls(
            activations_file(root, pool),
            fp,
            lm,
            ds,
            list(languages),
            list(item_ids),
            template,
            pool,
            batch_size,
        )

    def saved(self) -> Activations | None:
        """The activations on disk, refused unless made for exactly these inputs."""
        if not self.path.is_file():
            return None
        acts = Activations.load(self.path)
        if acts.fingerprint is None:
            raise no_fingerprint(self.path)
        if not same_fingerprint(acts.fingerprint, self.fingerprint):
            raise settings_mismatch(f"{self.path} holds activations", acts.fingerprint, self.fingerprint)
        return acts

    def get(self, layers: Sequence[int]) -> Activations:
        """Activations at ``layers``: the saved ones, plus any missing layer collected and saved."""
        acts = self._acts or self.saved()
        missing = [layer for layer in layers if acts is None or layer not in acts.states]
        if missing:
            new = collect_activations(
                self.lm,
                self.ds,
                self.languages,
                missing,
                self.item_ids,
                self.template,
                self.batch_size,
                self.pool,
            )
            states = {**(acts.states if acts else {}), **new.states}
            acts = Activations(sorted(states), self.languages, self.item_ids, states, self.fingerprint)
            acts.save(self.path)
        self._acts = acts
        return acts.only(list(layers))


@dataclass(kw_only=True)
class SampleStage(Stage):
    """A stage over the activations of one seeded item sample in every language (PCA, similarity).

    Its rows read each item in every language, so every language's content counts in an item's
    digest; the activation file is an artefact checked with the folder and shared by every such
    stage with the same sample, languages, prompts and pooling.
    """

    lm: LoadedModel
    template: Template
    languages: list[str]
    layers: list[int]
    chosen: list[str]
    seed: int
    batch_size: int
    pool: str = "last"

    @cached_property
    def acts(self) -> ActivationFile:
        return ActivationFile.plan(
            self.lm,
            self.ds,
            self.store.root,
            self.languages,
            self.chosen,
            self.template,
            self.pool,
            self.batch_size,
        )

    def digest(self, language: str, item_id: str) -> str:
        return parallel_digest(self.ds, self.languages, item_id)

    def check(self) -> Done:
        done = super().check()
        self.acts.saved()
        return done
