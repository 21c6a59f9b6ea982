"""PCA of last-token activations across languages (paper Fig. 3) and a number for their alignment.

The picture asks "do parallel questions in different languages land in the same place?". The
number answers the same without a picture: per layer, the mean cosine similarity of *parallel*
pairs (same item, two languages) minus that of *non-parallel* pairs (different items, two
languages). Near 0: languages are separate clusters or items are indistinguishable; large: the
item, not the language, decides where a state lies (a shared space).
"""

from __future__ import annotations

import random
import sys
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from crosslens import __version__
from crosslens.activations import Activations, collect_activations
from crosslens.data import ParallelDataset
from crosslens.models import LoadedModel
from crosslens.prompts import get_template
from crosslens.store import Store

__all__ = ["project", "alignment", "is_latin", "script_of", "run_pca"]


def is_latin(text: str) -> bool:
    """True when most letters of ``text`` are Latin (how the paper groups languages in Fig. 3)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return True
    latin = sum("LATIN" in unicodedata.name(c, "") for c in letters)
    return latin >= len(letters) / 2


def script_of(language: str, sample_text: str) -> str:
    """'Latin' or 'non-Latin', from a FLORES-style code suffix when present, else from the text."""
    if "_" in language and language.split("_")[-1].istitle() and len(language.split("_")[-1]) == 4:
        return "Latin" if language.endswith("_Latn") else "non-Latin"
    return "Latin" if is_latin(sample_text) else "non-Latin"


def project(acts: Activations, seed: int = 0) -> pd.DataFrame:
    """2-component PCA per layer over all languages' states; one row per (layer, language, item)."""
    frames = []
    n = len(acts.item_ids)
    for layer in acts.layers:
        xy = PCA(n_components=2, random_state=seed).fit_transform(acts.states[layer].astype(np.float64))
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "language": np.repeat(acts.languages, n),
                    "item_id": np.tile(acts.item_ids, len(acts.languages)),
                    "pc1": xy[:, 0],
                    "pc2": xy[:, 1],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def alignment(acts: Activations) -> dict[int, dict[str, Any]]:
    """Per layer: mean cosine of parallel vs non-parallel cross-language pairs, and their gap."""
    out: dict[int, dict[str, Any]] = {}
    n, k = len(acts.item_ids), len(acts.languages)
    for layer in acts.layers:
        x = acts.states[layer].astype(np.float64)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        x = x.reshape(k, n, -1)
        par, non = [], []
        for a in range(k):
            for b in range(a + 1, k):
                sim = x[a] @ x[b].T  # (n, n): diagonal = parallel pairs
                par.append(np.trace(sim) / n)
                if n > 1:
                    non.append((sim.sum() - np.trace(sim)) / (n * n - n))
        p = float(np.mean(par)) if par else float("nan")
        q = float(np.mean(non)) if non else float("nan")
        out[int(layer)] = {"parallel_cosine": p, "nonparallel_cosine": q, "gap": p - q}
    return out


def run_pca(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    layers: Sequence[int],
    n_items: int = 50,
    template: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Collect activations of ``n_items`` seeded parallel items, project, measure alignment, draw.

    Writes ``activations.safetensors``, ``pca.parquet``, ``pca_summary.json`` and ``fig3_pca.png``.
    The activations are reused when the file already holds the same items and layers.
    """
    from crosslens.figures import pca_figure

    store = Store(out)
    store.begin(
        "pca",
        {
            "model": lm.spec,
            "revision": lm.revision,
            "dataset": ds.name,
            "n_items": n_items,
            "seed": seed,
            "layers": list(layers),
        },
        {"languages": ds.languages, "command": " ".join(sys.argv), "crosslens_version": __version__},
    )
    ids = ds.item_ids()
    chosen = sorted(random.Random(seed).sample(ids, n_items)) if n_items < len(ids) else ids
    layers = lm.anatomy.check_layers(layers)
    path = store.root / "activations.safetensors"
    acts = Activations.load(path) if path.is_file() else None
    if acts is None or acts.item_ids != chosen or acts.layers != layers or acts.languages != ds.languages:
        acts = collect_activations(
            lm, ds, ds.languages, layers, chosen, get_template(template or ds.template), batch_size
        )
        acts.save(path, {"model": lm.spec, "revision": lm.revision, "dataset": ds.name})
    proj = project(acts, seed)
    proj["script"] = proj["language"].map(
        {lang: script_of(lang, ds.item(lang, chosen[0]).question) for lang in ds.languages}
    )
    store.root.mkdir(parents=True, exist_ok=True)
    proj.to_parquet(store.root / "pca.parquet", index=False)
    figure = pca_figure(proj, store.root / "fig3_pca.png", title=f"{lm.spec} — {ds.name}")
    summary = {
        "layers": layers,
        "languages": ds.languages,
        "n_items": len(chosen),
        "alignment": alignment(acts),
        "figure": str(figure),
    }
    store.write_json("pca_summary.json", summary)
    return summary
