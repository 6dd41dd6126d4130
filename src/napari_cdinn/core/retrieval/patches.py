"""The element-wise halves of a ptychography batch: exit waves out of the object, updates back in.

A batch of frames sees ``(B, H, W)`` patches of the object at integer corners, lit by the probe
shifted by each frame's sub-pixel bin (a row of the probe bank).  On the CPU each step is one
numba loop over memory (adding into the object is split over object rows, each thread summing a
row in a buffer of its own and clearing only what it touched; into the probe bank over probe
rows, so threads never write the same element); on a GPU they are torch indexing and
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
def _update_cpu(obj, probe_sums, corners, bank, bank_power, bins, change, alpha, peak) -> None:
    """Probe gradient (if ``probe_sums`` is not empty), then the object step, in one call: the
    first parallel loop runs over probe rows, the second over object rows."""
    n, h, w = change.shape
    numerator, denominator = probe_sums
    for i in numba.prange(h if len(numerator) else 0):  # each thread owns whole probe rows
        for b in range(n):
            k, x = bins[b], corners[b, 1]
            patch, wave = obj[corners[b, 0] + i, x : x + w], change[b, i]
            total, weight = numerator[k, i], denominator[k, i]
            for j in range(w):
                value = patch[j]
                total[j] += np.conj(value) * wave[j]
                weight[j] += value.real * value.real + value.imag * value.imag
    keep, floor = np.float32(1.0 - alpha), np.float32(alpha * peak)
    tiny = np.float32(1e-30)
    top, bottom = corners[:, 0].min(), corners[:, 0].max() + h
    threads = numba.get_num_threads()
    for thread in numba.prange(threads):  # each thread owns every threads-th object row
        row_sum = np.zeros(obj.shape[1], np.complex64)  # zero again after each row
        row_weight = np.zeros(obj.shape[1], np.float32)
        for row in range(top + thread, bottom, threads):
            lo, hi = obj.shape[1], 0  # the columns the batch touches in this row
            for b in range(n):
                i = row - corners[b, 0]
                if 0 <= i < h:
                    x, k = corners[b, 1], bins[b]
                    lo, hi = min(lo, x), max(hi, x + w)
                    probe, wave, total = bank[k, i], change[b, i], row_sum[x : x + w]
                    for j in range(w):  # (one array written per loop: it vectorises)
                        total[j] += np.conj(probe[j]) * wave[j]
                    power, weight = bank_power[k, i], row_weight[x : x + w]
                    for j in range(w):
                        weight[j] += power[j]
            if lo < hi:
                target, total, weight = obj[row, lo:hi], row_sum[lo:hi], row_weight[lo:hi]
                for j in range(hi - lo):
                    target[j] += total[j] / max(keep * weight[j] + floor, tiny)
                total[:] = 0
                weight[:] = 0


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


def update_(
    obj: torch.Tensor,
    probe_sums: tuple[torch.Tensor, torch.Tensor] | None,
    corners: torch.Tensor,
    bank: torch.Tensor,
    bank_power: torch.Tensor,
    bins: torch.Tensor,
    change: torch.Tensor,
    alpha: float,
    peak: float,
) -> None:
    """The batch's updates from ``change``, each frame's exit-wave update (projected minus
    current).  With ``probe_sums`` (numerator, denominator per sub-pixel bin), first add the
    probe gradient to them: conj(patch) change and |patch|^2.  Then the rPIE object step
    (Maiden et al. 2017) with overlaps summed:
    ``obj += sum conj(P) change / ((1 - alpha) sum |P|^2 + alpha peak)``, ``peak`` = max |P|^2
    (given, as it changes only with the probe)."""
    if fused(obj):
        empty = torch.empty((0, 0, 0))
        numerator, denominator = probe_sums or (empty.to(torch.complex64), empty)
        _update_cpu(
            obj.numpy(), (numerator.numpy(), denominator.numpy()), corners.numpy(), bank.numpy(),
            bank_power.numpy(), bins.numpy(), change.numpy(), alpha, peak,
        )  # fmt: skip
        return
    rows, cols = _index(corners, change.shape[-2:])
    if probe_sums is not None:
        patches = obj[rows, cols]
        probe_sums[0].index_add_(0, bins, patches.conj() * change)
        probe_sums[1].index_add_(0, bins, patches.real.square() + patches.imag.square())
    rows, cols = rows.expand(change.shape), cols.expand(change.shape)
    numerator = torch.zeros_like(obj).index_put_(
        (rows, cols), bank[bins].conj() * change, accumulate=True
    )
    denominator = torch.zeros(obj.shape, device=obj.device).index_put_(
        (rows, cols), bank_power[bins], accumulate=True
    )
    step = numerator / ((1 - alpha) * denominator + alpha * peak).clamp_min(1e-30)
    obj += torch.where(denominator > 0, step, 0)


def _index(corners: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = corners[:, 0, None, None] + torch.arange(shape[0], device=corners.device)[:, None]
    cols = corners[:, 1, None, None] + torch.arange(shape[1], device=corners.device)[None, :]
    return rows, cols
