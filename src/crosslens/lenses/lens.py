"""Lenses: maps from a residual state at the output of block ``layer`` to vocabulary logits.

A :class:`Lens` is ``head(translate(h, layer))``: ``translate`` is the lens's own per-layer map and
``head`` is the model's own (final norm once, unembedding, final-logit softcap:
:meth:`crosslens.anatomy.Anatomy.lens_logits`). Because the head is shared, every layer's translated
states can still go through *one* vocabulary projection (the batched scoring relies on it), while
nothing assumes that one map serves every layer.

* :class:`LogitLens` (nostalgebraist 2020): ``translate`` is the identity.
* :class:`TunedLens` (Belrose et al. 2023, arXiv 2303.08112): per layer an affine translator
  ``h + A_l h + b_l``, zero-initialised (an untrained tuned lens *is* the logit lens), trained by
  :mod:`crosslens.lens_training` with the model frozen. The last layer has no translator: its
  state is what the model reads out.

On disk a tuned lens is a folder: ``lens.safetensors`` (float32 ``translators.<layer>.weight`` /
``.bias``) and ``lens.json`` (the model it was made for, the trained layers, how it was trained, on
what text, validation KL). Lenses saved by the tuned-lens project (``config.json`` + ``params.pt``
of plain tensors) load too. A lens made for another model is refused with one line.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import nn

from crosslens.files import Schema, read_json
from crosslens.lenses.kinds import LensError, LensSpec, load_lens, parse_lens
from crosslens.models.anatomy import Anatomy
from crosslens.models.loading import LoadedModel, sha256_file
from crosslens.store import atomic_write_bytes, atomic_write_text

__all__ = [
    "Lens",
    "LogitLens",
    "TunedLens",
    "LensError",
    "LensSpec",
    "parse_lens",
    "load_lens",
    "load_tuned",
    "precheck_tuned",
    "model_identity",
    "LensFile",
    "TunedLensConfig",
    "LENS_FILE",
    "LENS_WEIGHTS",
]

LENS_FILE = "lens.json"
LENS_WEIGHTS = "lens.safetensors"
FORMAT = "crosslens-lens/1"


class LensModel(Schema):
    """The model a lens was made for, as :func:`model_identity` records it."""

    spec: str | None = None
    revision: str | None = None
    model_type: str | None = None
    n_layers: int
    d_model: int
    unembed_sha256: str | None = None


class LensFile(Schema):
    """``lens.json``: the model, the trained layers, how and on what it was trained, validation KL."""

    format: Literal["crosslens-lens/1"]
    kind: str
    source: str = "crosslens"
    model: LensModel
    layers: list[int]
    weights_sha256: str
    training: dict[str, Any] = {}
    val_kl: dict[str, dict[str, float]] = {}


class TunedLensConfig(Schema):
    """The ``config.json`` the tuned-lens project saves beside ``params.pt`` (``TunedLensConfig``)."""

    base_model_name_or_path: str | None = None
    base_model_revision: str | None = None
    d_model: int
    num_hidden_layers: int
    bias: bool = True
    lens_type: str = "linear_tuned_lens"
    unembed_hash: str | None = None


class Lens:
    """``head(translate(h, layer))``; subclasses override :meth:`translate` and :meth:`fingerprint`."""

    kind: ClassVar[str]

    def __init__(self, anatomy: Anatomy):
        self.anatomy = anatomy

    @property
    def name(self) -> str:
        """The lens's name in tables, summaries and figures."""
        return self.kind

    def readable(self) -> set[int]:
        """The layers this lens can read."""
        return set(range(self.anatomy.n_layers + 1))

    def check_layers(self, layers: Sequence[int]) -> list[int]:
        """The model's range check, then this lens's own (a tuned lens reads its trained layers)."""
        layers = self.anatomy.check_layers(layers)
        missing = [ell for ell in layers if ell not in self.readable()]
        if missing:
            raise LensError(
                f"the {self.name} lens has no translator for layers {missing} (it reads "
                f"{sorted(self.readable())}); train it for those layers or read others"
            )
        return layers

    def translate(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        return h

    def logits(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """float32 vocabulary logits of states ``h`` (..., d) at ``layer``."""
        self.check_layers([layer])
        return self.anatomy.lens_logits(self.translate(h, layer), layer)

    def token_logprobs(
        self, states: Sequence[tuple[int, torch.Tensor]], targets: torch.Tensor, max_elements: int = 2**26
    ) -> torch.Tensor:
        """log-probabilities of ``targets`` (N, k) for the rows of every (layer, states) pair, stacked
        in order: each layer's rows are translated by that layer's map, then all go through one head."""
        with torch.no_grad():  # readings; training builds its own graph (crosslens.lens_training)
            translated = [self.translate(h, layer) for layer, h in states]
        if not translated:
            return torch.empty((0, *targets.shape[1:]), dtype=torch.float32)
        last = self.anatomy.n_layers
        return self.anatomy.token_logprobs(torch.cat(translated), last, targets, max_elements)

    def fingerprint(self) -> Any:
        """What a reading depends on beyond the model and prompts (part of the lens stage's); the
        logit lens's is its kind alone (as in crosslens 0.1, so earlier folders stay reusable)."""
        return self.kind


class LogitLens(Lens):
    """The model's own head applied to every layer's residual state."""

    kind = "logit"

    @classmethod
    def for_spec(cls, spec: LensSpec, lm: LoadedModel) -> LogitLens:
        return cls(lm.anatomy)


@dataclass
class LensInfo:
    """What ``lens.json`` says besides the weights."""

    model: dict[str, Any]
    layers: list[int]
    training: dict[str, Any] = field(default_factory=dict)
    val_kl: dict[str, dict[str, float]] = field(default_factory=dict)
    source: str = "crosslens"


class TunedLens(Lens):
    """Per trained layer ``h + A h + b`` (float32), then the model's head; the last layer is read as is."""

    kind = "tuned"

    def __init__(self, anatomy: Anatomy, layers: Sequence[int], info: LensInfo, sha256: str | None = None):
        super().__init__(anatomy)
        last = anatomy.n_layers
        bad = [ell for ell in layers if not 0 <= ell < last]
        if bad:
            raise LensError(
                f"a tuned lens translates layers 0..{last - 1} (the last is read as is), not {bad}"
            )
        d = anatomy.d_model
        self.translators = nn.ModuleDict({str(ell): nn.Linear(d, d) for ell in sorted(set(layers))})
        for lin in self.translators.values():
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
            lin.to(anatomy.unembed_weight.device)
        self.info = info
        self.sha256 = sha256

    @property
    def layers(self) -> list[int]:
        return [int(k) for k in self.translators]

    def readable(self) -> set[int]:
        return {*self.layers, self.anatomy.n_layers}

    def translate(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        lin = self.translators[str(layer)] if layer != self.anatomy.n_layers else None
        if lin is None:
            return h
        x = h.to(lin.weight.device, torch.float32)
        return (x + lin(x)).to(h.dtype)

    def fingerprint(self) -> dict[str, Any]:
        if self.sha256 is None:
            raise LensError("a tuned lens is read only once saved (its file hash is part of every reading)")
        return {"kind": self.kind, "sha256": self.sha256}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            f"translators.{ell}.{p}": t.detach().float().cpu().contiguous()
            for ell, lin in self.translators.items()
            for p, t in (("weight", lin.weight), ("bias", lin.bias))
        }

    def save(self, folder: Path) -> None:
        """Write ``lens.safetensors`` then ``lens.json`` (atomically; the json names the weights' hash).
        Weights that are not finite are never written: readings through them would blame the model."""
        tensors = self.tensors()
        bad = next((name for name, t in tensors.items() if not torch.isfinite(t).all()), None)
        if bad is not None:
            raise LensError(
                f"{folder}: the tuned lens's {bad} is not finite (training diverged: lower the "
                "learning rate); not saved"
            )
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(folder / LENS_WEIGHTS, save(tensors))
        self.sha256 = sha256_file(folder / LENS_WEIGHTS)
        doc = {
            "format": FORMAT,
            "kind": self.kind,
            "source": self.info.source,
            "model": self.info.model,
            "layers": self.layers,
            "weights_sha256": self.sha256,
            "training": self.info.training,
            "val_kl": self.info.val_kl,
        }
        atomic_write_text(folder / LENS_FILE, json.dumps(doc, indent=2) + "\n")


# -- the model a lens belongs to ---------------------------------------------------------------------------
_UNEMBED_HASHES: dict[int, str] = {}


def unembed_sha256(anatomy: Anatomy) -> str:
    """SHA-256 of the unembedding rounded to bfloat16 (so float32 and bfloat16 loads of one model agree)."""
    w = anatomy.unembed_weight
    key = id(w)
    if key not in _UNEMBED_HASHES:
        data = w.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy()
        _UNEMBED_HASHES[key] = hashlib.sha256(data.tobytes()).hexdigest()
    return _UNEMBED_HASHES[key]


def model_identity(lm: LoadedModel) -> dict[str, Any]:
    """What a tuned lens (and a training checkpoint) records of its model and checks on use."""
    a = lm.anatomy
    return {
        "spec": lm.spec,
        "model_id": lm.identity,
        "revision": lm.revision,
        "model_type": a.model_type,
        "n_layers": a.n_layers,
        "d_model": a.d_model,
        "unembed_sha256": unembed_sha256(a),
    }


def check_model(recorded: dict[str, Any], lm: LoadedModel, where: Path, what: str = "lens") -> None:
    """Refuse a lens made for another model, naming the first thing that differs."""
    compare_model(recorded, model_identity(lm), where, what)


def compare_model(recorded: dict[str, Any], here: dict[str, Any], where: Path, what: str = "lens") -> None:
    """Refuse ``recorded`` (what a lens or checkpoint says of its model) for the model ``here`` (what
    :func:`model_identity` gives, or the part known before it loads), on the first key both hold that
    differs. The model is known by its content (``model_id``) where the record holds it, its spec
    being a label then; a record written before identities is compared by its spec, as it was then,
    unless its revision is a GGUF file's hash (``sha256:``), which is its content already."""
    gguf = str(recorded.get("revision", "")).startswith("sha256:")
    name = "model_id" if "model_id" in recorded else "revision" if gguf else "spec"
    for key in ("model_type", "n_layers", "d_model", "unembed_sha256", name, "revision"):
        if key in recorded and key in here and recorded[key] != here[key]:
            raise LensError(
                f"{what} {where} was made for another model ({key}: {recorded[key]!r}, this model: "
                f"{here[key]!r}; {what} model {recorded.get('spec')!r}, this model {here.get('spec')!r})"
            )


# -- loading ------------------------------------------------------------------------------------------------
def load_tuned(spec: LensSpec, lm: LoadedModel) -> TunedLens:
    """``tuned:PATH``: a crosslens lens folder or one saved by the tuned-lens project."""
    folder, fmt = _folder(spec)
    return _load_crosslens(folder, lm) if fmt == "crosslens" else _load_tuned_lens_project(folder, lm)


def _folder(spec: LensSpec) -> tuple[Path, str]:
    """A tuned lens's folder and its format (``crosslens`` or ``tuned-lens``), or one line saying why not."""
    if spec.path is None:
        raise LensError("lens 'tuned' needs its folder: tuned:LENS_DIR (train one with crosslens train-lens)")
    folder = spec.path
    if (folder / LENS_FILE).is_file():
        return folder, "crosslens"
    if (folder / "config.json").is_file() and (folder / "params.pt").is_file():
        return folder, "tuned-lens"
    raise LensError(
        f"{folder} holds no lens: expected {LENS_FILE} + {LENS_WEIGHTS} (crosslens train-lens) or "
        "config.json + params.pt (the tuned-lens project)"
    )


def _tuned_lens_config(folder: Path) -> TunedLensConfig:
    return read_json(folder / "config.json", TunedLensConfig)


def precheck_tuned(spec: LensSpec, n_layers: int | None) -> None:
    """Before the model loads: the folder holds a lens, made for a model of this depth (if known)."""
    folder, fmt = _folder(spec)
    if fmt == "crosslens":
        depth = read_info(folder).model.n_layers
    else:
        depth = _tuned_lens_config(folder).num_hidden_layers
    if n_layers is not None and depth != n_layers:
        raise LensError(f"lens {folder} was made for a model of {depth} layers; this one has {n_layers}")


def read_info(folder: Path) -> LensFile:
    """``lens.json`` of a crosslens lens folder, read through its schema."""
    return read_json(folder / LENS_FILE, LensFile)


def _load_crosslens(folder: Path, lm: LoadedModel) -> TunedLens:
    doc = read_info(folder)
    model = doc.model.model_dump(exclude_unset=True)
    check_model(model, lm, folder)
    weights = folder / LENS_WEIGHTS
    if not weights.is_file():
        raise LensError(f"{folder}: {LENS_FILE} without {LENS_WEIGHTS} (an unfinished lens)")
    digest = sha256_file(weights)
    if digest != doc.weights_sha256:
        raise LensError(f"{weights} does not match the hash in {LENS_FILE} (changed or partly copied)")
    try:
        tensors = load_file(weights)
    except SafetensorError as exc:
        raise LensError(f"cannot load {weights}: {exc}") from None
    info = LensInfo(model, doc.layers, doc.training, doc.val_kl, doc.source)
    lens = TunedLens(lm.anatomy, doc.layers, info, digest)
    _fill(lens, {k.removeprefix("translators."): v for k, v in tensors.items()}, weights)
    return lens


def _fill(lens: TunedLens, state: dict[str, torch.Tensor], where: Path) -> None:
    """Copy ``<layer>.weight`` / ``<layer>.bias`` tensors into the translators; exact keys and shapes."""
    want = {f"{ell}.{p}" for ell in lens.layers for p in ("weight", "bias")}
    if set(state) != want:
        extra, missing = sorted(set(state) - want), sorted(want - set(state))
        raise LensError(f"{where}: unexpected tensors {extra[:4]} / missing {missing[:4]}")
    with torch.no_grad():
        for key, value in state.items():
            ell, p = key.split(".")
            target = getattr(lens.translators[ell], p)
            if tuple(value.shape) != tuple(target.shape):
                raise LensError(
                    f"{where}: {key} has shape {tuple(value.shape)}, expected {tuple(target.shape)}"
                )
            if not torch.isfinite(value).all():
                raise LensError(f"{where}: {key} holds NaN or infinite values; the lens file is bad")
            target.copy_(value.float())


def tuned_lens_hash(anatomy: Anatomy) -> str:
    """The tuned-lens project's ``unembed_hash``: SHA-256 of numpy's printed float32 unembedding."""
    w = anatomy.unembed_weight.detach().cpu().float().numpy()
    with np.printoptions():
        return hashlib.sha256(np.array_str(w, precision=1).encode()).hexdigest()


def _load_tuned_lens_project(folder: Path, lm: LoadedModel) -> TunedLens:
    """A lens saved by tuned-lens (``TunedLens.save``): translators 0..L-1 for hidden_states[0..L-1],
    which are crosslens layers 0..L-1. Read with ``weights_only=True``; anything but tensors is refused."""
    a = lm.anatomy
    config = _tuned_lens_config(folder)
    if config.lens_type != "linear_tuned_lens" or not config.bias:
        raise LensError(f"{folder}: only tuned-lens's linear_tuned_lens with bias is supported")
    for key, here in (("d_model", a.d_model), ("num_hidden_layers", a.n_layers)):
        if getattr(config, key) != here:
            recorded = getattr(config, key)
            raise LensError(
                f"lens {folder} was made for another model ({key}: {recorded!r}, this model: {here})"
            )
    if config.unembed_hash and config.unembed_hash != tuned_lens_hash(a):
        raise LensError(
            f"lens {folder} was made for another model (its unembed_hash differs from {lm.spec}'s)"
        )
    try:
        state = torch.load(folder / "params.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a file that is not plain tensors
        raise LensError(
            f"{folder / 'params.pt'} is not a plain tensor file ({type(exc).__name__}); refused"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LensError(f"{folder / 'params.pt'} is not a state dict of tensors; refused")
    state = {k.removeprefix("layer_translators."): v for k, v in state.items()}
    layers = sorted({int(k.split(".")[0]) for k in state if k.split(".")[0].isdigit()})
    model = {
        "spec": config.base_model_name_or_path,
        "revision": config.base_model_revision,
        "n_layers": a.n_layers,
        "d_model": a.d_model,
    }
    lens = TunedLens(
        a, layers, LensInfo(model, layers, source="tuned-lens"), sha256_file(folder / "params.pt")
    )
    _fill(lens, state, folder / "params.pt")
    return lens
