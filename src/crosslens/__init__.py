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
    "load_model": "crosslens.models",
    "ModelSpec": "crosslens.models",
    "LoadedModel": "crosslens.models",
    "Anatomy": "crosslens.anatomy",
    "paper_layers": "crosslens.anatomy",
    "load_dataset": "crosslens.data",
    "list_datasets": "crosslens.data",
    "ParallelDataset": "crosslens.data",
    "Item": "crosslens.data",
    "EvalOptions": "crosslens.evaluate",
    "evaluate": "crosslens.evaluate",
    "run_lens": "crosslens.lens",
    "Lens": "crosslens.lenses",
    "LogitLens": "crosslens.lenses",
    "TunedLens": "crosslens.lenses",
    "load_lens": "crosslens.lenses",
    "train_lens": "crosslens.lens_training",
    "TrainSettings": "crosslens.lens_training",
    "corpus_from_files": "crosslens.lens_training",
    "corpus_from_dataset": "crosslens.lens_training",
    "run_pca": "crosslens.pca",
    "run_similarity": "crosslens.similarity",
    "run_neurons": "crosslens.neurons",
    "run_steering": "crosslens.steering",
    "SteeringVectors": "crosslens.steering",
    "Store": "crosslens.store",
    "STAGES": "crosslens.stages",
    "run_experiment": "crosslens.runner",
    "load_config": "crosslens.config",
    "write_report": "crosslens.report",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'crosslens' has no attribute {name!r}")
