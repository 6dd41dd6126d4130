"""NumPy readers: ``.npy`` stacks and ``.npz`` archives in the tike and PtychoNN layouts.

``.npz.bz2`` (how tike ships its test scans) is decompressed in memory with the standard library.
Pickled objects are never loaded: ``allow_pickle`` stays False, so a file cannot run code.
"""

from __future__ import annotations

import bz2
import io
import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from ..data import DiffractionStack, Metadata, PtychoScan
from ..errors import InputError
from . import hdf5  # hdf5.LAZY_BYTES is read at call time: one threshold for all readers
from .checks import (
    as_intensities,
    check_positions,
    check_stack_shape,
    checked_truth,
    not_opened,
    repair_intensities,
    to_stack,
    usable_probe,
)

# What numpy, zipfile, zlib and bz2 raise on damaged files (a mangled header, a bad zip member;
# TypeError: a header dictionary with a bytes key, which numpy fails to sort while reporting it).
_DAMAGED = (
    OSError,
    TypeError,
    EOFError,
    ValueError,
    MemoryError,
    NotImplementedError,
    zipfile.BadZipFile,
    zlib.error,
    tokenize.TokenError,
)


def _load(path: Path, mmap: bool) -> Any:
    try:
        if path.name.endswith(".bz2"):
            with bz2.open(path) as handle:
                return np.load(io.BytesIO(handle.read()), allow_pickle=False)
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (FileNotFoundError, PermissionError) as err:
        raise not_opened(path, err) from None
    except _DAMAGED as err:
        raise InputError(path, _unreadable("not a readable NumPy file", err)) from None


def _unreadable(what: str, err: Exception) -> str:
    """Why a NumPy file did not load: Python objects (which need unpickling: never done here,
    whatever numpy's own message suggests), else damage."""
    text = str(err)
    if "pickle" in text or "Python objects" in text or "Object arrays" in text:
        return f"{what}: it holds Python objects, which napari-cdinn never loads (unpickling a file can run code)"
    return f"{what} (truncated or corrupt?): {text}"


def _stack(array: Any, source: str, meta: Metadata, lazy: bool | None) -> DiffractionStack:
    check_stack_shape(array.shape, array.dtype, source)
    if lazy is None:
        lazy = array.nbytes > hdf5.LAZY_BYTES
    if lazy:
        chunks = (1,) * (array.ndim - 2) + tuple(array.shape[-2:])  # one frame each, as HDF5
        lazy_frames = da.from_array(array, chunks=chunks)
        return DiffractionStack(as_intensities(to_stack(lazy_frames, source)), None, meta)
    frames, mask = repair_intensities(
        as_intensities(to_stack(np.asarray(array), source)), None, source
    )
    return DiffractionStack(frames, mask, meta)


def read_npy(path: str | Path, lazy: bool | None = None) -> DiffractionStack:
    """A ``.npy`` array of 2 to 4 dimensions as a diffraction stack (memory-mapped when large)."""
    path = Path(path)
    array = _load(path, mmap=True)
    return _stack(array, str(path), Metadata(source=str(path), reader="npy"), lazy)


def read_npz(path: str | Path, dataset: str | None = None, lazy: bool | None = None):
    """A ``.npz`` (or ``.npz.bz2``) archive.

    - tike layout ``data``/``probe``/``scan``: a :class:`PtychoScan`, scan (y, x) in object pixels;
    - PtychoNN layout ``reciprocal``/``real``: diffraction plus the true objects;
    - otherwise ``dataset`` or the largest 2-4-D numeric array.
    """
    path = Path(path)
    source = str(path)
    archive = _load(path, mmap=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
        return _stack(archive, source, Metadata(source=source, reader="npy"), lazy)
    try:
        arrays = {key: archive[key] for key in archive.files}
    except _DAMAGED as err:
        raise InputError(
            source, _unreadable("an array in the archive is unreadable", err)
        ) from None
    finally:
        archive.close()
    if dataset:
        if dataset not in arrays:
            raise InputError(source, f"no array '{dataset}' (arrays: {sorted(arrays)})")
        return _stack(arrays[dataset], source, Metadata(source, "npz", dataset), lazy)
    if {"data", "scan"} <= arrays.keys():
        return _tike_scan(arrays, source, lazy)
    if "reciprocal" in arrays:
        stack = _stack(
            arrays["reciprocal"], source, Metadata(source, "npz-ptychonn", "reciprocal"), lazy
        )
        if "real" in arrays:
            truth = _complex_objects(arrays["real"], source)
            stack.truth = checked_truth(truth, stack.n_frames, source)
        return stack
    numeric = [k for k, a in arrays.items() if a.dtype.kind in "biuf" and 2 <= a.ndim <= 4]
    if not numeric:
        for key, array in arrays.items():  # a near miss says why (complex, empty)
            if 2 <= array.ndim <= 4:
                check_stack_shape(array.shape, array.dtype, source, f"array '{key}'")
        raise InputError(
            source, f"no numeric array of 2 to 4 dimensions (arrays: {sorted(arrays)})"
        )
    key = max(numeric, key=lambda k: arrays[k].size)
    return _stack(arrays[key], source, Metadata(source, "npz", key), lazy)


def in_fft_order(frames: np.ndarray) -> bool:
    """Whether patterns have their zero frequency at [0, 0] (tike's convention) rather than at
    the centre: the mean pattern's central half (a box of half its height and width) holds
    under a third of the counts that the corners' half holds (NaN and Inf pixels, gaps the
    readers mask, left out of the mean).  Counts over half the pattern, not the few middle
    pixels alone: a beam stop or a saturated centre leaves the middle dark while the rings
    around it carry the counts."""
    values = np.asarray(frames[: min(len(frames), 64)], np.float64)
    finite = np.isfinite(values)
    mean = np.where(finite, values, 0).sum(axis=0) / np.maximum(finite.sum(axis=0), 1)
    h, w = mean.shape
    box = (slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))
    return float(np.fft.fftshift(mean)[box].sum()) > 3 * float(mean[box].sum())


def _tike_scan(arrays: dict[str, np.ndarray], source: str, lazy: bool | None) -> PtychoScan:
    data = arrays["data"]
    check_stack_shape(np.shape(data), data.dtype, source)
    meta = Metadata(source, "npz-tike", "data")
    if in_fft_order(np.reshape(data, (-1, *np.shape(data)[-2:]))):
        data = np.fft.fftshift(data, axes=(-2, -1))  # tike keeps the zero frequency at [0, 0]
        meta.extra["shifted"] = "patterns were in FFT order (zero frequency at [0, 0]); centred"
    stack = _stack(data, source, meta, lazy)
    positions = check_positions(arrays["scan"], stack.n_frames, source)
    probe = usable_probe(arrays.get("probe"), stack.frame_shape, source)
    return PtychoScan(stack, positions, probe)


def _complex_objects(real: np.ndarray, source: str) -> np.ndarray:
    """PtychoNN's ``real``: complex objects, or amplitude and phase along axis 1."""
    if np.iscomplexobj(real):
        return np.asarray(real, np.complex64)
    if real.ndim == 4 and real.shape[1] == 2:
        return (real[:, 0] * np.exp(1j * real[:, 1])).astype(np.complex64)
    raise InputError(source, f"'real' has shape {real.shape}; expected complex or (N, 2, H, W)")
