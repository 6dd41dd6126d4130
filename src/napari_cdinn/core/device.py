"""Choose the torch device at run time: CUDA when present and wanted, the CPU otherwise."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .errors import CdinnError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(choice: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a clear error, not a crash.
    (torch imported here, not with the module: the docks list the choices without it.)"""
    import torch

    choice = (choice or "auto").lower()
    if choice not in DEVICE_CHOICES:
        raise CdinnError(f"unknown device '{choice}'; choose one of {', '.join(DEVICE_CHOICES)}")
    if choice == "cuda" and not torch.cuda.is_available():
        raise CdinnError("device 'cuda' was asked for but no CUDA GPU is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)
