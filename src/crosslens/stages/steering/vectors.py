"""Steering vectors (paper Eq. 8): v^l_{m->en} = mean over N parallel items of h_l(q_en) - h_l(q_m) at
the last prompt token, stored with the fingerprint of what they were computed from."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from crosslens.data.prompts import Template, get_template
from crosslens.data.schema import ParallelDataset
from crosslens.models.loading import LoadedModel
from crosslens.stages.activations import collect_activations
from crosslens.stages.fingerprints import data_fingerprint
from crosslens.stages.sampling import items_digest
from crosslens.store import (
    RunMismatchError,
    atomic_write_bytes,
    no_fingerprint,
    same_fingerprint,
    settings_mismatch,
)

__all__ = ["SteeringVectors", "build_vectors", "vectors_fingerprint", "VECTORS_FILE"]

VECTORS_FILE = "steering_vectors.safetensors"


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
        if not same_fingerprint(self.fingerprint, fingerprint):
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
