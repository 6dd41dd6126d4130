"""Readers and writers: any supported file -> a core data object, and results -> one HDF5 layout.

``read(path)`` picks the reader from the file name (and, for HDF5, from its content); every
problem surfaces as an :class:`~napari_cdinn.core.errors.InputError` naming the file.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset, DiffractionStack, PtychoScan, ShotSet
from ..errors import InputError
from . import hdf5
from .arrays import read_npy, read_npz
from .hdf5 import (
    damaged_as_input_error,
    numeric_datasets,
    open_h5,
    read_cxi,
    read_hdf5,
)
from .images import PNG_SUFFIXES, TIFF_SUFFIXES, frame_files, read_png, read_tiff
from .results import is_results_file, read_results, write_results, write_tiff

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs", ".cxi")
NUMPY_SUFFIXES = (".npy", ".npz", ".npz.bz2")
SUPPORTED_SUFFIXES = HDF5_SUFFIXES + NUMPY_SUFFIXES + TIFF_SUFFIXES + PNG_SUFFIXES

__all__ = [
    "SUPPORTED_SUFFIXES",
    "describe",
    "file_kind",
    "list_datasets",
    "one_stack_of_frames",
    "read",
    "read_results",
    "write_results",
    "write_tiff",
]


def file_kind(path: str | Path) -> str | None:
    """'cxi', 'hdf5', 'npy', 'npz', 'tiff', 'png' from the name (a folder: its frames), or None."""
    path = Path(path)
    if path.is_dir():
        if frame_files(path, TIFF_SUFFIXES):
            return "tiff"
        return "png" if frame_files(path, PNG_SUFFIXES) else None
    name = path.name.lower()
    for kind, suffixes in (
        ("cxi", (".cxi",)),
        ("hdf5", HDF5_SUFFIXES),
        ("npz", (".npz", ".npz.bz2")),
        ("npy", (".npy",)),
        ("tiff", TIFF_SUFFIXES),
        ("png", PNG_SUFFIXES),
    ):
        if name.endswith(suffixes):
            return kind
    return None


def one_stack_of_frames(paths: list) -> bool:
    """Whether several paths are all PNG or all TIFF files: what :func:`read` reads as one
    stack (a list of anything else it refuses, naming the first file that does not fit)."""
    kinds = {file_kind(p) if Path(p).is_file() else None for p in paths}
    return len(paths) > 1 and len(kinds) == 1 and kinds <= {"png", "tiff"}


def read(
    path: str | Path | list[Path], dataset: str | None = None, lazy: bool | None = None
) -> Dataset:
    """Read any supported file or folder into a :class:`DiffractionStack`, :class:`PtychoScan`
    or :class:`ShotSet`; a list of several PNG (or TIFF) files reads as one stack of them, in
    the order given.

    ``dataset`` overrides the automatic choice inside HDF5/NPZ files (a path or an array name);
    ``lazy`` forces (True) or forbids (False) dask-backed loading; by default large data stays lazy.
    """
    if isinstance(path, list | tuple):
        if len(path) > 1:
            return _read_frame_files([Path(p) for p in path], lazy)
        path = path[0]
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        _refuse_mixed_folder(path)
    kind = file_kind(path)
    if kind is None and path.is_dir():
        raise InputError(
            path, "a folder holding no .tif/.tiff or .png frames (napari-cdinn reads a folder of "
            "frames, or a file)",
        )  # fmt: skip
    if kind in ("hdf5", "cxi") and is_results(path):
        raise InputError(
            path, "a napari-cdinn results file, not diffraction data (napari-cdinn info lists "
            "its results; napari opens its images)",
        )  # fmt: skip
    if kind == "cxi":
        return read_cxi(path, dataset, lazy)
    if kind == "hdf5":
        return read_hdf5(path, dataset, lazy)
    if kind == "npz":
        return read_npz(path, dataset, lazy)
    if kind == "npy":
        return read_npy(path, lazy)
    if kind == "tiff":
        return read_tiff(path, lazy)
    if kind == "png":
        return read_png(path)
    raise InputError(
        path, f"unsupported file type; napari-cdinn reads {', '.join(SUPPORTED_SUFFIXES)}"
    )


def _refuse_mixed_folder(folder: Path) -> None:
    """Refuse a folder of both PNG and TIFF files: read as either kind, the other's files would
    be dropped without a word (PNG shots beside a detector_mask.tif were read as the mask)."""
    png, tiff = frame_files(folder, PNG_SUFFIXES), frame_files(folder, TIFF_SUFFIXES)
    if png and tiff:
        counts = Counter(p.suffix.lower() for p in png + tiff)
        held = " and ".join(f"{n} {suffix}" for suffix, n in sorted(counts.items()))
        raise InputError(
            folder,
            f"holds {held} files; a folder is read as frames of one kind: give the files "
            "explicitly (all PNG or all TIFF)",
        )


def _read_frame_files(files: list[Path], lazy: bool | None) -> Dataset:
    """Several files as one stack: single frames or shots, all PNG or all TIFF."""
    stackable = "only PNG or TIFF frame files can be read as one stack (all of one kind)"
    for file in files:
        if not file.exists():
            raise InputError(file, "file not found")
        if file.is_dir():
            raise InputError(
                file, f"a folder among several inputs; {stackable}: give a folder alone"
            )
        if not file.is_file():
            raise InputError(file, f"not a file; {stackable}")
    kinds = {file: file_kind(file) for file in files}
    first = kinds[files[0]]
    for file, kind in kinds.items():
        if kind not in ("png", "tiff"):
            raise InputError(
                file,
                f"{f'a {kind.upper()} file' if kind else 'of an unknown type'}; {stackable}: "
                "give it alone",
            )
        if kind != first:
            raise InputError(
                file, f"a {kind.upper()} among {first.upper()} files ({files[0].name}); {stackable}"
            )
    return read_png(files) if first == "png" else read_tiff(files, lazy)


@damaged_as_input_error
def no_frames_reason(path: str | Path) -> str | None:
    """Why an HDF5 file holds no frames to show (its nearest miss), or None when it does."""
    with open_h5(path) as h5:
        links = hdf5.Links.of(h5)
        return None if numeric_datasets(h5, links) else hdf5.no_frames_reason(h5, links)


@damaged_as_input_error
def list_datasets(path: str | Path) -> list[tuple[str, tuple[int, ...], str]]:
    """Candidate frame datasets in an HDF5 file (path, shape, dtype), largest first."""
    with open_h5(path) as h5:
        return numeric_datasets(h5)


def is_results(path: str | Path) -> bool:
    """True for a file written by :func:`write_results`."""
    if file_kind(path) not in ("hdf5", "cxi"):
        return False
    try:
        return _holds_results(path)
    except InputError:  # unreadable or damaged: its reader says why
        return False


@damaged_as_input_error
def _holds_results(path: str | Path) -> bool:
    with open_h5(path) as h5:
        return is_results_file(h5)


def describe(data: Dataset) -> dict[str, Any]:
    """What was found, as a flat dict: kind, shapes, dtypes, geometry, positions, which reader."""
    meta = data.meta
    out: dict[str, Any] = {"kind": type(data).__name__}
    stack = data.stack if isinstance(data, PtychoScan) else data
    if isinstance(stack, DiffractionStack):
        out["frames"] = f"{stack.shape} {np.dtype(stack.intensities.dtype)}"
        out["lazy"] = stack.is_lazy
        if stack.mask is not None:
            out["mask"] = f"{stack.mask.shape}, {int((~stack.mask).sum())} invalid pixel(s)"
        if stack.truth is not None:
            out["truth"] = f"{stack.truth.shape} {stack.truth.dtype}"
        if not stack.is_lazy:
            out["intensity range"] = (
                f"{float(stack.intensities.min()):.4g} .. {float(stack.intensities.max()):.4g}"
            )
    if isinstance(data, ShotSet):
        out["images"] = f"{data.images.shape} {data.images.dtype} ({data.scaling})"
    if isinstance(data, PtychoScan):
        pos = data.positions
        out["positions"] = (
            f"{pos.shape} (y, x) object pixels; y {pos[:, 0].min():.2f} .. {pos[:, 0].max():.2f},"
            f" x {pos[:, 1].min():.2f} .. {pos[:, 1].max():.2f}"
        )
        if data.probe is not None:
            out["probe"] = f"{data.probe.shape} {data.probe.dtype}"
        if data.object_pixel_size_m:
            out["object pixel (m)"] = "{:.4g} x {:.4g}".format(*data.object_pixel_size_m)
    for key, value in meta.as_dict().items():
        out.setdefault(key, value)
    return out
