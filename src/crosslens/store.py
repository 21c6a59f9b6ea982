"""The results store: one output folder, tables of Parquet shards, written atomically.

Layout of an output folder::

    run.json          provenance + one fingerprint per stage (model, revision, prompt, ...)
    records/          evaluation records  (one row per dataset x language x item)
    lens/             logit-lens records  (one row per language x item x layer x form x choice)
    pca/              PCA projections     (one row per layer x language x item)
    steer/            steering records    (one row per layer x gamma x language x item)
    *.safetensors     activations and steering vectors, each with its fingerprint inside
    *.json            summaries, recomputable from the tables

Every shard carries its stage's fingerprint, its language, the content digest of each of its
items and the settings (layers, gammas) it covers in its own Parquet metadata, so a folder is
self-describing without run.json and nothing is reused unless it matches exactly.

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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from crosslens.errors import CrosslensError
from crosslens.files import Schema, read_json

__all__ = [
    "Store",
    "RunFile",
    "RunStage",
    "RunMismatchError",
    "StoreBusyError",
    "OutputPathError",
    "check_output",
    "unit_name",
    "describe_mismatch",
    "fingerprint_diff",
    "same_fingerprint",
    "MODEL_ID",
    "settings_mismatch",
    "no_fingerprint",
    "atomic_write_text",
    "SHARD_META",
]

SHARD_META = b"crosslens"  # Parquet metadata key of a shard's provenance


class FewShot(Schema):
    k: int
    source: str
    items: list[str]


class Fingerprint(Schema):
    """The keys of a stage's fingerprint that are read back (the report's run metadata); a stage
    records more, kept as they are."""

    dataset: str | None = None
    fewshot: FewShot | None = None
    cloze: bool = True


class ModelEntry(Schema):
    """What a stage records of its model (``LoadedModel.describe``); the report shows the rest as text."""

    spec: str
    model_type: str | None = None


class LabelTokens(Schema):
    form: str
    tokens: list[str]


class Selection(Schema):
    items: list[str]
    settings: list[Any] = []


class RunStage(Schema):
    """One stage's entry of ``run.json``: its fingerprint and provenance (keys read back typed)."""

    fingerprint: Fingerprint = Fingerprint()
    model: ModelEntry | None = None
    dataset: str | None = None
    languages: list[str] | None = None
    pivot: str | None = None
    layers: list[int] | None = None
    label_tokens: LabelTokens | None = None
    selection: Selection | None = None
    command: str | None = None


class RunFile(Schema):
    """``run.json``: provenance and one fingerprint per stage (table name -> entry)."""

    stages: dict[str, RunStage] = {}


class RunMismatchError(CrosslensError, RuntimeError):
    """Resuming into a folder whose records came from a different model, prompt or settings."""


class StoreBusyError(CrosslensError, RuntimeError):
    """Another process is running the same stage into the same folder."""


class OutputPathError(CrosslensError, ValueError):
    """An output path that can never become a writable folder (a file, or below one)."""


def check_output(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before any model loads or anything is written, an output path that is a file, lies
    below a file, or whose nearest existing folder is not writable."""
    p = Path(path).expanduser()
    for q in (p, *p.parents):
        if q.exists() or q.is_symlink():
            if not q.is_dir():
                where = "is" if q == p else f"is below {q}, which is"
                raise OutputPathError(f"{option} {path} {where} a file, not a folder")
            if not os.access(q, os.W_OK | os.X_OK):
                raise OutputPathError(f"{option} {path}: {q} is not writable")
            return p
    return p


def _safe(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", part)


def unit_name(
    dataset: str, language: str, chunk: int, item_ids: Sequence[str], settings: Sequence[Any] = ()
) -> str:
    """File name of one shard. Its hash covers the exact language code, items and settings, so a
    different chunking, an extension, or two codes that differ only in punctuation never collide."""
    key = json.dumps([language, list(item_ids), list(settings)], ensure_ascii=False)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{_safe(dataset)}.{_safe(language)}.{chunk:05d}.{digest}.parquet"


MODEL_LABEL = "model"  # the model spec as given: a label wherever both sides record the model's identity
MODEL_ID = "model_id"  # what the model is by content (crosslens.models.loading.content_identity)


def with_identity(fingerprint: dict[str, Any]) -> dict[str, Any]:
    """``fingerprint`` with the model's identity where it can be told: recorded, or, in one written
    before identities were, a GGUF model's ``revision`` (``sha256:<the file's hash>``, its content
    identity already). A folder's or a Hub model's older revision is not its content: none then."""
    revision = fingerprint.get("revision")
    if MODEL_ID in fingerprint or not (isinstance(revision, str) and revision.startswith("sha256:")):
        return fingerprint
    return fingerprint | {MODEL_ID: f"gguf:{revision}"}


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys on which fingerprint ``old`` (on disk) and ``new`` (this run) differ, sorted.

    The model is compared by its content identity (``model_id``) where both tell one
    (:func:`with_identity`), so the same model given by another path, or a byte-identical copy, is
    the same model; its spec (``model``) is then a label. Otherwise (a folder or Hub model written
    before identities were recorded) the spec is compared, exactly as it was then: such a folder is
    reused under the spec it was made with.
    """
    old, new = with_identity(old), with_identity(new)
    keys = set(old) | set(new)
    keys.discard(MODEL_LABEL if MODEL_ID in old and MODEL_ID in new else MODEL_ID)
    return sorted(k for k in keys if old.get(k) != new.get(k))


def same_fingerprint(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether something on disk made with ``old`` may be reused by a run with ``new``."""
    return not fingerprint_diff(old, new)


def describe_mismatch(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``key: old -> new`` for every fingerprint key that differs (long values shortened in the
    middle: a path's two ends are what tell two folders apart); another model shows its spec beside
    its identity."""

    def short(v: Any) -> str:
        text = repr(v)
        return text if len(text) <= 160 else text[:78] + "..." + text[-79:]

    diff = fingerprint_diff(old, new)
    old, new = with_identity(old), with_identity(new)
    if MODEL_ID in diff and old.get(MODEL_LABEL) != new.get(MODEL_LABEL):
        diff = sorted({*diff, MODEL_LABEL})
    return "; ".join(f"{k}: {short(old.get(k))} -> {short(new.get(k))}" for k in diff)


def settings_mismatch(holder: str, old: dict[str, Any], new: dict[str, Any]) -> RunMismatchError:
    """The one-line refusal of anything on disk (shards, activations, vectors) made with other
    settings; ``holder`` says what holds it (``<folder> already holds 'lens' results``)."""
    return RunMismatchError(
        f"{holder} made with different settings ({describe_mismatch(old, new)}); "
        "use another --out folder or delete it"
    )


def no_fingerprint(path: Path) -> RunMismatchError:
    """The refusal of a file written before files carried their fingerprint (crosslens 0.1)."""
    return RunMismatchError(
        f"{path} has no fingerprint (written by an older crosslens); use another --out folder or delete it"
    )


_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: readers never see half a file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`atomic_write_text` for bytes (weights, checkpoints)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
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

    def read_run(self) -> RunFile:
        """``run.json`` through its schema (empty where none was written yet)."""
        return read_json(self.run_path, RunFile) if self.run_path.is_file() else RunFile()

    def begin(self, stage: str, fingerprint: dict[str, Any], meta: dict[str, Any]) -> None:
        """Record the fingerprint and provenance of ``stage`` in run.json (after the stage's checks).

        run.json is provenance for people and the report; what may be reused is decided by the
        fingerprints that every shard and artefact carries itself (see :mod:`crosslens.stages`).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        # Stages of one folder may begin at once (Ray workers, two commands): serialise the
        # read-modify-write of run.json so no stage's fingerprint is lost.
        with open(self.root / ".run.json.lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                run = self.read_run().model_dump(exclude_unset=True)
                run.setdefault("stages", {})[stage] = {"fingerprint": fingerprint, **meta}
                self.remove_stale_temporaries(stage)
                atomic_write_text(self.run_path, json.dumps(run, indent=2, default=str) + "\n")
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def write_json(self, name: str, data: Any) -> Path:
        path = self.root / name
        atomic_write_text(path, json.dumps(data, indent=2, default=str, allow_nan=False) + "\n")
        return path

    # -- tables -------------------------------------------------------------------------------
    def table_dir(self, table: str) -> Path:
        return self.root / table

    def shards(self, table: str) -> list[Path]:
        """Finished shards of ``table``, sorted; hidden temporary files of a killed writer are not shards."""
        d = self.table_dir(table)
        return sorted(p for p in d.glob("*.parquet") if not p.name.startswith(".")) if d.is_dir() else []

    def has_rows(self, table: str) -> bool:
        return bool(self.shards(table))

    def index(self, table: str) -> list[tuple[Path, dict[str, Any] | None]]:
        """Every shard of ``table`` with the provenance stored in its own Parquet metadata
        (None for a shard without one, e.g. written by crosslens 0.1)."""
        out = []
        for path in self.shards(table):
            meta = pq.read_schema(path).metadata or {}
            raw = meta.get(SHARD_META)
            out.append((path, json.loads(raw) if raw is not None else None))
        return out

    def precheck(self, table: str, expected: dict[str, Any]) -> None:
        """Refuse a folder whose ``table`` shards differ from ``expected`` on any of its keys.

        The cheap check before a model loads (``expected`` holds what is known without it); the
        stage's full check follows once it is planned.
        """
        for path, meta in self.index(table):
            fingerprint = with_identity(self.fingerprint_of(path, meta))
            old = {k: fingerprint[k] for k in expected if k in fingerprint}
            if not same_fingerprint(old, expected):
                raise self.mismatch(table, old, expected)

    def fingerprint_of(self, path: Path, meta: dict[str, Any] | None) -> dict[str, Any]:
        """A shard's fingerprint; a shard without one (written by crosslens 0.1) is refused."""
        if meta is None:
            raise no_fingerprint(path)
        return meta["fingerprint"]

    def mismatch(self, table: str, old: dict[str, Any], new: dict[str, Any]) -> RunMismatchError:
        """The one-line refusal for results of ``table`` made with other settings."""
        return settings_mismatch(f"{self.root} already holds '{table}' results", old, new)

    def remove_stale_temporaries(self, table: str) -> None:
        """Delete temporary files a killed writer left behind (call only while holding the lock)."""
        d = self.table_dir(table)
        for p in d.glob(".tmp-*") if d.is_dir() else []:
            p.unlink(missing_ok=True)

    def write_unit(self, table: str, name: str, frame: pd.DataFrame, meta: dict[str, Any]) -> Path:
        """Write one unit's rows atomically (temporary hidden file, fsync, rename), with ``meta``
        (fingerprint, language, item digests, settings) in the file's own metadata."""
        d = self.table_dir(table)
        d.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=d)
        os.close(fd)
        try:
            data = pa.Table.from_pandas(frame, preserve_index=False)
            data = data.replace_schema_metadata(
                {**(data.schema.metadata or {}), SHARD_META: json.dumps(meta, ensure_ascii=False)}
            )
            pq.write_table(data, tmp)
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
