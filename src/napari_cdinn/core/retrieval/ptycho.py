"""Ptychography by mini-batch rPIE (ePIE with a regularised step) with probe update, in torch.

Each epoch visits every scan position once, in random batches: the batch's exit waves (probe
times object patch) are propagated to the detector (orthonormal FFT), given the measured modulus
(unmeasured pixels left free) and propagated back; the differences update the object (summed
over overlapping patches, normalised by their summed probe intensity, Maiden's rPIE step) at once
for the batch, and, from ``probe_update_from`` on, the probe once per epoch.

Sub-pixel positions: each frame's probe is the current probe shifted by the fractional part of
its position (Fourier shift), quantised to 1/``SUBPIXEL`` pixel; the bank of shifted probes is
rebuilt whenever the probe changes.  Positions are (y, x) object pixels of the scan's own frame;
:class:`ObjectGrid` places them on the reconstructed array (``origin`` is where pixel [0, 0] is).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.spatial import cKDTree

from ..data import PtychoScan
from ..device import resolve_device
from ..errors import InputError, InputWarning
from ..io.checks import check_probe, frames_in_memory
from .patches import exit_waves, probe_sum_workers, update_
from .projections import intensity, set_modulus_

SUBPIXEL = 4  # probe shifts are quantised to 1/4 pixel (at most 1/8 off: same SSIM as 1/8 steps)


@dataclass
class EpieRecipe:
    """Parameters of the reconstruction; the defaults suit 50-80 % overlap."""

    epochs: int = 100
    batch_size: int = 64  # at most 1/16 of the scan, so an epoch makes at least 16 object steps
    object_alpha: float = 0.05  # rPIE: 1 is ePIE's max|P|^2 step, small values step further
    probe_alpha: float = 0.2
    probe_update_from: int | None = 2  # first epoch that updates the probe; None keeps it fixed
    seed: int = 0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ObjectGrid:
    """The reconstructed object's array: ``shape``, and ``origin`` (y, x), the scan coordinate of
    its pixel [0, 0]; a frame at position p covers pixels p - origin ... + frame."""

    shape: tuple[int, int]
    origin: tuple[float, float]

    @classmethod
    def around(cls, positions: np.ndarray, frame: tuple[int, int], margin: int = 2) -> ObjectGrid:
        low = np.floor(positions.min(axis=0)) - margin
        high = np.ceil(positions.max(axis=0)) + np.asarray(frame) + margin + 1
        shape = tuple(int(v) for v in high - low)
        return cls((shape[0], shape[1]), (float(low[0]), float(low[1])))

    def corners(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integer top-left corners and sub-pixel shift bins (0 .. SUBPIXEL**2 - 1)."""
        local = np.asarray(positions, float) - np.asarray(self.origin)
        steps = np.round(local * SUBPIXEL).astype(np.int64)
        corners = steps // SUBPIXEL
        fraction = steps - corners * SUBPIXEL
        return corners, fraction[:, 0] * SUBPIXEL + fraction[:, 1]


def _shift_ramps(shape: tuple[int, int], device: torch.device) -> torch.Tensor:
    """Fourier phase ramps moving an (H, W) array by each of the SUBPIXEL**2 sub-pixel shifts."""
    fy = torch.fft.fftfreq(shape[0], device=device, dtype=torch.float64)
    fx = torch.fft.fftfreq(shape[1], device=device, dtype=torch.float64)
    shifts = torch.arange(SUBPIXEL, device=device, dtype=torch.float64) / SUBPIXEL
    phase_y = shifts[:, None, None, None] * fy[None, None, :, None]
    phase_x = shifts[None, :, None, None] * fx[None, None, None, :]
    ramps = torch.exp(-2j * math.pi * (phase_y + phase_x)).to(torch.complex64)
    return ramps.reshape(SUBPIXEL * SUBPIXEL, *shape)


def _bank_and_power(
    probe: torch.Tensor, ramps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The probe moved by every sub-pixel shift (SUBPIXEL**2, H, W), its intensity and the
    intensity's maximum (rPIE's step floor)."""
    bank = torch.fft.ifft2(torch.fft.fft2(probe) * ramps)
    power = intensity(bank)
    return bank, power, float(power.max())


def initial_probe(intensities: np.ndarray) -> np.ndarray:
    """A probe guess from the data alone: the back-propagated mean measured amplitude."""
    amplitude = np.sqrt(np.maximum(intensities, 0)).mean(axis=0)
    guess = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(amplitude), norm="ortho"))
    return guess.astype(np.complex64)


def checked_scan(
    scan: PtychoScan, overlap: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """The scan's frames in memory, its positions, its mask and each frame's measured counts
    (float64, summed where the mask measures), refusing what ePIE (or, with ``overlap``
    False, the network, which inverts each pattern alone) cannot use; NaN/Inf pixels of a
    lazily read stack (repaired only now that it is in memory) masked."""
    source = scan.meta.source
    intensities, mask = frames_in_memory(scan.stack)
    intensities = np.asarray(intensities, np.float32)
    positions = np.asarray(scan.positions, float)
    if intensities.ndim != 3 or len(intensities) == 0:
        raise InputError(source, "empty scan: no diffraction patterns")
    if positions.shape != (len(intensities), 2):
        raise InputError(
            source,
            f"{len(positions)} scan positions for {len(intensities)} patterns; they must match",
        )
    if not np.isfinite(positions).all():
        raise InputError(source, "scan positions hold NaN or infinite values")
    if overlap and len(intensities) < 2:
        raise InputError(source, "a scan of one position has no overlap to reconstruct from")
    with np.errstate(over="ignore"):  # an overflow is refused just below
        counts = intensities.sum(axis=(-2, -1), where=True if mask is None else mask)
    if not np.isfinite(counts).all():  # in single precision, as ePIE computes
        raise InputError(
            source,
            f"intensities up to {float(np.nanmax(intensities)):.3g}: a frame's counts overflow "
            "single precision; scale the data down",
        )
    if not counts.sum() > 0:
        raise InputError(source, "the scan holds no signal (all zero where measured)")
    check_probe(scan.probe, intensities.shape, source)
    check_span(positions, intensities.shape[-2:], source, overlap)
    if overlap:
        warn_without_overlap(positions, intensities.shape[-2:], source)
    return intensities, positions, mask, counts.astype(np.float64)


# An object array both this many times the area its frames can cover and of more than
# MAX_UNLIT_PIXELS is refused: a stray position or positions in another unit would make an
# array of gigabytes, mostly never lit (real scans, sparse or in a line, stay far below).
MAX_SPAN_RATIO = 4
MAX_UNLIT_PIXELS = 2**24  # 128 MB of complex64


def check_span(
    positions: np.ndarray, frame: tuple[int, int], source: object, overlap: bool = True
) -> None:
    """Refuse scan positions whose object array would dwarf what the frames see, or, where
    the overlaps are needed (``overlap``: ePIE), that all lie within one pixel."""
    span = positions.max(axis=0) - positions.min(axis=0)
    if overlap and len(positions) > 1 and (span < 1).all():
        raise InputError(
            source,
            f"its {len(positions)} scan positions all lie within one object pixel "
            f"(span {span[0]:.3g} x {span[1]:.3g}): no scan to reconstruct from (positions in "
            "another unit, metres read as pixels?)",
        )
    height, width = (float(s) + int(f) for s, f in zip(span, frame, strict=True))
    covered = len(positions) * int(frame[0]) * int(frame[1])
    if height * width > max(MAX_SPAN_RATIO * covered, MAX_UNLIT_PIXELS):
        raise InputError(
            source,
            f"its {len(positions)} scan positions span {span[0]:.4g} x {span[1]:.4g} object "
            f"pixels, so the object array would be {height:.4g} x {width:.4g} pixels, over "
            f"{MAX_SPAN_RATIO} times the area {len(positions)} frames of {frame[0]} x "
            f"{frame[1]} pixels can cover and over {MAX_UNLIT_PIXELS:,} pixels: a stray "
            "position, or positions in another unit "
            "(CXI translations are metres, converted to pixels with the detector geometry)",
        )


def warn_without_overlap(positions: np.ndarray, frame: tuple[int, int], source: object) -> None:
    """Warn when the scan's positions lie a frame or more from their nearest neighbours: the
    frames then do not overlap, and ePIE has nothing to join its patches with (the network,
    which inverts each pattern alone, needs no overlap)."""
    if len(positions) < 2:
        return
    spacing = float(np.median(cKDTree(positions).query(positions, k=2)[0][:, 1]))
    if spacing >= min(frame):
        warnings.warn(
            InputWarning(
                f"{source}: its scan positions lie a median {spacing:.4g} object pixels from "
                f"their nearest neighbours, no closer than a frame ({min(frame)} pixels): the "
                "frames do not overlap, so ePIE cannot join them into one object (the network "
                "inverts each pattern alone)"
            ),
            stacklevel=3,
        )


def run_epie(
    scan: PtychoScan,
    recipe: EpieRecipe | None = None,
    device: str = "auto",
    preview: Callable[[np.ndarray, np.ndarray, int], None] | None = None,
    start: np.ndarray | None = None,
) -> Iterator[tuple[int, int]]:
    """Generator: reconstruct object and probe, yielding (positions done, total) progress.

    ``preview(object, probe, epoch)`` is called after each epoch (for live display).  ``start``:
    the first object guess on the scan's grid (e.g. the network's), instead of a flat one; its
    rms amplitude over the scanned area is set to 1, the flat guess's, so the probe's scaling
    to the measured counts holds for both.  Returns
    (through StopIteration) ``(object, probe, grid, errors)``: the complex object on ``grid``,
    the probe, and the mean Fourier error per epoch.
    """
    recipe = recipe or EpieRecipe()
    intensities, positions, mask, counts = checked_scan(scan)
    torch_device = resolve_device(device)
    n, h, w = intensities.shape
    grid = ObjectGrid.around(positions, (h, w))
    corner_array, bins_array = grid.corners(positions)
    corners = torch.as_tensor(corner_array, device=torch_device)
    bins = torch.as_tensor(bins_array, device=torch_device)
    magnitudes = torch.fft.ifftshift(
        torch.as_tensor(np.sqrt(np.maximum(intensities, 0)), device=torch_device), dim=(-2, -1)
    )
    power = float(np.mean(counts))
    valid = None  # the detector mask (one, or one per frame) in FFT order
    if mask is not None:
        valid = torch.fft.ifftshift(torch.as_tensor(mask, device=torch_device), dim=(-2, -1))
        valid = valid.contiguous()

    guess = scan.probe if scan.probe is not None else initial_probe(intensities)
    guess = np.asarray(guess, np.complex64)
    if guess.ndim == 3:
        guess = guess[0]  # the dominant mode of a multi-mode probe
    probe = torch.tensor(guess, device=torch_device)  # a copy: the scan's probe stays as read
    probe *= math.sqrt(power / max(float(intensity(probe).sum()), 1e-30))
    obj = torch.as_tensor(_starting_object(start, grid, positions, (h, w)), device=torch_device)
    ramps = _shift_ramps((h, w), torch_device)
    bank, bank_power, peak = _bank_and_power(probe, ramps)
    centre = _spectrum_centre(intensity(torch.fft.fft2(probe)))  # kept: see _without_phase_ramp
    generator = torch.Generator().manual_seed(recipe.seed)
    errors: list[float] = []
    total = recipe.epochs * n
    batch_size = max(1, min(recipe.batch_size, n // 16))
    wave_buffer = torch.empty((batch_size, h, w), dtype=torch.complex64, device=torch_device)
    for epoch in range(recipe.epochs):
        update_probe = recipe.probe_update_from is not None and epoch >= recipe.probe_update_from
        shape = (probe_sum_workers(torch_device), *bank.shape)
        probe_sums = (
            torch.zeros(shape, dtype=bank.dtype, device=torch_device),
            torch.zeros(shape, device=torch_device),
        )
        error = 0.0
        done = epoch * n
        order = torch.randperm(n, generator=generator).to(torch_device)
        for batch in order.split(batch_size):
            at, shift = corners[batch], bins[batch]
            waves = exit_waves(obj, at, bank, shift, out=wave_buffer)
            spectrum = torch.fft.fft2(waves, norm="ortho")
            error += set_modulus_(
                spectrum, magnitudes, valid, with_error=True, correction=True, frames=batch
            )
            change = torch.fft.ifft2(spectrum, norm="ortho")  # projected minus current exit wave
            update_(obj, probe_sums, at, bank, bank_power, shift, change, recipe.object_alpha, peak)
            done += len(batch)
            yield done, total
        errors.append(float(error) / (power * n))  # a GPU's sum read once per epoch
        if update_probe:
            probe = _updated_probe(probe, *probe_sums, ramps, recipe)
            probe, obj = _without_phase_ramp(probe, obj, centre)
            bank, bank_power, peak = _bank_and_power(probe, ramps)
        if preview is not None:
            # copies: on the CPU .numpy() shares the tensors, which the next epoch changes
            preview(obj.cpu().numpy().copy(), probe.cpu().numpy().copy(), epoch + 1)
        yield (epoch + 1) * n, total
    whole_pixel_positions = corner_array + np.asarray(grid.origin)  # where the frames were used
    seen = scanned_region(whole_pixel_positions, (h, w), grid.origin, grid.shape)
    probe, obj = _flattened(probe, obj, seen)
    return obj.cpu().numpy(), probe.cpu().numpy(), grid, errors


def _starting_object(
    start: np.ndarray | None, grid: ObjectGrid, positions: np.ndarray, frame: tuple[int, int]
) -> np.ndarray:
    """The first object guess: flat, or ``start`` scaled to rms amplitude 1 where scanned
    (non-finite pixels and a shape off the grid refused)."""
    if start is None:
        return np.ones(grid.shape, np.complex64)
    start = np.asarray(start, np.complex64)
    if start.shape != grid.shape:
        raise ValueError(f"the starting object is {start.shape}, the scan's grid {grid.shape}")
    if not np.isfinite(start).all():
        raise ValueError("the starting object has non-finite (NaN or infinite) pixels")
    seen = scanned_region(positions, frame, grid.origin, grid.shape)
    rms = float(np.sqrt(np.mean(np.abs(start[seen]) ** 2)))
    return start / rms if rms > 0 else np.ones(grid.shape, np.complex64)


def _updated_probe(
    probe: torch.Tensor,
    numerator: torch.Tensor,
    denominator: torch.Tensor,
    ramps: torch.Tensor,
    recipe: EpieRecipe,
) -> torch.Tensor:
    """One rPIE probe step from the epoch's gradients (summed over the workers that added
    them), each moved back by its sub-pixel shift."""
    numerator, denominator = numerator.sum(dim=0), denominator.sum(dim=0)
    used = denominator.sum(dim=(-2, -1)) > 0
    back = torch.fft.ifft2(torch.fft.fft2(numerator[used]) * ramps[used].conj()).sum(dim=0)
    weight = denominator[used].sum(dim=0)
    peak = float(weight.max())
    return probe + back / ((1 - recipe.probe_alpha) * weight + recipe.probe_alpha * peak)


def _spectrum_centre(power: torch.Tensor) -> torch.Tensor:
    """Circular centre of mass (y, x) of an FFT-ordered power spectrum, in frequency indices."""
    centre = []
    for axis, size in ((-2, power.shape[-2]), (-1, power.shape[-1])):
        index = torch.arange(size, device=power.device, dtype=torch.float64)
        profile = power.sum(dim=-1 if axis == -2 else -2).to(torch.float64)
        moment = (profile * torch.exp(2j * math.pi * index / size)).sum()
        centre.append(torch.angle(moment) * size / (2 * math.pi))
    return torch.stack(centre)


def _without_phase_ramp(
    probe: torch.Tensor, obj: torch.Tensor, centre: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resolve ptychography's linear-phase ambiguity while iterating: the ramp that brings the
    probe's spectrum back to where the initial probe's was moves from the probe to the object,
    so the object is not left with a drifting phase slope."""
    size = torch.tensor(probe.shape, device=probe.device, dtype=torch.float64)
    offset = _spectrum_centre(intensity(torch.fft.fft2(probe))) - centre
    cycles = (torch.remainder(offset + size / 2, size) - size / 2) / size  # per pixel
    return _ramp_moved(probe, obj, (-2 * math.pi * cycles).tolist())


def _flattened(
    probe: torch.Tensor, obj: torch.Tensor, seen: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Move the object's mean linear phase ramp (amplitude-weighted phase step between
    neighbours, over the ``seen`` pixels) into the probe: the data cannot tell them apart, and a
    flat object is what one expects to look at."""
    seen = torch.as_tensor(seen, device=obj.device)
    both_y, both_x = seen[1:] & seen[:-1], seen[:, 1:] & seen[:, :-1]
    steps = [
        float(torch.angle((obj[1:] * obj[:-1].conj())[both_y].sum())),
        float(torch.angle((obj[:, 1:] * obj[:, :-1].conj())[both_x].sum())),
    ]
    return _ramp_moved(probe, obj, steps)


def _ramp_moved(
    probe: torch.Tensor, obj: torch.Tensor, slope: list[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Object times e^(-i slope.r), probe times e^(+i slope.r) (slope (y, x) in radians per
    pixel): every exit wave only gains a constant phase, so the data are unchanged."""

    def ramp(shape: tuple[int, ...], sign: float) -> torch.Tensor:  # separable: two exps
        y = torch.arange(shape[0], device=obj.device, dtype=torch.float64)[:, None]
        x = torch.arange(shape[1], device=obj.device, dtype=torch.float64)[None, :]
        along = [torch.exp(sign * 1j * slope[0] * y), torch.exp(sign * 1j * slope[1] * x)]
        return (along[0] * along[1]).to(torch.complex64)

    return probe * ramp(probe.shape, 1.0), obj * ramp(obj.shape, -1.0)


def scanned_region(
    positions: np.ndarray,
    frame: int | tuple[int, int],
    origin: tuple[float, float],
    shape: tuple[int, int],
) -> np.ndarray:
    """Pixels of a result grid inside the central half of some frame (``frame``: its side, or
    its (height, width)): where the scan measured the object well (the probe's outskirts see
    too little to judge a reconstruction)."""
    height, width = (frame, frame) if isinstance(frame, int) else frame
    region = np.zeros(shape, bool)
    corners = np.round(np.asarray(positions) - np.asarray(origin)).astype(int)
    corners += (height // 4, width // 4)
    for y, x in corners:
        region[max(y, 0) : y + height // 2, max(x, 0) : x + width // 2] = True
    return region
