"""Residual-stream activations at the last prompt token, for parallel items in many languages.

Stored as safetensors (never pickle): one tensor ``layer_<l>`` of shape (languages x items, d) per
layer, float32 on CPU, with the row order (language-major) and item ids in the metadata.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from crosslens.data import ParallelDataset
from crosslens.models import LoadedModel
from crosslens.passes import length_batches, prompt_pass
from crosslens.prompts import Template, render

__all__ = ["Activations", "last_token_states", "collect_activations"]


def last_token_states(
    lm: LoadedModel, prompt_ids: Sequence[Sequence[int]], layers: Sequence[int], batch_size: int = 8
) -> dict[int, np.ndarray]:
    """float32 (n_prompts, d) states at each prompt's last token, per layer, in input order."""
    layers = lm.anatomy.check_layers(layers)
    out = {layer: np.zeros((len(prompt_ids), lm.anatomy.d_model), dtype=np.float32) for layer in layers}
    for batch in length_batches([len(p) for p in prompt_ids], batch_size):
        pp = prompt_pass(lm, [prompt_ids[i] for i in batch], layers, use_cache=False)
        for layer in layers:
            out[layer][batch] = pp.last[layer].float().cpu().numpy()
    return out


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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)

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
) -> Activations:
    """Activations at the last prompt token for ``item_ids`` in every language of ``languages``."""
    prompts = [
        lm.tokenizer(render(ds.item(lang, i), template)).input_ids for lang in languages for i in item_ids
    ]
    states = last_token_states(lm, prompts, layers, batch_size)
    return Activations(sorted(states), list(languages), list(item_ids), states)
