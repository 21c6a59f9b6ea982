"""crosslens: why does an LLM answer the same question differently in different languages?

Evaluate causal LMs on parallel multiple-choice benchmarks (consistency, transfer), look inside
with a multilingual logit or tuned lens, compare representations across languages (CKA), test
language-specific neurons causally, and steer them toward English. The public API is re-exported here
lazily, so ``import crosslens`` (and ``crosslens --version``) stays fast.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("crosslens")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

_EXPORTS = {
    "load_model": "crosslens.models.loading",
    "ModelSpec": "crosslens.models.loading",
    "LoadedModel": "crosslens.models.loading",
    "Anatomy": "crosslens.models.anatomy",
    "paper_layers": "crosslens.models.anatomy",
    "load_dataset": "crosslens.data.registry",
    "list_datasets": "crosslens.data.registry",
    "ParallelDataset": "crosslens.data.schema",
    "Item": "crosslens.data.schema",
    "DatasetConfig": "crosslens.data.options",
    "EvalOptions": "crosslens.scoring.options",
    "evaluate": "crosslens.stages.evaluate.stage",
    "run_lens": "crosslens.stages.lens.stage",
    "run_inspect": "crosslens.stages.inspect.stage",
    "inspect_prompt": "crosslens.stages.inspect.stage",
    "run_words": "crosslens.stages.words.stage",
    "run_latent": "crosslens.stages.latent.stage",
    "run_divergence": "crosslens.stages.divergence.stage",
    "Lens": "crosslens.lenses.lens",
    "LogitLens": "crosslens.lenses.lens",
    "TunedLens": "crosslens.lenses.lens",
    "load_lens": "crosslens.lenses.kinds",
    "train_lens": "crosslens.lenses.training",
    "TrainSettings": "crosslens.lenses.training",
    "corpus_from_files": "crosslens.lenses.training",
    "corpus_from_dataset": "crosslens.lenses.training",
    "run_pca": "crosslens.stages.pca.stage",
    "run_similarity": "crosslens.stages.similarity.stage",
    "run_neurons": "crosslens.stages.neurons.stage",
    "run_steering": "crosslens.stages.steering.stage",
    "SteeringVectors": "crosslens.stages.steering.stage",
    "Store": "crosslens.store",
    "stage_defs": "crosslens.stages.registry",
    "register": "crosslens.stages.registry",
    "StageDef": "crosslens.stages.registry",
    "register_lens": "crosslens.lenses.kinds",
    "LensKind": "crosslens.lenses.kinds",
    "run_experiment": "crosslens.experiment.runner",
    "load_config": "crosslens.experiment.config",
    "write_report": "crosslens.experiment.report",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crosslens' has no attribute {name!r}")
