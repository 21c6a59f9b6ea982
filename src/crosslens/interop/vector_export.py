"""Steering vectors in the formats other tools read, and back.

* ``lm-eval``: the file lm-evaluation-harness's ``steered`` model loads (``--model steered
  --model_args pretrained=...,steer_path=FILE.pt``): a torch file mapping a hook point (a module
  name under the model's ``base_model``, e.g. ``layers.9``) to ``{"steering_vector", "steering_coefficient",
  "action": "add"}``. lm-eval adds the vector at **every** position, prompt and continuation: the
  same as ``crosslens steer --positions all``, not the paper's last-token steering.
* ``gguf``: a llama.cpp control vector as repeng writes it: architecture ``controlvector``, one
  float32 tensor ``direction.<k>`` per layer, k the 0-based index of the decoder layer whose output
  it is added to (crosslens layer l is ``direction.<l-1>``); llama.cpp also adds it at every
  position (``--control-vector-scaled FILE SCALE``: SCALE plays gamma's part).

Writing the lm-eval file uses ``torch.save`` of plain tensors and numbers; crosslens reads such a
file only with ``torch.load(weights_only=True)``, never an arbitrary pickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crosslens.models.anatomy import family_for
from crosslens.options import OptionError
from crosslens.stages.steering.vectors import VECTORS_FILE, SteeringVectors
from crosslens.store import Store, check_output

__all__ = ["FORMATS", "hookpoint", "write_lmeval", "read_lmeval", "write_gguf", "read_gguf", "export_vectors"]

FORMATS = ("lm-eval", "gguf")


def hookpoint(model_type: str, layer: int) -> str:
    """lm-eval's name of the module whose output is crosslens layer ``layer`` (under ``base_model``)."""
    blocks = family_for(model_type).blocks.split(".", 1)[-1]  # "model.layers" -> "layers"
    return f"{blocks}.{layer - 1}"


def write_lmeval(
    path: Path, vectors: dict[int, torch.Tensor], model_type: str, coefficient: float = 1.0
) -> Path:
    """Write ``vectors`` (crosslens layer -> vector) for lm-eval's steered model, times ``coefficient``."""
    config = {
        hookpoint(model_type, layer): {
            "steering_vector": v.detach().float().cpu().contiguous(),
            "steering_coefficient": float(coefficient),
            "action": "add",
        }
        for layer, v in sorted(vectors.items())
    }
    return _atomic(path, lambda tmp: torch.save(config, tmp))


def read_lmeval(path: Path, model_type: str) -> tuple[dict[int, torch.Tensor], dict[int, float]]:
    """Vectors and coefficients of an lm-eval steering file, by crosslens layer (``add`` only)."""
    try:
        config = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - anything but plain tensors and numbers is refused
        raise ValueError(
            f"{path}: not an lm-eval steering file of plain tensors ({exc.__class__.__name__})"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of hook points to steering entries")
    prefix = hookpoint(model_type, 1).rsplit(".", 1)[0] + "."
    vectors, coefficients = {}, {}
    for name, entry in config.items():
        if not (isinstance(name, str) and name.startswith(prefix) and name[len(prefix) :].isdigit()):
            raise ValueError(
                f"{path}: hook point {name!r} is not a decoder layer ({prefix}N) of a {model_type}"
            )
        if not isinstance(entry, dict) or entry.get("action", "add") != "add":
            raise ValueError(f"{path}: {name}: only the 'add' action is a steering vector")
        layer = int(name[len(prefix) :]) + 1
        vectors[layer] = entry["steering_vector"].float()
        coefficients[layer] = float(entry.get("steering_coefficient", 1.0))
    return vectors, coefficients


def write_gguf(path: Path, vectors: dict[int, torch.Tensor], model_type: str) -> Path:
    """Write ``vectors`` (crosslens layer -> vector) as a llama.cpp control vector."""
    import gguf

    if 1 in vectors:
        raise ValueError(
            "layer 1 would be direction.0, which llama.cpp refuses (it cannot steer the first block's "
            "output); export layers >= 2"
        )

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), "controlvector")
        writer.add_string("controlvector.model_hint", model_type)
        writer.add_uint32("controlvector.layer_count", len(vectors))
        for layer, v in sorted(vectors.items()):
            writer.add_tensor(f"direction.{layer - 1}", v.detach().float().cpu().numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return _atomic(path, write)


def read_gguf(path: Path) -> tuple[dict[int, np.ndarray], str | None]:
    """The directions of a control-vector GGUF file, by crosslens layer, and its model hint."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path}: not a GGUF file ({exc})") from None
    arch = reader.fields.get("general.architecture")
    if arch is None or bytes(arch.parts[arch.data[0]]).decode() != "controlvector":
        raise ValueError(f"{path}: not a control vector (general.architecture is not 'controlvector')")
    hint = reader.fields.get("controlvector.model_hint")
    vectors = {}
    for t in reader.tensors:
        name, _, k = t.name.partition(".")
        if name != "direction" or not k.isdigit():
            raise ValueError(f"{path}: unexpected tensor {t.name!r} in a control vector")
        vectors[int(k) + 1] = np.array(t.data, dtype=np.float32).reshape(-1)
    return vectors, bytes(hint.parts[hint.data[0]]).decode() if hint is not None else None


def export_vectors(
    folder: Path,
    out: Path,
    fmt: str,
    language: str,
    layers: Sequence[int] | None = None,
    coefficient: float = 1.0,
) -> Path:
    """Export the steering vectors v(language -> en) of a steering result ``folder``."""
    if fmt not in FORMATS:
        raise OptionError("format", f"must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.is_dir():
        name = "vectors.pt" if fmt == "lm-eval" else "vectors.gguf"
        raise OptionError("out", f"{out} is a folder; give the file to write (e.g. {out / name})")
    check_output(out.parent, "--out")
    path = Path(folder) / VECTORS_FILE
    if not path.is_file():
        raise ValueError(f"{folder}: no {VECTORS_FILE} (run `crosslens steer` into it first)")
    sv = SteeringVectors.load(path)
    pivot = sv.fingerprint.get("pivot")
    if language == pivot:
        others = ", ".join(sorted(m for m in sv.vectors if m != pivot))
        raise OptionError(
            "language",
            f"{language!r} is the pivot: v({language} -> {language}) is zero; export one of {others}",
        )
    if language not in sv.vectors:
        raise OptionError(
            "language", f"{folder} has vectors for {', '.join(sorted(sv.vectors))}, not {language!r}"
        )
    have = sorted(sv.vectors[language])
    chosen = list(layers) if layers else have
    missing = [layer for layer in chosen if layer not in have]
    if missing:
        raise OptionError("layers", f"no vector at layer {missing[0]} (the folder has layers {have})")
    model_type = _model_type(Path(folder))
    vectors = {layer: sv.get(language, layer) for layer in chosen}
    if fmt == "lm-eval":
        return write_lmeval(out, vectors, model_type, coefficient)
    return write_gguf(out, {layer: coefficient * v for layer, v in vectors.items()}, model_type)


def _model_type(folder: Path) -> str:
    steer = Store(folder).read_run().stages.get("steer")
    model_type = steer.model.model_type if steer is not None and steer.model is not None else None
    if model_type is None:
        raise ValueError(f"{folder}: run.json does not say which model the vectors are for")
    return model_type


def _atomic(path: Path, write: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
