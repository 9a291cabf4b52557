"""Device choice: ``resolve_device`` (by name, or "auto") and the devices that work here."""

from __future__ import annotations

import torch

__all__ = ["available_devices", "resolve_device"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; other names are checked to work."""
    if isinstance(device, torch.device):
        return device
    name = str(device).lower()
    if name == "gpu":  # Lightning's spelling (--accelerator gpu)
        name = "cuda"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"device={device!r} is not a device name: use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} asked for, but CUDA is not available here: use 'auto' or 'cpu'"
        )
    if dev.type == "mps" and not _mps_available():
        raise ValueError(
            f"device={device!r} asked for, but MPS is not available here: use 'auto' or 'cpu'"
        )
    return dev


def available_devices() -> list[str]:
    """Devices that work here: "cpu", then each CUDA device, then "mps"."""
    out = ["cpu"]
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        out += ["cuda"] if n == 1 else [f"cuda:{i}" for i in range(n)]
    if _mps_available():
        out.append("mps")
    return out


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())
