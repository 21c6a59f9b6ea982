"""Seeded samples of items that stages share (PCA and similarity read the same sample; steering and
neurons hold out the items their vectors or neurons come from), and their content digests."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from crosslens.data.schema import ParallelDataset
from crosslens.options import OptionError

__all__ = ["sample_items", "held_out_sample", "items_digest"]


def sample_items(ds: ParallelDataset, n_items: int, seed: int) -> list[str]:
    """The seeded sample of parallel items PCA and similarity read (all of them when there are fewer)."""
    ids = ds.item_ids()
    return sorted(random.Random(seed).sample(ids, n_items)) if n_items < len(ids) else ids


def held_out_sample(item_ids: Sequence[str], n: int, seed: int, field: str) -> list[str]:
    """The seeded random sample of items a stage learns from and then holds out of its readings
    (steering vectors, language-specific neurons); ``field`` names the option that sets ``n``."""
    if n >= len(item_ids):
        raise OptionError(
            field, f"{n} leaves no items to evaluate (the dataset has {len(item_ids)} aligned items)"
        )
    return sorted(random.Random(seed).sample(list(item_ids), n))


def items_digest(ds: ParallelDataset, language: str, item_ids: Sequence[str]) -> str:
    """One content digest of ``item_ids`` in ``language`` (what a mean over those items is taken over)."""
    text = "\n".join(ds.item(language, i).digest for i in item_ids)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
