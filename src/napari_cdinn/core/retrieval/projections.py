"""The two element-wise steps of every ER/HIO/RAAR iteration, fused.

Between its two FFTs an iteration only (1) sets the spectrum's modulus to the measured one and
(2) mixes the projected object with the previous one outside the support.  Written as a chain of
torch operations each step reads and writes the whole batch five or six times, which costs several
FFTs; on the CPU each step is therefore one fused numba loop (one pass over memory, both cores),
and on a GPU (where element-wise passes are cheap) plain torch.  Both paths compute the same
thing; ``tests/test_cdi.py`` checks they agree (by switching ``fused`` off).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

_TINY = np.float32(1e-24)  # |F|^2 floor: a zero spectrum pixel keeps a zero phase


@numba.njit(parallel=True, fastmath=True, cache=True)
def _set_modulus_cpu(spectrum, magnitudes, frames, subtract, errors) -> None:
    """Frame by frame (B, P): ``spectrum[b]`` in place from ``magnitudes[frames[b]]``; each
    frame's squared misfit into ``errors[b]`` (a float32 sum per frame: the loop vectorises)."""
    minus = np.float32(subtract)
    for b in numba.prange(spectrum.shape[0]):
        z, target = spectrum[b], magnitudes[frames[b]]
        error = np.float32(0)
        for i in range(z.size):
            modulus = np.sqrt(max(z[i].real * z[i].real + z[i].imag * z[i].imag, _TINY))
            error += (modulus - target[i]) ** 2
            z[i] = z[i] * (target[i] / modulus - minus)
        errors[b] = error


@numba.njit(parallel=True, fastmath=True, cache=True)
def _set_modulus_where_measured_cpu(spectrum, magnitudes, frames, valid, subtract, errors) -> None:
    """The same where ``valid`` (one mask for all frames, (1, P), or one per frame of
    ``magnitudes``, indexed like them) holds; unmeasured pixels keep their value (or become 0,
    the change, with ``subtract`` 1).  Branch-free, so that it vectorises too."""
    minus = np.float32(subtract)
    for b in numba.prange(spectrum.shape[0]):
        z, target = spectrum[b], magnitudes[frames[b]]
        mask = valid[frames[b]] if valid.shape[0] > 1 else valid[0]
        error = np.float32(0)
        for i in range(z.size):
            measured = np.float32(mask[i])
            modulus = np.sqrt(max(z[i].real * z[i].real + z[i].imag * z[i].imag, _TINY))
            error += measured * (modulus - target[i]) ** 2
            z[i] = z[i] * (measured * (target[i] / modulus - 1) + 1 - minus)
        errors[b] = error


@numba.njit(parallel=True, fastmath=True, cache=True)
def _mix_cpu(
    projected: np.ndarray, previous: np.ndarray, support: np.ndarray, a: float, b: float
) -> None:
    new, old, inside = projected.reshape(-1), previous.reshape(-1), support.reshape(-1)
    a32, b32 = np.float32(a), np.float32(b)
    for i in numba.prange(new.size):
        if not inside[i]:
            new[i] = a32 * old[i] + b32 * new[i]


def intensity(field: torch.Tensor) -> torch.Tensor:
    """|field|^2 (torch's complex ``abs`` is several times slower on the CPU)."""
    return field.real.square() + field.imag.square()


def fused(tensor: torch.Tensor) -> bool:
    """Whether the numba loops serve this tensor (CPU) rather than torch (GPU)."""
    return tensor.device.type == "cpu"


def _dense(tensor: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view (a copy only when the tensor is strided)."""
    return tensor.contiguous().numpy()


def set_modulus_(
    spectrum: torch.Tensor,
    magnitudes: torch.Tensor,
    valid: torch.Tensor | None,
    with_error: bool = False,
    correction: bool = False,
    frames: torch.Tensor | None = None,
) -> float | torch.Tensor | None:
    """In place: |spectrum| := magnitudes where ``valid`` (True = measured pixel; None = all;
    one (H, W) mask or one per frame of ``magnitudes``), phase kept; unmeasured pixels are left
    free.  With ``frames``, frame b's magnitudes (and mask) are ``magnitudes[frames[b]]`` (a
    batch of a larger stack, without copying it out).  With ``correction`` the spectrum becomes
    the change instead (new minus old, zero where unmeasured), whose inverse FFT is the
    exit-wave update ptychography needs.  With ``with_error``, returns the sum over measured
    pixels of (|spectrum| - magnitude)^2 before the change: a float on the CPU, where it is
    free, a 0-d tensor on a GPU (reading it there would wait for the GPU at every batch)."""
    subtract = 1.0 if correction else 0.0
    if fused(spectrum):
        n, h, w = spectrum.shape
        frames = torch.arange(n) if frames is None else frames
        arrays = (spectrum.view(n, h * w).numpy(), _dense(magnitudes).reshape(-1, h * w))
        errors = np.empty(n, np.float32)
        if valid is None:
            _set_modulus_cpu(*arrays, frames.numpy(), subtract, errors)
        else:
            mask = _dense(valid).reshape(-1, h * w)
            _set_modulus_where_measured_cpu(*arrays, frames.numpy(), mask, subtract, errors)
        return float(errors.sum(dtype=np.float64)) if with_error else None
    if frames is not None:
        magnitudes = magnitudes[frames]
        if valid is not None and valid.dim() == 3 and len(valid) > 1:
            valid = valid[frames]
    modulus = intensity(spectrum).clamp_min_(float(_TINY)).sqrt_()
    error = None
    if with_error:
        misfit = (modulus - magnitudes).square()
        measured = misfit if valid is None else torch.where(valid, misfit, 0.0)
        error = measured.sum(dtype=torch.float64)  # stays on the device: no synchronisation
    scale = magnitudes / modulus
    if valid is not None:
        scale = torch.where(valid, scale, 1.0)
    spectrum.mul_(scale - subtract)
    return error


def mix_(
    projected: torch.Tensor, previous: torch.Tensor, support: torch.Tensor, a: float, b: float
) -> torch.Tensor:
    """The new object: ``projected`` inside the support, ``a * previous + b * projected`` outside
    (ER a = b = 0, HIO 1 and -beta, RAAR beta and 1 - 2 beta).  On the CPU it is written into
    ``projected``, which the caller must not need afterwards."""
    if fused(projected):
        _mix_cpu(projected.numpy(), _dense(previous), _dense(support), a, b)
        return projected
    return torch.where(support, projected, a * previous + b * projected)
