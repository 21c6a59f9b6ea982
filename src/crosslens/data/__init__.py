"""Data: the item schema, the benchmarks' readers, the dataset registry and prompt rendering.

``from crosslens.data import load_dataset`` is the notebook entry point; the submodules hold the
pieces: :mod:`~crosslens.data.schema`, :mod:`~crosslens.data.loaders`, :mod:`~crosslens.data.registry`,
:mod:`~crosslens.data.prompts`.
"""

from crosslens.data.registry import DatasetInfo, list_datasets, load_dataset
from crosslens.data.schema import LETTERS, DataError, Item, ParallelDataset

__all__ = ["LETTERS", "DataError", "DatasetInfo", "Item", "ParallelDataset", "list_datasets", "load_dataset"]
