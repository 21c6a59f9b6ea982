"""The results store: one output folder, tables of Parquet shards, written atomically.

Layout of an output folder::

    run.json          provenance + one fingerprint per stage (model, revision, prompt, ...)
    records/          evaluation records  (one row per dataset x language x item)
    lens/             logit-lens records  (one row per language x item x layer x form x choice)
    steer/            steering records    (one row per layer x gamma x language x item)
    *.json            summaries, recomputable from the tables

Work is cut into *units* (a fixed chunk of item ids of one dataset and language). A unit's rows
are written to a temporary file and renamed into place, so a shard is either complete or absent:
a run killed at any moment resumes by recomputing exactly the missing units, with the same
batches, and ends with the same rows. Many workers (or machines sharing a file system) can write
units of the same table at once; :meth:`Store.lock` keeps two *runs* of the same stage from
interleaving.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

__all__ = ["Store", "RunMismatchError", "StoreBusyError", "unit_name", "atomic_write_text"]


class RunMismatchError(RuntimeError):
    """Resuming into a folder whose records came from a different model, prompt or settings."""


class StoreBusyError(RuntimeError):
    """Another process is running the same stage into the same folder."""


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", part)


def unit_name(dataset: str, language: str, chunk: int, item_ids: list[str]) -> str:
    """File name of one unit; it names the exact items, so a different chunking never collides."""
    digest = hashlib.sha256("\n".join(item_ids).encode()).hexdigest()[:10]
    return f"{_safe(dataset)}.{_safe(language)}.{chunk:05d}.{digest}.parquet"


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Store:
    """An output folder of crosslens results."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- run metadata -------------------------------------------------------------------------
    @property
    def run_path(self) -> Path:
        return self.root / "run.json"

    def read_run(self) -> dict[str, Any]:
        return json.loads(self.run_path.read_text()) if self.run_path.is_file() else {}

    def begin(self, stage: str, fingerprint: dict[str, Any], meta: dict[str, Any]) -> None:
        """Record (or check) the fingerprint of ``stage`` before any of its rows are written.

        A folder that already holds rows of this stage made with another fingerprint is refused
        with the differing keys named, instead of mixing results.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        # Stages of one folder may begin at once (Ray workers, two commands): serialise the
        # read-modify-write of run.json so no stage's fingerprint is lost.
        with open(self.root / ".run.json.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                run = self.read_run()
                old = run.get("stages", {}).get(stage, {}).get("fingerprint")
                if old is not None and old != fingerprint and self.has_rows(stage):
                    diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                    details = "; ".join(f"{k}: {old.get(k)!r} -> {fingerprint.get(k)!r}" for k in diff)
                    raise RunMismatchError(
                        f"{self.root} already holds '{stage}' results made with different settings "
                        f"({details}); use another --out folder or delete it"
                    )
                run.setdefault("stages", {})[stage] = {"fingerprint": fingerprint, **meta}
                self.remove_stale_temporaries(stage)
                atomic_write_text(self.run_path, json.dumps(run, indent=2, default=str) + "\n")
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def write_json(self, name: str, data: Any) -> Path:
        path = self.root / name
        atomic_write_text(path, json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")
        return path

    def read_json(self, name: str) -> Any:
        return json.loads((self.root / name).read_text())

    # -- tables -------------------------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        return self.root / table

    def shards(self, table: str) -> list[Path]:
        """Finished shards of ``table``, sorted; hidden temporary files of a killed writer are not shards."""
        d = self.table_dir(table)
        return sorted(p for p in d.glob("*.parquet") if not p.name.startswith(".")) if d.is_dir() else []

    def has_rows(self, table: str) -> bool:
        return bool(self.shards(table))

    def done_units(self, table: str) -> set[str]:
        return {p.name for p in self.shards(table)}

    def remove_stale_temporaries(self, table: str) -> None:
        """Delete temporary files a killed writer left behind (call only while holding the lock)."""
        d = self.table_dir(table)
        for p in d.glob(".tmp-*") if d.is_dir() else []:
            p.unlink(missing_ok=True)

    def write_unit(self, table: str, name: str, frame: pd.DataFrame) -> Path:
        """Write one unit's rows atomically (temporary hidden file, fsync, rename)."""
        d = self.table_dir(table)
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=d)
        os.close(fd)
        try:
            frame.to_parquet(tmp, index=False)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_UMASK)
            os.replace(tmp, d / name)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return d / name

    def read(self, table: str) -> pd.DataFrame:
        """All rows of ``table`` (empty frame if none), in a deterministic order."""
        files = self.shards(table)
        if not files:
            return pd.DataFrame()
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

    # -- exclusivity --------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, stage: str, shared: bool = False) -> Iterator[None]:
        """Hold a lock on ``stage`` of this folder for the duration of a run.

        Exclusive by default (one run of a stage at a time); ``shared`` is for the many workers of
        one distributed run writing units of a stage whose fingerprint their run has recorded: they
        exclude a second exclusive run, not each other.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f".{stage}.lock"
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "another process"
                raise StoreBusyError(
                    f"{self.root} is busy: another '{stage}' run ({holder}) is writing there; "
                    "wait for it or use another --out"
                ) from None
            if not shared:
                fh.seek(0)
                fh.truncate()
                fh.write(f"pid {os.getpid()} on {os.uname().nodename}")
                fh.flush()
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
