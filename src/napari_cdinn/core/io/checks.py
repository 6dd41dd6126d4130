"""Shape and value checks shared by every reader, so each bad input gets the same clear message."""

from __future__ import annotations

import warnings
from collections.abc import Generator
from dataclasses import replace
from typing import Any

import dask.array as da
import numpy as np

from ..errors import InputError, InputWarning


def check_stack_shape(
    shape: tuple[int, ...], dtype: Any, source: object, what: str = "diffraction data"
) -> None:
    """Refuse 1-D, 5-D and higher, empty, tiny, complex and non-numeric data, naming ``source``."""
    dtype = np.dtype(dtype)
    if dtype.kind == "c":
        raise InputError(source, f"{what} is complex ({dtype}); expected real intensities")
    if dtype.kind not in "biuf":
        raise InputError(source, f"{what} is not numeric (dtype {dtype})")
    if len(shape) < 2 or len(shape) > 4:
        raise InputError(
            source, f"{what} has {len(shape)} dimension(s) {shape}; expected 2 to 4 (frames, H, W)"
        )
    if 0 in shape:
        raise InputError(source, f"{what} is an empty stack {shape}")
    if min(shape[-2:]) < 2:
        raise InputError(source, f"{what} frames are {shape[-2:]}; frames must be at least 2x2")


def checked_truth(truth: np.ndarray | None, n_frames: int, source: object) -> np.ndarray | None:
    """A simulation's true objects, one 2-D object per frame, or refused by name (a count
    that differs made selecting frames fail with an index error)."""
    if truth is None:
        return None
    truth = truth[None] if truth.ndim == 2 else truth
    if truth.ndim != 3 or len(truth) != n_frames:
        raise InputError(
            source, f"its true objects {truth.shape} do not match its {n_frames} frames"
        )
    return truth


def to_stack(array: Any, source: object, what: str = "diffraction data") -> Any:
    """Return ``array`` as ``(N, H, W)``: 2-D becomes one frame, 4-D scan grids are flattened.

    Works on numpy and dask arrays alike (no data is read); refuses what
    :func:`check_stack_shape` refuses.
    """
    shape = tuple(array.shape)
    check_stack_shape(shape, array.dtype, source, what)
    if len(shape) == 2:
        return array[None]
    if len(shape) == 4:
        return array.reshape((shape[0] * shape[1], *shape[2:]))
    return array


def frames_in_memory(stack: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """A :class:`DiffractionStack`'s frames in memory and its mask, the NaN/Inf pixels of a
    lazily read stack masked now that it is read (an eager one was repaired when it was read);
    an empty stack as it is, for the caller's own message."""
    intensities, mask = stack.frames(), stack.mask
    if stack.is_lazy and intensities.size:
        intensities, mask = repair_intensities(intensities, mask, stack.meta.source)
    return intensities, mask


def loaded(stack: Any, chunk: int = 32) -> Generator[tuple[int, int], None, Any]:
    """A lazily read :class:`DiffractionStack` read into memory ``chunk`` frames at a time
    (yielding (frames read, frames), so progress shows and Cancel acts between pieces: a large
    compressed file takes many seconds), its NaN/Inf pixels masked; an eager stack as it is.
    Read once, it serves every method after it (each read the file again before)."""
    if not stack.is_lazy or stack.n_frames == 0:
        return stack
    frames = np.empty(stack.shape, np.float32)
    ends = _piece_ends(getattr(stack.intensities, "chunks", None), stack.n_frames, chunk)
    for lo, hi in zip([0, *ends[:-1]], ends, strict=True):
        frames[lo:hi] = stack.frames(lo, hi)
        yield hi, stack.n_frames
    frames, mask = repair_intensities(frames, stack.mask, stack.meta.source)
    return replace(stack, intensities=frames, mask=mask)


def _piece_ends(chunks: Any, n: int, size: int) -> list[int]:
    """Where the pieces of about ``size`` frames end: on the lazy array's own chunk boundaries
    along the frames (a piece that split a chunk would read it twice)."""
    bounds = np.cumsum(chunks[0]).tolist() if chunks else list(range(1, n + 1))
    ends, start = [], 0
    for bound in bounds:
        if bound - start >= size or bound == n:
            ends.append(bound)
            start = bound
    return ends


def not_opened(path: object, err: OSError) -> InputError:
    """A file that could not be opened at all, said the same way by every reader: missing, or
    not readable by this user."""
    if isinstance(err, FileNotFoundError):
        return InputError(path, "file not found")
    return InputError(path, "permission denied: the file cannot be read")


def as_intensities(frames: Any) -> Any:
    """Frames (numpy or dask) as float32 intensities, with the values integer detectors write
    where they measured nothing turned to NaN, which the readers then mask: the integer type's
    largest value (Eiger's and Jungfrau's gaps and dead pixels, 65535 or 4294967295; a saturated
    pixel's true count is unknown too) and, for signed types, negative values (Pilatus's -1 gaps
    and -2 bad pixels). 8-bit frames keep 255: they are display images, where it is white."""
    dtype = np.dtype(frames.dtype)
    values = frames.astype(np.float32)
    if dtype.kind not in "iu" or dtype.itemsize < 2:
        return values
    marked = frames == np.iinfo(dtype).max
    if dtype.kind == "i":
        marked = marked | (frames < 0)
    if isinstance(frames, da.Array):
        return da.where(marked, np.float32(np.nan), values)
    np.putmask(values, marked, np.float32(np.nan))  # in place: no second float copy
    return values


def repair_intensities(
    intensities: np.ndarray, mask: np.ndarray | None, source: object
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mask NaN/Inf pixels (and the integer detectors' markers, which :func:`as_intensities`
    made NaN) and clip negative values to zero, warning once for each repair.

    Detector gaps often arrive as NaN and background subtraction leaves small negatives: both are
    usable data, so they are repaired and reported rather than refused.  A stack without a single
    valid finite pixel is refused.
    """
    bad = ~np.isfinite(intensities)
    n_bad = int(bad.sum())
    if n_bad == intensities.size:
        raise InputError(source, "no finite intensity values (all NaN or Inf)")
    if n_bad:
        warnings.warn(
            f"{source}: {n_bad} NaN/Inf pixel value(s) (or integer detector marks for no "
            "measurement: the type's largest value, or below 0) were masked as invalid",
            InputWarning,
            stacklevel=3,
        )
        intensities = np.where(bad, 0, intensities).astype(np.float32)
        valid = ~bad
        if valid.ndim == 3 and (valid == valid[:1]).all():
            valid = valid[0]
        mask = valid if mask is None else (mask & valid)
    negative = intensities < 0
    n_negative = int(negative.sum())
    if n_negative:
        warnings.warn(
            f"{source}: {n_negative} negative intensity value(s) (min "
            f"{float(intensities.min()):.3g}) were clipped to 0",
            InputWarning,
            stacklevel=3,
        )
        intensities = np.maximum(intensities, 0, dtype=np.float32)
    if mask is not None and not mask.any():
        raise InputError(source, "the mask marks every pixel invalid")
    return intensities, mask


def check_mask(mask: np.ndarray, stack_shape: tuple[int, ...], source: object) -> np.ndarray:
    """A boolean validity mask of shape ``(H, W)`` or ``(N, H, W)`` matching the stack of
    frames ``(N, H, W)``; a stack of one mask, ``(1, H, W)``, is the mask of every frame."""
    mask = np.asarray(mask)
    if tuple(mask.shape[-2:]) != tuple(stack_shape[-2:]) or mask.ndim not in (2, 3):
        raise InputError(
            source, f"mask shape {mask.shape} does not match frames of shape {stack_shape[-2:]}"
        )
    if mask.ndim == 3 and len(mask) == 1:
        mask = mask[0]
    if mask.ndim == 3 and len(stack_shape) == 3 and len(mask) != stack_shape[0]:
        raise InputError(
            source, f"{len(mask)} masks for {stack_shape[0]} frames: one mask, or one per frame"
        )
    return mask.astype(bool)


def check_positions(positions: Any, n_frames: int, source: object) -> np.ndarray:
    """Scan positions as float64 ``(N, 2)`` (tike's ``(1, N, 2)`` too), one finite, real
    (y, x) pair per frame."""
    positions = np.asarray(positions)
    if positions.dtype.kind not in "biuf":
        raise InputError(source, f"scan positions are not real numbers (dtype {positions.dtype})")
    positions = positions.astype(np.float64)
    if positions.ndim == 3 and positions.shape[0] == 1:
        positions = positions[0]
    if positions.ndim != 2 or positions.shape[1] != 2:
        raise InputError(source, f"scan positions have shape {positions.shape}; expected (N, 2)")
    if len(positions) != n_frames:
        raise InputError(
            source,
            f"{len(positions)} scan positions for {n_frames} diffraction frames; they must match",
        )
    if not np.isfinite(positions).all():
        raise InputError(source, "scan positions contain NaN or Inf")
    return positions


def check_probe(probe: Any, frame_shape: tuple[int, ...], source: object) -> np.ndarray | None:
    """A probe (guess) as complex64 ``(H, W)``, or ``(M, H, W)`` for several modes (leading axes
    of length 1 dropped, as CXI writes ``(1, 1, H, W)``), of the frames' size, finite and not
    zero everywhere (a probe of no light would divide by zero in every update)."""
    if probe is None:
        return None
    probe = np.asarray(probe)
    if probe.dtype.kind not in "biufc":
        raise InputError(source, f"its probe is not numeric ({probe.dtype})")
    if probe.ndim < 2:
        raise InputError(source, f"its probe has shape {probe.shape}; expected (H, W)")
    probe = probe.astype(np.complex64).reshape((-1, *probe.shape[-2:]))
    probe = probe[0] if len(probe) == 1 else probe
    if probe.shape[-2:] != tuple(frame_shape[-2:]):
        raise InputError(
            source,
            f"its probe is {probe.shape[-2]} x {probe.shape[-1]} pixels and the frames "
            f"{frame_shape[-2]} x {frame_shape[-1]}: not a probe of these frames",
        )
    bad = int(np.count_nonzero(~np.isfinite(probe)))
    if bad:
        raise InputError(source, f"its probe holds {bad} NaN or infinite values")
    if not np.any(probe if probe.ndim == 2 else probe[0]):  # the first mode is the one used
        raise InputError(source, "its probe is zero everywhere (no light)")
    return probe


def usable_probe(probe: Any, frame_shape: tuple[int, ...], source: object) -> np.ndarray | None:
    """A file's probe as :func:`check_probe` passes it, or None with a warning saying why: the
    frames stay usable (ePIE starts from a probe guessed from the data, the network without
    levelling), where refusing the probe would refuse the whole file."""
    try:
        return check_probe(probe, frame_shape, source)
    except InputError as err:
        warnings.warn(
            InputWarning(f"{err}; the file's probe is left out (ePIE guesses one from the data)"),
            stacklevel=2,
        )
        return None
