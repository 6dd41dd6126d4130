"""The two element-wise steps of every ER/HIO/RAAR iteration, fused.

Between its two FFTs an iteration only (1) sets the spectrum's modulus to the measured one and
(2) mixes the projected object with the previous one outside the support.  Written as a chain of
torch operations each step reads and writes the whole batch five or six times, which costs several
FFTs; on the CPU each step is therefore one fused numba loop (one pass over memory, both cores),
and on a GPU (where element-wise passes are cheap) plain torch.  Both paths compute the same
thing; ``tests/test_cdi.py`` checks they agree.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

_TINY = np.float32(1e-24)  # |F|^2 floor: a zero spectrum pixel keeps a zero phase


@numba.njit(parallel=True, fastmath=True, cache=True)
def _set_modulus_cpu(spectrum: np.ndarray, magnitudes: np.ndarray) -> None:
    flat, target = spectrum.reshape(-1), magnitudes.reshape(-1)
    for i in numba.prange(flat.size):
        z = flat[i]
        flat[i] = z * (target[i] / np.sqrt(max(z.real * z.real + z.imag * z.imag, _TINY)))


@numba.njit(parallel=True, fastmath=True, cache=True)
def _set_modulus_where_measured_cpu(
    spectrum: np.ndarray, magnitudes: np.ndarray, measured: np.ndarray
) -> None:
    flat, target, valid = spectrum.reshape(-1), magnitudes.reshape(-1), measured.reshape(-1)
    for i in numba.prange(flat.size):
        if valid[i]:
            z = flat[i]
            flat[i] = z * (target[i] / np.sqrt(max(z.real * z.real + z.imag * z.imag, _TINY)))


@numba.njit(parallel=True, fastmath=True, cache=True)
def _mix_cpu(
    projected: np.ndarray, previous: np.ndarray, support: np.ndarray, a: float, b: float
) -> None:
    new, old, inside = projected.reshape(-1), previous.reshape(-1), support.reshape(-1)
    a32, b32 = np.float32(a), np.float32(b)
    for i in numba.prange(new.size):
        if not inside[i]:
            new[i] = a32 * old[i] + b32 * new[i]


def _dense(tensor: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view (a copy only when the tensor is strided)."""
    return tensor.contiguous().numpy()


def set_modulus_(
    spectrum: torch.Tensor, magnitudes: torch.Tensor, valid: torch.Tensor | None
) -> torch.Tensor:
    """In place: |spectrum| := magnitudes where ``valid`` (True = measured pixel; None = all),
    phase kept; unmeasured pixels are left free.  Returns ``spectrum``."""
    if spectrum.device.type == "cpu":
        if valid is None:
            _set_modulus_cpu(spectrum.numpy(), _dense(magnitudes))
        else:
            _set_modulus_where_measured_cpu(spectrum.numpy(), _dense(magnitudes), _dense(valid))
        return spectrum
    return _set_modulus_torch(spectrum, magnitudes, valid)


def mix_(
    projected: torch.Tensor, previous: torch.Tensor, support: torch.Tensor, a: float, b: float
) -> torch.Tensor:
    """The new object: ``projected`` inside the support, ``a * previous + b * projected`` outside
    (ER a = b = 0, HIO 1 and -beta, RAAR beta and 1 - 2 beta).  On the CPU it is written into
    ``projected``, which the caller must not need afterwards."""
    if projected.device.type == "cpu":
        _mix_cpu(projected.numpy(), _dense(previous), _dense(support), a, b)
        return projected
    return _mix_torch(projected, previous, support, a, b)


def _set_modulus_torch(
    spectrum: torch.Tensor, magnitudes: torch.Tensor, valid: torch.Tensor | None
) -> torch.Tensor:
    power = (spectrum.real.square() + spectrum.imag.square()).clamp_min_(float(_TINY))
    scale = torch.rsqrt(power).mul_(magnitudes)
    if valid is not None:
        scale = torch.where(valid, scale, 1.0)
    return spectrum.mul_(scale)


def _mix_torch(
    projected: torch.Tensor, previous: torch.Tensor, support: torch.Tensor, a: float, b: float
) -> torch.Tensor:
    return torch.where(support, projected, a * previous + b * projected)
