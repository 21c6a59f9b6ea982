"""A model known by its content: SHA-256 of its files, remembered by (path, size, mtime).

Results, lenses and checkpoints record which model made them. The spec a model was given as
(``./model``, ``/abs/model``, a copy elsewhere) is only a label: what identifies a local folder is the
hash of the files that decide its outputs (config, weights, tokenizer), and a GGUF file its own hash.
Hashing a 1 GB model takes seconds, so each file's hash is remembered by its absolute path, size
and modification time: in this process, and for large files on disk (``<cache>/hashes/``), so a
command does not re-read the weights it read before. A file rewritten in place with the same size
and mtime would keep its old hash, like ``make`` and ``rsync`` assume.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from crosslens.store import atomic_write_text

__all__ = ["sha256_file", "cached_sha256", "folder_digest", "MODEL_FILES"]

#: What decides a local folder's outputs, besides its weights (``*.safetensors``, ``*.bin``): the
#: config and every tokenizer file transformers reads (the prompt's tokens are part of the result).
MODEL_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)
WEIGHTS = ("*.safetensors", "*.bin")
DISK_CACHE_MIN_BYTES = 1 << 24  # smaller files are hashed again in a new process (milliseconds)
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MEMO: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cached_sha256(path: Path, cache: Path | None = None) -> str:
    """SHA-256 of ``path``, remembered by (absolute path, size, mtime) in this process and, for files of
    16 MiB or more, in ``cache`` (a folder; a cache that cannot be written only costs time)."""
    path = path.resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _MEMO:
        return _MEMO[key]
    entry = None
    if cache is not None and st.st_size >= DISK_CACHE_MIN_BYTES:
        entry = cache / hashlib.sha256(json.dumps(key).encode()).hexdigest()[:32]
        try:
            held = entry.read_text().strip()
        except OSError:
            held = ""
        if _HEX64.fullmatch(held):
            _MEMO[key] = held
            return held
    digest = sha256_file(path)
    _MEMO[key] = digest
    if entry is not None:
        try:
            atomic_write_text(entry, digest + "\n")
        except OSError:
            pass
    return digest


def folder_digest(folder: Path, cache: Path | None = None) -> str:
    """One SHA-256 over the names and hashes of a model folder's config, weights and tokenizer files
    (:data:`MODEL_FILES`): equal for the folder under any path and for a byte-identical copy."""
    files = {p.name: p for p in (folder / name for name in MODEL_FILES) if p.is_file()}
    files |= {p.name: p for pattern in WEIGHTS for p in folder.glob(pattern) if p.is_file()}
    manifest = "".join(f"{name}\t{cached_sha256(files[name], cache)}\n" for name in sorted(files))
    return hashlib.sha256(manifest.encode()).hexdigest()
