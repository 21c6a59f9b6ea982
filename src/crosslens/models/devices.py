"""Devices and precisions: which device names exist, whether one has bfloat16 matrix units, and the
concrete dtype ``auto`` stands for there. Light on purpose (torch is imported when a device is
probed), so options can be checked before anything heavy loads."""

from __future__ import annotations

import re
from typing import Any

from crosslens.options import OptionError

__all__ = ["DEVICE", "DTYPE_NAMES", "check_device", "bf16_units", "dtype_name"]

DEVICE = re.compile(r"cpu|auto|mps|cuda(:\d+)?")
DTYPE_NAMES = ("float32", "bfloat16", "float16", "bf16-mixed")  # bf16-mixed: Lightning's name


def check_device(device: str, available: bool = True) -> str:
    """``device`` if it names a device (cpu, cuda, cuda:N, mps, auto) and, with ``available``, one
    this machine has; else one :class:`~crosslens.options.OptionError` (before any weight is read)."""
    if not DEVICE.fullmatch(device):
        raise OptionError("device", f"{device!r} is not a device (use cpu, cuda, cuda:N, mps or auto)")
    if not available or device in ("cpu", "auto"):
        return device
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError("device", f"{device}: CUDA is not available on this machine (use cpu)")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise OptionError(
                "device", f"{device}: this machine has {torch.cuda.device_count()} CUDA devices"
            )
    if device == "mps" and not torch.backends.mps.is_available():
        raise OptionError("device", "mps: MPS is not available on this machine (use cpu)")
    return device


def bf16_units(device: str) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (AMX / AVX512-BF16 CPUs, recent GPUs).

    Elsewhere bfloat16 matmuls are emulated and several times *slower* than float32 (measured on an
    AVX2-only CPU: 256 x 640 @ 640 x 262144 in 9.0 s vs 1.7 s), so ``auto`` picks float32 there.
    """
    import torch

    device = str(device)
    if device == "auto":  # accelerate's device map: the GPUs when there are any
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device == "cpu":
        probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")  # private, hence getattr
        return any(getattr(torch.cpu, name, lambda: False)() for name in probes)
    return False


def dtype_name(dtype: Any, device: str = "cpu") -> str:
    """The concrete precision's name (``auto`` resolved for ``device``): what fingerprints and run
    records hold, so a folder made with ``auto`` on a bfloat16 machine is refused, not mixed, on a
    float32 one. ``auto`` is bfloat16 where ``device`` has bfloat16 matrix units, else float32."""
    if not isinstance(dtype, str):  # a torch.dtype
        return str(dtype).removeprefix("torch.")
    if dtype == "auto":
        return "bfloat16" if bf16_units(device) else "float32"
    if dtype not in DTYPE_NAMES:
        raise OptionError("dtype", f"unknown dtype '{dtype}' (use one of {', '.join(DTYPE_NAMES)}, auto)")
    return dtype
