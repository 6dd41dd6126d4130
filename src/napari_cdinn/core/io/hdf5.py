"""HDF5 readers: CXI 1.6 files, NeXus ``NXdata``, and plain HDF5 (largest 2-4-D numeric dataset).

Large datasets open lazily as dask arrays over the open h5py file, one chunk per frame, so napari
can page through a stack bigger than memory.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dask.array as da
import h5py
import hdf5plugin  # noqa: F401  registers the filters detectors compress with (bitshuffle-LZ4)
import numpy as np

from ..data import JOULE_PER_EV, PLANCK_EV_M, DiffractionStack, Metadata, PtychoScan
from ..errors import InputError, InputWarning
from .checks import (
    as_intensities,
    check_mask,
    check_positions,
    check_stack_shape,
    checked_truth,
    not_opened,
    repair_intensities,
    to_stack,
    usable_probe,
)

LAZY_BYTES = 256 * 2**20  # datasets larger than this stay on disk (dask) unless asked otherwise

# What h5py raises on damaged metadata found after the file opened (links, headers, dtypes).
DAMAGED = (OSError, KeyError, RuntimeError, ValueError, TypeError)
_Reader = TypeVar("_Reader", bound=Callable[..., Any])


def damaged_as_input_error(reader: _Reader) -> _Reader:
    """Turn h5py's errors deep inside a damaged file into an :class:`InputError` naming it."""

    @functools.wraps(reader)
    def wrapper(path: str | Path, *args: Any, **kwargs: Any) -> Any:
        try:
            return reader(path, *args, **kwargs)
        except DAMAGED as err:
            detail = err.args[0] if isinstance(err, KeyError) and err.args else err
            raise InputError(path, f"damaged HDF5 file (corrupt structure?): {detail}") from None

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def _closed_on_error(h5: h5py.File) -> Iterator[h5py.File]:
    """The open file, closed if reading it fails; left open otherwise, for a lazy stack that
    reads its frames from it later (an eager reader closes it itself)."""
    try:
        yield h5
    except BaseException:
        h5.close()
        raise


def open_h5(path: str | Path) -> h5py.File:
    """Open an HDF5 file read-only, turning h5py's errors into a clear :class:`InputError`."""
    try:
        return h5py.File(path, "r")
    except (FileNotFoundError, PermissionError) as err:
        raise not_opened(path, err) from None
    except OSError as err:
        raise InputError(path, f"not a readable HDF5 file (truncated or corrupt?): {err}") from None


def is_cxi(h5: h5py.File) -> bool:
    return "cxi_version" in h5 or any(_cxi_frames_path(h5, e) for e in _entries(h5))


def _entries(h5: h5py.File) -> list[str]:
    names = [k for k in h5 if k.startswith("entry_") and isinstance(h5[k], h5py.Group)]
    return sorted(names, key=lambda n: int(n.split("_")[1]) if n.split("_")[1].isdigit() else 0)


def _cxi_frames_path(h5: h5py.File, entry: str) -> str | None:
    group = h5[entry]
    data_groups = sorted(k for k in group if k.startswith("data_"))
    candidates = [f"{entry}/{g}/data" for g in data_groups]
    candidates += [f"{entry}/instrument_1/detector_1/data"]
    for path in candidates:
        if path in h5 and isinstance(h5[path], h5py.Dataset) and h5[path].ndim >= 2:
            return path
    return None


@dataclass
class Links:
    """One walk over a file's links (a file of many datasets is slow to walk; a read walks it
    once): every group and dataset reachable by a hard, soft or external link, each once, by
    the first name found (NeXus master files of Eiger and Jungfrau detectors reach their
    frames through external links to data files, which h5py's ``visititems`` does not
    follow), and the names of links that lead nowhere (a data file missing or moved)."""

    objects: list[tuple[str, Any]] = field(default_factory=list)
    dangling: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, h5: h5py.File) -> Links:
        names: list[str] = []
        h5.visit_links(names.append)
        links, seen = cls(), set()
        for name in names:
            try:
                obj = h5.get(name)
            except DAMAGED:
                obj = None
            if obj is None:
                links.dangling.append(name)
            elif (key := (obj.file.filename, obj.name)) not in seen:
                seen.add(key)
                links.objects.append((name, obj))
        return links


def numeric_datasets(
    h5: h5py.File, links: Links | None = None
) -> list[tuple[str, tuple[int, ...], str]]:
    """Every real numeric dataset of 2 to 4 dimensions, (path, shape, dtype), largest first,
    after any detector series (:func:`detector_series`) named by its group, as one stack."""
    links = links or Links.of(h5)
    found = [
        (name, tuple(obj.shape), str(obj.dtype)) for name, obj in links.objects if _frames_like(obj)
    ]
    series = [
        (
            group,
            (sum(h5[n].shape[0] for n in names), *h5[names[0]].shape[1:]),
            str(h5[names[0]].dtype),
        )
        for group, names in detector_series(links).items()
    ]
    return series + sorted(found, key=lambda item: -int(np.prod(item[1])))


SERIES_PART = re.compile(r"data_(\d{6})")  # Eiger's and Jungfrau's data_000001, ...


def detector_series(links: Links) -> dict[str, list[str]]:
    """Groups whose ``data_NNNNNN`` datasets are parts of one series of frames (how Eiger and
    Jungfrau master files list their data files): {group: [dataset paths, in number order]},
    where there are two or more parts of one frame shape and dtype."""
    series: dict[str, list[str]] = {}
    for name, obj in links.objects:
        if not isinstance(obj, h5py.Group):
            continue
        numbered = {int(m[1]): k for k in obj if (m := SERIES_PART.fullmatch(k))}
        parts = [numbered[n] for n in sorted(numbered)]
        try:
            datasets = [obj[k] for k in parts]
        except DAMAGED:
            continue
        if len(datasets) >= 2 and all(
            _frames_like(d) and d.ndim == 3 and d.shape[1:] == datasets[0].shape[1:]
            and d.dtype == datasets[0].dtype
            for d in datasets
        ):  # fmt: skip
            series[name] = [f"{name}/{k}" for k in parts]
    return series


def no_frames_reason(h5: h5py.File, links: Links | None = None) -> str:
    """Why a file holds nothing :func:`numeric_datasets` lists: its nearest miss (a complex
    or empty stack, said as such), else that there is no dataset of 2 to 4 dimensions."""
    misses = [
        (name, obj)
        for name, obj in (links or Links.of(h5)).objects
        if isinstance(obj, h5py.Dataset) and 2 <= obj.ndim <= 4
    ]
    misses.sort(key=lambda item: (item[1].dtype.kind != "c", item[1].size == 0))
    for name, obj in misses:
        try:
            check_stack_shape(obj.shape, obj.dtype, None, f"dataset '{name}'")
        except InputError as err:
            return f"no usable frames: {err.problem}"
    return "no numeric dataset of 2 to 4 dimensions in the file"


def _frames_like(obj: Any) -> bool:
    """A real numeric, non-empty dataset of 2 to 4 dimensions: what can hold frames."""
    return (
        isinstance(obj, h5py.Dataset)
        and 2 <= obj.ndim <= 4
        and obj.dtype.kind in "biuf"
        and obj.size > 0
    )


def _nxdata_signal(links: Links) -> str | None:
    """The path of the first NXdata group's ``signal`` dataset (NeXus default plottable data)
    that can hold frames (a 1-D default plot is passed over)."""
    for name, obj in links.objects:
        if isinstance(obj, h5py.Group) and _attr_str(obj.attrs.get("NX_class")) == "NXdata":
            signal = _attr_str(obj.attrs.get("signal"))
            if signal and signal in obj and _frames_like(obj[signal]):
                return f"{name}/{signal}"
    return None


def _attr_str(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return _attr_str(value.flat[0]) if value.size else None
    return str(value)


def _scalar(h5: h5py.File, path: str) -> float | None:
    if path not in h5 or not isinstance(h5[path], h5py.Dataset):
        return None
    value = np.asarray(h5[path][()])
    if value.dtype.kind not in "biuf" or value.size == 0:
        return None
    value = float(value.flat[0])
    return value if np.isfinite(value) and value > 0 else None


class _NamedReads:
    """An HDF5 dataset whose failed reads (a damaged chunk) raise an InputError naming the
    file: a lazy stack reads its frames long after the file was opened, as they are shown or
    inverted, and h5py's own error names neither."""

    def __init__(self, dset: h5py.Dataset, source: str):
        self.dset, self.source = dset, source
        self.shape, self.dtype, self.ndim = dset.shape, dset.dtype, dset.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return self.dset[key]
        except OSError as err:
            raise InputError(self.source, _unread(self.dset, err, "a damaged chunk?")) from None


def _frames(dset: h5py.Dataset, source: str, lazy: bool | None) -> Any:
    """The dataset as a float32 stack: a numpy array, or a dask array when large."""
    check_stack_shape(dset.shape, dset.dtype, source)
    if lazy is None:
        lazy = dset.size * dset.dtype.itemsize > LAZY_BYTES
    if lazy:
        chunks = (1,) * (dset.ndim - 2) + tuple(dset.shape[-2:])
        lazy_frames = da.from_array(_NamedReads(dset, source), chunks=chunks, inline_array=True)
        return as_intensities(to_stack(lazy_frames, source))
    try:
        return as_intensities(to_stack(np.asarray(dset[()]), source))
    except OSError as err:
        raise InputError(source, _unread(dset, err, "damaged or truncated file?")) from None


def _unread(dset: h5py.Dataset, err: OSError, guess: str) -> str:
    """Why a dataset's values could not be read: a compression filter this installation lacks
    (said as such, by name), else damage (``guess``): a damaged chunk of a filter that is
    here fails in the filter too, so the filters are asked, not the error's words."""
    plist = dset.id.get_create_plist()
    filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
    missing = [
        f"{name.decode(errors='replace') or 'unnamed'} (id {code})"
        for code, _, _, name in filters
        if not h5py.h5z.filter_avail(code)
    ]
    if missing:
        return (
            f"could not read {dset.name}: it is compressed with an HDF5 filter this installation "
            f"lacks, {', '.join(missing)} (hdf5plugin provides the common ones): {err}"
        )
    return f"could not read {dset.name} ({guess}): {err}"


def _finish(frames: Any, mask: np.ndarray | None, meta: Metadata) -> DiffractionStack:
    if mask is not None:
        mask = check_mask(mask, frames.shape, meta.source)
    if isinstance(frames, np.ndarray):
        frames, mask = repair_intensities(frames, mask, meta.source)
    return DiffractionStack(frames, mask, meta)


@damaged_as_input_error
def read_cxi(path: str | Path, dataset: str | None = None, lazy: bool | None = None):
    """Read a CXI 1.6 file: frames, bit mask, geometry and, when present, a ptychography scan.

    ``dataset`` picks an entry (``entry_2``) or a frames dataset path; by default the first entry
    with data.  Translations (N x 3 metres, x y z) become positions (y, x) = -translation / pixel,
    with the far-field object pixel lambda*z/(N*p).
    """
    source = str(path)
    with _closed_on_error(open_h5(path)) as h5:
        entry, frames_path = _pick_cxi_frames(h5, dataset, source)
        detector = f"{entry}/instrument_1/detector_1"
        energy_j = _scalar(h5, f"{entry}/instrument_1/source_1/energy")
        wavelength = _scalar(h5, f"{entry}/instrument_1/source_1/wavelength")
        energy_ev = energy_j / JOULE_PER_EV if energy_j else None
        if energy_ev is None and wavelength:
            energy_ev = PLANCK_EV_M / wavelength
        x_pixel = _scalar(h5, f"{detector}/x_pixel_size")
        y_pixel = _scalar(h5, f"{detector}/y_pixel_size") or x_pixel
        meta = Metadata(
            source=source,
            reader="cxi",
            dataset=frames_path,
            energy_ev=energy_ev,
            distance_m=_scalar(h5, f"{detector}/distance"),
            pixel_size_m=(y_pixel, x_pixel or y_pixel) if y_pixel else None,
            extra={"entries": _entries(h5)},
        )
        if f"{entry}/sample_1/orientation" in h5:  # wide-angle shots (cxi_writer.write_shots)
            meta.extra["mode"] = "wideangle"
        simulation = (
            _attr_str(h5[f"{entry}/sample_1"].attrs.get("simulation"))
            if f"{entry}/sample_1" in h5
            else None
        )
        if simulation:  # how a simulated file was made (cxi_writer)
            with contextlib.suppress(ValueError):
                meta.extra["simulation"] = json.loads(simulation)
        frames = _frames(h5[frames_path], source, lazy)
        mask = None
        for mask_path in (f"{detector}/mask", f"{entry}/data_1/mask"):
            if mask_path in h5:
                mask = np.asarray(h5[mask_path][()]) == 0  # CXI bit mask: 0 = good pixel
                break
        stack = _finish(frames, mask, meta)
        truth_path = f"{entry}/sample_1/true_object"  # simulated files (see cxi_writer)
        truth = _true_object(h5, truth_path, source)
        translation = None
        for tr_path in (f"{entry}/sample_1/geometry_1/translation", f"{entry}/data_1/translation"):
            if tr_path in h5:
                translation = np.asarray(h5[tr_path][()], dtype=np.float64)
                break
        if translation is None:
            stack.truth = checked_truth(truth, stack.n_frames, source)
            if not stack.is_lazy:
                h5.close()
            return stack
        probe = None
        probe_path = f"{entry}/instrument_1/source_1/illumination"
        if probe_path in h5:
            probe = usable_probe(h5[probe_path][()], stack.frame_shape, source)
        if not stack.is_lazy:
            h5.close()
        scan = _scan_from_translation(stack, translation, probe, source)
        if truth is not None and truth.ndim != 2:  # a scan's truth is one object
            _warn_truth_left_out(source, f"has shape {truth.shape}, not one 2-D object")
            truth = None
        scan.truth = truth
        return scan


def _true_object(h5: h5py.File, path: str, source: str) -> np.ndarray | None:
    """A simulated file's true object(s) as complex64, or None (left out with a warning when
    they are not numbers: the frames stay usable, only scoring against the truth is lost)."""
    if path not in h5 or not isinstance(h5[path], h5py.Dataset):
        return None
    truth = np.asarray(h5[path][()])
    if truth.dtype.kind not in "biufc":
        _warn_truth_left_out(source, f"is not numeric ({truth.dtype})")
        return None
    return truth.astype(np.complex64)


def _warn_truth_left_out(source: str, problem: str) -> None:
    warnings.warn(
        InputWarning(f"{source}: its true object {problem}; it is left out"), stacklevel=4
    )


def _pick_cxi_frames(h5: h5py.File, dataset: str | None, source: str) -> tuple[str, str]:
    if dataset:
        dataset = dataset.strip("/")
        if dataset not in h5:
            raise InputError(source, f"no '{dataset}' in the file (entries: {_entries(h5)})")
        if isinstance(h5[dataset], h5py.Dataset):
            return dataset.split("/")[0], dataset
        frames = _cxi_frames_path(h5, dataset)
        if frames is None:
            raise InputError(source, f"'{dataset}' holds no CXI frames dataset")
        return dataset, frames
    for entry in _entries(h5):
        frames = _cxi_frames_path(h5, entry)
        if frames:
            return entry, frames
    raise InputError(source, "no CXI frames (entry_N/data_N/data or detector_1/data) found")


def _scan_from_translation(
    stack: DiffractionStack, translation: np.ndarray, probe: np.ndarray | None, source: str
) -> PtychoScan:
    if translation.ndim != 2 or translation.shape[1] < 2:
        raise InputError(source, f"translations have shape {translation.shape}; expected (N, 3)")
    pixel = stack.meta.object_pixel_size_m(stack.frame_shape)
    if pixel is None:
        raise InputError(
            source, "translations are given but energy, distance or pixel size is missing"
        )
    positions = -translation[:, [1, 0]] / np.asarray(pixel)  # (x, y, z) metres -> (y, x) pixels
    positions = check_positions(positions, stack.n_frames, source)
    return PtychoScan(stack, positions, probe, pixel)


@damaged_as_input_error
def read_hdf5(path: str | Path, dataset: str | None = None, lazy: bool | None = None):
    """Read plain HDF5 or NeXus: ``dataset`` if given (a detector series by its group), else
    the NXdata signal, else the first detector series, else the largest 2-4-D numeric dataset.
    CXI-structured files are handed to :func:`read_cxi`."""
    source = str(path)
    with _closed_on_error(open_h5(path)) as h5:
        if is_cxi(h5) and (dataset is None or not dataset.strip("/").startswith("data")):
            h5.close()
            return read_cxi(path, dataset, lazy)
        links = Links.of(h5)
        _warn_dangling(links, source)
        series = detector_series(links)
        if dataset:
            name = dataset.strip("/")
            if name not in series and (name not in h5 or not isinstance(h5[name], h5py.Dataset)):
                choices = ", ".join(p for p, _, _ in numeric_datasets(h5, links)[:8]) or "none"
                raise InputError(source, f"no dataset '{dataset}' (numeric datasets: {choices})")
        else:
            name = _nxdata_signal(links) or next(iter(series), None)
            if name is None:
                candidates = numeric_datasets(h5, links)
                if not candidates:
                    raise InputError(source, no_frames_reason(h5, links))
                name = candidates[0][0]
        meta = Metadata(source=source, reader="hdf5", dataset=name)
        if name in series:
            meta.extra["series"] = series[name]
        frames = _series_frames([h5[n] for n in series.get(name, [name])], source, lazy)
        mask_path = _pixel_mask_path(links, tuple(frames.shape[-2:]))
        mask = None
        if mask_path is not None:
            meta.extra["mask"] = mask_path
            mask = np.asarray(h5[mask_path][()]) == 0
        stack = _finish(frames, mask, meta)
        if not stack.is_lazy:
            h5.close()
        return stack


def _warn_dangling(links: Links, source: str) -> None:
    """Say which links lead nowhere (a detector's data file missing or moved): their frames
    cannot be read, and what is read may be only part of the run."""
    if links.dangling:
        named = ", ".join(links.dangling[:3]) + (" ..." if len(links.dangling) > 3 else "")
        warnings.warn(
            InputWarning(
                f"{source}: {len(links.dangling)} link(s) lead to nothing that opens (a data "
                f"file missing or moved?): {named}; what they hold is not read"
            ),
            stacklevel=3,
        )


def _pixel_mask_path(links: Links, frame_shape: tuple[int, int]) -> str | None:
    """A NeXus detector's ``pixel_mask`` of the frames' shape (0 = good pixel; Eiger and
    Jungfrau masters keep it in ``detectorSpecific`` too), or None."""
    for name, obj in links.objects:
        if (
            name.rsplit("/", 1)[-1] == "pixel_mask"
            and isinstance(obj, h5py.Dataset)
            and obj.shape == frame_shape
            and obj.dtype.kind in "biu"
        ):
            return name
    return None


def _series_frames(parts: list[h5py.Dataset], source: str, lazy: bool | None) -> Any:
    """One stack from a dataset, or from the parts of a detector series joined in order."""
    if len(parts) == 1:
        return _frames(parts[0], source, lazy)
    if lazy is None:
        lazy = sum(d.size * d.dtype.itemsize for d in parts) > LAZY_BYTES
    if lazy:
        return da.concatenate([_frames(d, source, lazy) for d in parts])
    frames = np.empty((sum(len(d) for d in parts), *parts[0].shape[1:]), np.float32)
    start = 0
    for part in parts:  # one part in memory besides the stack, not all of them twice
        frames[start : start + len(part)] = _frames(part, source, lazy)
        start += len(part)
    return frames
