"""The element-wise halves of a ptychography batch: exit waves out of the object, updates back in.

A batch of frames sees ``(B, H, W)`` patches of the object at integer corners, lit by the probe
shifted by each frame's sub-pixel bin (a row of the probe bank).  On the CPU each step is one
numba loop over memory (each thread owns object rows: it sums a row in a buffer of its own,
clearing only what it touched, and adds the probe gradient into probe sums of its own, so
threads never write the same element); on a GPU they are torch indexing and
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
def _update_cpu(obj, numerator, denominator, corners, bank, bank_power, bins, change, alpha, peak):
    """One pass over ``change``: worker t of T (the first axis of the probe sums) owns every
    T-th object row.  For each frame row in its object rows it adds the probe gradient into its
    own probe sums (the object row is read before it is stepped) and the object step's sums into
    a row buffer of its own, then steps the row, clearing only the columns the frames touched."""
    n, h, w = change.shape
    workers = numerator.shape[0]
    keep, floor = np.float32(1.0 - alpha), np.float32(alpha * peak)
    tiny = np.float32(1e-30)
    top, bottom = corners[:, 0].min(), corners[:, 0].max() + h
    for worker in numba.prange(workers):
        row_sum = np.zeros(obj.shape[1], np.complex64)  # zero again after each row
        row_weight = np.zeros(obj.shape[1], np.float32)
        for row in range(top + worker, bottom, workers):
            lo, hi = obj.shape[1], 0  # the columns the batch touches in this row
            for b in range(n):
                i = row - corners[b, 0]
                if 0 <= i < h:
                    x, k = corners[b, 1], bins[b]
                    lo, hi = min(lo, x), max(hi, x + w)
                    wave, patch = change[b, i], obj[row, x : x + w]
                    total = numerator[worker, k, i]
                    for j in range(w):  # (one array written per loop: it vectorises)
                        total[j] += np.conj(patch[j]) * wave[j]
                    weight = denominator[worker, k, i]
                    for j in range(w):
                        weight[j] += patch[j].real * patch[j].real + patch[j].imag * patch[j].imag
                    probe, total = bank[k, i], row_sum[x : x + w]
                    for j in range(w):
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


def probe_sum_workers(device: torch.device) -> int:
    """How many copies of the probe sums an update needs: one per numba thread on the CPU (each
    adds into its own), one on a GPU (torch accumulates atomically)."""
    return numba.get_num_threads() if device.type == "cpu" else 1


def exit_waves(
    obj: torch.Tensor,
    corners: torch.Tensor,
    bank: torch.Tensor,
    bins: torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Exit waves: the object patches at ``corners`` (B, 2) times the probe of each frame's
    sub-pixel bin (a row of ``bank``).  On the CPU they are written into ``out`` when given (at
    least (B, H, W); reusing one buffer spares the page faults of a fresh one every batch)."""
    if not fused(obj):
        rows, cols = _index(corners, bank.shape[-2:])
        return obj[rows, cols] * bank[bins]
    shape = (len(corners), *bank.shape[-2:])
    waves = torch.empty(shape, dtype=obj.dtype) if out is None else out[: len(corners)]
    _exit_waves_cpu(obj.numpy(), corners.numpy(), bank.numpy(), bins.numpy(), waves.numpy())
    return waves


def update_(
    obj: torch.Tensor,
    probe_sums: tuple[torch.Tensor, torch.Tensor],
    corners: torch.Tensor,
    bank: torch.Tensor,
    bank_power: torch.Tensor,
    bins: torch.Tensor,
    change: torch.Tensor,
    alpha: float,
    peak: float,
) -> None:
    """The batch's updates from ``change``, each frame's exit-wave update (projected minus
    current).  First the probe gradient is added to ``probe_sums`` (numerator, denominator:
    (workers, bins, H, W), workers from :func:`probe_sum_workers`; their sum over workers is
    what counts): conj(patch) change and |patch|^2 per sub-pixel bin (cheaper to always add
    than to branch on).  Then the rPIE object step (Maiden et al. 2017) with overlaps summed:
    ``obj += sum conj(P) change / ((1 - alpha) sum |P|^2 + alpha peak)``, ``peak`` = max |P|^2
    (given, as it changes only with the probe).  On a GPU the overlapping patches are summed
    by ``index_add_`` on the flattened object (atomic adds); ``index_put_`` with accumulate
    sorts the indices first, which made the GPU's ePIE slower than 16 CPU cores."""
    numerator, denominator = probe_sums
    if fused(obj):
        _update_cpu(
            obj.numpy(), numerator.numpy(), denominator.numpy(), corners.numpy(), bank.numpy(),
            bank_power.numpy(), bins.numpy(), change.numpy(), alpha, peak,
        )  # fmt: skip
        return
    rows, cols = _index(corners, change.shape[-2:])
    patches = obj[rows, cols]
    numerator[0].index_add_(0, bins, patches.conj() * change)
    denominator[0].index_add_(0, bins, patches.real.square() + patches.imag.square())
    flat = (rows * obj.shape[-1] + cols).expand(change.shape).reshape(-1)
    object_sum = torch.zeros_like(obj)
    object_sum.view(-1).index_add_(0, flat, (bank[bins].conj() * change).reshape(-1))
    object_weight = torch.zeros(obj.shape, device=obj.device)
    object_weight.view(-1).index_add_(0, flat, bank_power[bins].reshape(-1))
    step = object_sum / ((1 - alpha) * object_weight + alpha * peak).clamp_min(1e-30)
    obj += torch.where(object_weight > 0, step, 0)


def _index(corners: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = corners[:, 0, None, None] + torch.arange(shape[0], device=corners.device)[:, None]
    cols = corners[:, 1, None, None] + torch.arange(shape[1], device=corners.device)[None, :]
    return rows, cols
