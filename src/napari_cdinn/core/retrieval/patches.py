"""The element-wise halves of a ptychography batch: exit waves out of the object, updates back in.

A batch of frames sees ``(B, H, W)`` patches of the object at integer corners, lit by the probe
shifted by each frame's sub-pixel bin (a row of the probe bank).  On the CPU each step is one
numba loop over memory (adding into the object is split over object rows, into the probe bank over
pixels, so threads never write the same element); on a GPU they are torch indexing and
``index_put_``/``index_add_`` with accumulation.  ``tests/test_ptycho.py`` checks both agree.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from .projections import fused


@numba.njit(parallel=True, fastmath=True, cache=True)
def _exit_waves_cpu(obj, corners, bank, bins, waves) -> None:
    h, w = waves.shape[1:]
    for b in numba.prange(waves.shape[0]):
        y, x, probe = corners[b, 0], corners[b, 1], bank[bins[b]]
        for i in range(h):
            row = obj[y + i, x : x + w]
            for j in range(w):
                waves[b, i, j] = row[j] * probe[i, j]


@numba.njit(parallel=True, fastmath=True, cache=True)
def _update_object_cpu(obj, corners, bank, bank_power, bins, change, alpha, peak) -> None:
    n, h, w = change.shape
    keep, floor = np.float32(1.0 - alpha), np.float32(alpha * peak)
    for row in numba.prange(obj.shape[0]):  # each thread owns whole object rows
        numerator = np.zeros(obj.shape[1], np.complex64)
        denominator = np.zeros(obj.shape[1], np.float32)
        touched = False
        for b in range(n):
            i = row - corners[b, 0]
            if 0 <= i < h:
                touched = True
                x, k = corners[b, 1], bins[b]
                for j in range(w):
                    numerator[x + j] += np.conj(bank[k, i, j]) * change[b, i, j]
                    denominator[x + j] += bank_power[k, i, j]
        if touched:
            for col in range(obj.shape[1]):
                if denominator[col] > 0:
                    obj[row, col] += numerator[col] / (keep * denominator[col] + floor)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _add_probe_gradient_cpu(numerator, denominator, obj, corners, bins, change) -> None:
    n, h, w = change.shape
    for i in numba.prange(h):  # each thread owns whole probe rows
        for b in range(n):
            k, row = bins[b], obj[corners[b, 0] + i, corners[b, 1] : corners[b, 1] + w]
            for j in range(w):
                value = row[j]
                numerator[k, i, j] += np.conj(value) * change[b, i, j]
                denominator[k, i, j] += value.real * value.real + value.imag * value.imag


def exit_waves(
    obj: torch.Tensor, corners: torch.Tensor, bank: torch.Tensor, bins: torch.Tensor
) -> torch.Tensor:
    """Exit waves: the object patches at ``corners`` (B, 2) times the probe of each frame's
    sub-pixel bin (a row of ``bank``)."""
    if not fused(obj):
        rows, cols = _index(corners, bank.shape[-2:])
        return obj[rows, cols] * bank[bins]
    waves = torch.empty((len(corners), *bank.shape[-2:]), dtype=obj.dtype)
    _exit_waves_cpu(obj.numpy(), corners.numpy(), bank.numpy(), bins.numpy(), waves.numpy())
    return waves


def update_object_(
    obj: torch.Tensor,
    corners: torch.Tensor,
    bank: torch.Tensor,
    bank_power: torch.Tensor,
    bins: torch.Tensor,
    change: torch.Tensor,
    alpha: float,
    peak: float,
) -> None:
    """The batch's rPIE object step (Maiden et al. 2017) with overlaps summed:
    ``obj += sum conj(P) change / ((1 - alpha) sum |P|^2 + alpha peak)``, where ``change`` is
    each frame's exit-wave update (projected minus current) and ``peak`` = max |P|^2 (given, as
    it changes only with the probe)."""
    if fused(obj):
        _update_object_cpu(
            obj.numpy(), corners.numpy(), bank.numpy(), bank_power.numpy(), bins.numpy(),
            change.numpy(), alpha, peak,
        )  # fmt: skip
        return
    rows, cols = _index(corners, change.shape[-2:])
    rows, cols = rows.expand(change.shape), cols.expand(change.shape)
    numerator = torch.zeros_like(obj).index_put_(
        (rows, cols), bank[bins].conj() * change, accumulate=True
    )
    denominator = torch.zeros(obj.shape, device=obj.device).index_put_(
        (rows, cols), bank_power[bins], accumulate=True
    )
    step = numerator / ((1 - alpha) * denominator + alpha * peak)
    obj += torch.where(denominator > 0, step, 0)


def add_probe_gradient_(
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    obj: torch.Tensor,
    corners: torch.Tensor,
    bins: torch.Tensor,
    change: torch.Tensor,
) -> None:
    """Accumulate conj(patch) change and |patch|^2 per sub-pixel bin (probe update);
    call it before the object step, which changes the patches."""
    if not fused(obj):
        rows, cols = _index(corners, change.shape[-2:])
        patches = obj[rows, cols]
        numerator.index_add_(0, bins, patches.conj() * change)
        denominator.index_add_(0, bins, patches.real.square() + patches.imag.square())
        return
    _add_probe_gradient_cpu(
        numerator.numpy(), denominator.numpy(), obj.numpy(), corners.numpy(), bins.numpy(),
        change.numpy(),
    )  # fmt: skip


def _index(corners: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = corners[:, 0, None, None] + torch.arange(shape[0], device=corners.device)[:, None]
    cols = corners[:, 1, None, None] + torch.arange(shape[1], device=corners.device)[None, :]
    return rows, cols
