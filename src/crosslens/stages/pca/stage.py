"""PCA of last-token activations across languages (paper Fig. 3).

The picture asks "do parallel questions in different languages land in the same place?"; the
numbers that answer it without a picture (CKA, parallel vs non-parallel cosine, with CIs) are the
similarity stage's (:mod:`crosslens.stages.similarity`), computed from the same activation file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.decomposition import PCA

from crosslens.data.prompts import get_template
from crosslens.data.schema import ParallelDataset
from crosslens.data.scripts import script_of
from crosslens.models.loading import LoadedModel
from crosslens.options import OptionError, check_seed
from crosslens.stages.activations import Activations, SampleStage
from crosslens.stages.api import runner
from crosslens.stages.base import Unit
from crosslens.stages.context import JobContext
from crosslens.stages.fingerprints import data_fingerprint
from crosslens.stages.pca import FIG3, SUMMARY, TABLE
from crosslens.stages.pca.config import DEFAULTS, PcaConfig
from crosslens.stages.sampling import sample_items
from crosslens.store import Store

__all__ = ["project", "PcaStage", "pca_stage", "run_pca", "build"]


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
        summary = {
            "layers": self.layers,
            "languages": self.languages,
            "n_items": len(self.chosen),
            "figure": str(self.store.root / FIG3),  # drawn by the report part (crosslens.stages.pca.report)
        }
        self.store.write_json(SUMMARY, summary)
        return summary


def pca_stage(
    lm: LoadedModel,
    ds: ParallelDataset,
    out: str | Path,
    layers: Sequence[int],
    n_items: int = DEFAULTS.n_items,
    template: str | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> PcaStage:
    """PCA of ``lm`` on ``ds`` into ``out``, planned but not run."""
    check_seed(seed)
    if n_items < 2:
        raise OptionError("n_items", f"must be >= 2 (a projection needs two points), got {n_items}")
    layers = lm.anatomy.check_layers(layers)
    if 0 in layers:
        raise OptionError("layers", "PCA layers start at 1 (layer 0 is the embeddings output)")
    tmpl = get_template(template or ds.template)
    chosen = sample_items(ds, n_items, seed)
    if len(chosen) < 2:
        raise ValueError(f"PCA needs at least 2 aligned items; {ds.name} has {len(chosen)}")
    languages = list(ds.languages)
    fp = data_fingerprint(lm, ds, tmpl) | {"languages": languages, "items": chosen, "seed": seed}
    meta = {
        "model": lm.describe(),
        "languages": languages,
        "layers": layers,
        "n_items": len(chosen),
    }
    return PcaStage(
        ds=ds,
        table=TABLE,
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


def build(ctx: JobContext) -> PcaStage:
    """PCA of one model x dataset (the registry's builder): the run's layers above 0."""
    section = ctx.section
    assert isinstance(section, PcaConfig)
    opts = ctx.eval_options()
    return pca_stage(ctx.lm, ctx.data, ctx.out, ctx.read_layers(first=1), section.n_items, opts.template,
                     opts.batch_size, ctx.seed)  # fmt: skip


#: Collect activations of a seeded item sample, project them (:func:`pca_stage`'s arguments, and
#: ``progress``); writes ``activations.safetensors``, the ``pca/`` table and ``pca_summary.json``.
run_pca = runner(pca_stage, "run_pca")
