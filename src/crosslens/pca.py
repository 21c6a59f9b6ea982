"""PCA of last-token activations across languages (paper Fig. 3).

The picture asks "do parallel questions in different languages land in the same place?"; the
numbers that answer it without a picture (CKA, parallel vs non-parallel cosine, with CIs) are the
similarity stage's (:mod:`crosslens.similarity`), computed from the same activation file.
"""

from __future__ import annotations

import random
import sys
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from crosslens import __version__
from crosslens.activations import Activations, SampleStage
from crosslens.data import ParallelDataset
from crosslens.evaluate import data_fingerprint
from crosslens.models import LoadedModel
from crosslens.prompts import get_template
from crosslens.stages import Unit, run_stage
from crosslens.store import Store

if TYPE_CHECKING:
    from crosslens.config import ExperimentConfig
    from crosslens.runner import Job

__all__ = ["project", "is_latin", "script_of", "PcaStage", "pca_stage", "pca_items", "run_pca"]


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


PCA_TABLE = "pca"


@dataclass(kw_only=True)
class PcaStage(SampleStage):
    """PCA as a stage: one unit (all languages jointly) whose settings are the layers.

    The projection is joint over every language and item, so the languages and the sampled items
    are part of the fingerprint (another set is another analysis, refused); more layers extend it.
    Activations are an artefact of the stage, reused only when their own fingerprint matches.
    """

    def rows(self, unit: Unit) -> pd.DataFrame:
        proj = project(self.acts.get(list(unit.settings)), self.seed)
        scripts = {
            lang: script_of(lang, self.ds.item(lang, self.chosen[0]).question) for lang in self.languages
        }
        proj["script"] = proj["language"].map(scripts)
        return proj

    def summarize(self) -> dict[str, Any]:
        from crosslens.figures import pca_figure

        proj = self.read()
        figure = pca_figure(proj, self.store.root / "fig3_pca.png", title=f"{self.lm.spec} — {self.ds.name}")
        summary = {
            "layers": self.layers,
            "languages": self.languages,
            "n_items": len(self.chosen),
            "figure": str(figure),
        }
        self.store.write_json("pca_summary.json", summary)
        return summary


def pca_items(ds: ParallelDataset, n_items: int, seed: int) -> list[str]:
    """The seeded sample of parallel items PCA projects (all of them when there are fewer)."""
    ids = ds.item_ids()
    return sorted(random.Random(seed).sample(ids, n_items)) if n_items < len(ids) else ids


def pca_stage(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    layers: Sequence[int],
    n_items: int = 50,
    template: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> PcaStage:
    """PCA of ``lm`` on ``ds`` into ``out``, planned but not run."""
    if n_items < 2:
        raise ValueError(f"--n-items must be >= 2 (a projection needs two points), got {n_items}")
    layers = lm.anatomy.check_layers(layers)
    if 0 in layers:
        raise ValueError("PCA layers start at 1 (layer 0 is the embeddings output)")
    tmpl = get_template(template or ds.template)
    chosen = pca_items(ds, n_items, seed)
    if len(chosen) < 2:
        raise ValueError(f"PCA needs at least 2 aligned items; {ds.name} has {len(chosen)}")
    languages = list(ds.languages)
    fp = data_fingerprint(lm, ds, tmpl) | {"languages": languages, "items": chosen, "seed": seed}
    meta = {
        "model": lm.describe(),
        "languages": languages,
        "layers": layers,
        "n_items": len(chosen),
        "command": " ".join(sys.argv),
        "crosslens_version": __version__,
    }
    return PcaStage(
        ds=ds,
        table=PCA_TABLE,
        store=Store(out),
        fingerprint=fp,
        meta=meta,
        units=[Unit(ds.name, "*", 0, tuple(chosen), tuple(layers))],
        setting_columns=("layer",),
        lm=lm,
        template=tmpl,
        languages=languages,
        layers=layers,
        chosen=chosen,
        seed=seed,
        batch_size=batch_size,
    )


def job_stage(config: ExperimentConfig, lm: LoadedModel, spec: str, job: Job, out: Path) -> PcaStage:
    """PCA of one model x dataset of an experiment (registry builder): the lens layers above 0."""
    layers = [layer for layer in config.lens_layers(lm.anatomy.n_layers) if layer > 0]
    opts = config.eval_options(job.index)
    return pca_stage(
        lm, job.data, out, layers, config.pca.n_items, opts.template, opts.batch_size, config.seed
    )


def run_pca(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    layers: Sequence[int],
    n_items: int = 50,
    template: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Collect activations of ``n_items`` seeded parallel items, project, draw.

    Writes ``activations.safetensors``, the ``pca/`` table, ``pca_summary.json`` and ``fig3_pca.png``.
    """
    return run_stage(pca_stage(lm, ds, out, layers, n_items, template, batch_size, seed), progress)
