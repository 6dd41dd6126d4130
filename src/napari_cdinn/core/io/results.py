"""The one HDF5 layout for results (documented in the README), written atomically.

```
/                               attrs: creator="napari-cdinn", creator_version, file_kind="results"
/entry_1/image_K/data           complex64 object(s): (N, H, W) per pattern, or (H, W) stitched
                                attrs (stitched only): origin = (y, x) scan coordinate of [0, 0]
/entry_1/image_K/probe          complex64, optional (ptychography)
/entry_1/image_K/support        bool, optional
/entry_1/image_K/chi2           float64 (N,), optional reciprocal-space error per pattern
/entry_1/orientation_K/quaternion  float64 (N, 4), unit quaternions (w, x, y, z)
/entry_1/orientation_K/radius_nm   float64 (N,)
/entry_1/orientation_K/flips_agreeing  int8 (N,), optional: of the network's 8 test-time flips
/entry_1/orientation_K/radius_at_limit  bool (N,), optional: the radius is at an end of the
                                model's range (parameter radius_range_nm): the cluster may be
                                larger (or smaller)
every image_K / orientation_K group has a process_1 group whose attrs are
  method, model_name, model_version, parameters (JSON), wall_time_s, source, created
```
A write goes to a temporary file beside the target and is renamed over it only once complete, so
a failed write never leaves a broken file and never clobbers an existing one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import tifffile

from ... import __version__
from ..data import ObjectResult, OrientationResult, Provenance, Result
from ..errors import CdinnError, InputError
from .hdf5 import DAMAGED, damaged_as_input_error, open_h5
from .images import TIFF_SUFFIXES

HDF5_SUFFIXES = (".h5", ".hdf5", ".cxi", ".nxs")


CREATOR = "napari-cdinn"  # what marks the files it writes (HDF5 attrs, TIFF and JSON)


def check_output(
    target: str | Path,
    inputs: Sequence[str | Path] = (),
    suffixes: tuple[str, ...] | None = None,
    writes: str = "results",
) -> Path:
    """``target`` as a file that can be written: not a folder, in a folder that exists and may
    be written, none of the ``inputs`` (which it would replace: the user's data lost), ending
    in one of ``suffixes`` when given, and, if it is an HDF5 file already there, one that
    napari-cdinn wrote of the kind it ``writes`` ("results", or "data": a simulated scan), so
    neither a raw data file nor a simulated scan is replaced by results, nor results by a
    simulation; a "model" (weights or card) replaces only a model's file.  The command line
    checks it before the work, so a mistyped path costs no minutes of computing."""
    target = Path(target)
    if target.is_dir():
        raise CdinnError(f"{target}: is a folder; give a file name for the output")
    folder = target.parent
    if not folder.exists():
        raise CdinnError(f"{target}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CdinnError(f"{target}: the folder {folder} is not writable")
    for source in inputs:
        if _same_file(target, Path(source)):
            raise CdinnError(f"{target}: is also an input; the output would replace it")
    if suffixes is not None and target.suffix.lower() not in suffixes:
        raise CdinnError(
            f"{target}: give a file name ending in {' or '.join(suffixes)}, the kind of file "
            "this command writes"
        )
    if not target.is_file():
        return target
    suffix = target.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        kind = _kind_written(target)
    elif suffix in TIFF_SUFFIXES or writes == "summary":
        kind = writes if _written_by_us(target) else None
    elif writes == "model":  # weights or card: replaced only when they are a model's
        kind = writes if _is_model(target) else None
    else:
        kind = writes
    if kind is None:
        raise CdinnError(
            f"{target}: exists and napari-cdinn did not write it (it may be your data); "
            "choose another name, or delete it first"
        )
    if kind != writes:
        what = {"results": "results", "data": "simulated data", "summary": "a summary"}
        raise CdinnError(
            f"{target}: exists and holds {what[kind]}, and this command writes "
            f"{what[writes]}; choose another name, or delete it first"
        )
    return target


def _written_by_us(target: Path) -> bool:
    """Whether an existing TIFF (its description) or JSON file (its entries) says
    ``"creator": "napari-cdinn"``, as the ones :func:`write_tiff` and ``info -o`` write do."""
    try:
        if target.suffix.lower() in TIFF_SUFFIXES:
            with tifffile.TiffFile(target) as tif:
                content = json.loads(tif.pages[0].description or "{}")
        else:
            content = json.loads(target.read_text())
    except Exception:  # not readable as such: not ours
        return False
    return isinstance(content, dict) and content.get("creator") == CREATOR


def _is_model(target: Path) -> bool:
    """Whether ``target`` (weights or card) is one of a model pair napari-cdinn writes: its
    card, beside it or itself, is one the model registry reads (a settings.json of the user's
    is not)."""
    from ..nn.registry import read_card  # torch: imported only to replace a model

    try:
        read_card(target.with_suffix(".safetensors"))
    except CdinnError:
        return False
    return True


def mark_as_ours(h5: h5py.File) -> None:
    """Sign a file napari-cdinn writes: only such files are replaced by a later output."""
    h5.attrs["creator"] = CREATOR
    h5.attrs["creator_version"] = __version__


def _kind_written(path: Path) -> str | None:
    """What napari-cdinn wrote in the HDF5 file at ``path``: "results", "data" (a simulated
    scan or stack), or None when napari-cdinn did not write it."""
    try:
        with h5py.File(path, "r") as h5:
            if h5.attrs.get("creator") != CREATOR:
                return None
            return "results" if is_results_file(h5) else "data"
    except DAMAGED:  # not HDF5, or damaged: not ours to replace
        return None


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links and relative paths too)."""
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _fresh_file_beside(target: Path) -> Path:
    """A new, empty file beside ``target``, created as any new file is, under the user's umask
    (read this way: setting the process-wide umask to read it would, for that moment, give
    files that other threads create no protection)."""
    while True:
        candidate = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return candidate


@contextlib.contextmanager
def atomic_path(target: str | Path, writes: str = "results") -> Iterator[Path]:
    """Yield a temporary path beside ``target`` (checked by :func:`check_output` as a file of
    the kind it ``writes``); rename it onto ``target`` only on success."""
    target = check_output(target, writes=writes)
    try:
        tmp_path = _fresh_file_beside(target)
    except OSError as err:
        raise CdinnError(f"{target}: cannot be written ({err.strerror or err})") from None
    # the old file's permissions when it replaces one, else those of a new file; the
    # temporary file owner-only until it is complete (a private file's content stays private)
    mode = (target if target.exists() else tmp_path).stat().st_mode & 0o777
    tmp_path.chmod(0o600)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        tmp_path.chmod(mode)  # after writing: a read-only mode kept from the old file
        os.replace(tmp_path, target)
    except OSError as err:  # the disk full, the file system gone read-only
        raise CdinnError(f"{target}: could not be written ({err.strerror or err})") from None
    finally:
        tmp_path.unlink(missing_ok=True)


def _write_provenance(group: h5py.Group, provenance: Provenance) -> None:
    process = group.create_group("process_1")
    process.attrs["method"] = provenance.method
    process.attrs["model_name"] = provenance.model_name or ""
    process.attrs["model_version"] = provenance.model_version or ""
    process.attrs["parameters"] = json.dumps(provenance.parameters, default=str)
    process.attrs["wall_time_s"] = (
        np.nan if provenance.wall_time_s is None else provenance.wall_time_s
    )
    process.attrs["source"] = provenance.source or ""
    process.attrs["created"] = datetime.now(UTC).isoformat(timespec="seconds")


def write_results(path: str | Path, results: Sequence[Result]) -> Path:
    """Write ``results`` into one HDF5 file in the documented layout, atomically."""
    if not results:
        raise CdinnError(f"{path}: nothing to write (no results)")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        mark_as_ours(h5)
        h5.attrs["file_kind"] = "results"
        entry = h5.create_group("entry_1")
        entry.attrs["NX_class"] = "NXentry"
        n_images = n_orientations = 0
        for result in results:
            if isinstance(result, ObjectResult):
                n_images += 1
                group = entry.create_group(f"image_{n_images}")
                data = group.create_dataset("data", data=np.asarray(result.objects, np.complex64))
                if result.origin is not None:
                    data.attrs["origin"] = np.asarray(result.origin, np.float64)
                for name, value in (("probe", result.probe), ("support", result.support)):
                    if value is not None:
                        group.create_dataset(name, data=value)
                if result.chi2 is not None:
                    group.create_dataset("chi2", data=np.asarray(result.chi2, np.float64))
            elif isinstance(result, OrientationResult):
                n_orientations += 1
                group = entry.create_group(f"orientation_{n_orientations}")
                group.create_dataset("quaternion", data=np.asarray(result.quaternions, np.float64))
                group.create_dataset("radius_nm", data=np.asarray(result.radii_nm, np.float64))
                if result.flips_agreeing is not None:
                    agreeing = np.asarray(result.flips_agreeing, np.int8)
                    group.create_dataset("flips_agreeing", data=agreeing)
                if result.radius_at_limit is not None:
                    group.create_dataset("radius_at_limit", data=result.radius_at_limit)
            else:
                raise CdinnError(f"{path}: cannot write a {type(result).__name__}")
            _write_provenance(group, result.provenance)
    return Path(path)


def _read_provenance(group: h5py.Group) -> Provenance:
    attrs = group["process_1"].attrs if "process_1" in group else {}

    def text(key: str) -> str | None:
        value = attrs.get(key, "")
        value = value.decode() if isinstance(value, bytes) else str(value)
        return value or None

    wall = attrs.get("wall_time_s", np.nan)
    return Provenance(
        method=text("method") or "unknown",
        model_name=text("model_name"),
        model_version=text("model_version"),
        parameters=json.loads(text("parameters") or "{}"),
        wall_time_s=None if np.isnan(wall) else float(wall),
        source=text("source"),
    )


def _misfit(result: Result) -> str | None:
    """What in a result read back is not of the shapes and kinds :func:`write_results` writes
    (a file edited or written by another program), or None; the layers and docks rely on them."""
    parameters = result.provenance.parameters
    if not isinstance(parameters, dict):
        return "has parameters that are not a JSON object"
    scale = parameters.get("object_pixel_scale")
    numbers = scale if isinstance(scale, list) else [scale]  # one number: earlier versions
    if scale is not None and not (
        len(numbers) in (1, 2)
        and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in numbers)
    ):
        return f"has object_pixel_scale {scale!r}; expected one or two positive numbers"
    if isinstance(result, OrientationResult):
        n = len(np.atleast_1d(result.radii_nm))
        shapes = [(result.quaternions, (n, 4)), (result.radii_nm, (n,))]
        if result.flips_agreeing is not None:
            shapes.append((result.flips_agreeing, (n,)))
        for array, shape in shapes:
            if np.asarray(array).dtype.kind not in "biuf" or np.shape(array) != shape:
                return "holds orientations that are not N quaternions (N, 4) with N radii"
        return None
    objects = np.asarray(result.objects)
    if objects.dtype.kind not in "biufc" or objects.ndim not in (2, 3):
        return f"holds data of shape {objects.shape} ({objects.dtype}); expected 2-D or 3-D numbers"
    if result.support is not None and np.shape(result.support) != objects.shape:
        return f"has a support of shape {np.shape(result.support)} for objects {objects.shape}"
    if result.chi2 is not None and np.shape(result.chi2) != objects.shape[:1]:
        return f"has chi2 of shape {np.shape(result.chi2)} for {len(objects)} objects"
    return None


def _optional(group: h5py.Group, key: str) -> np.ndarray | None:
    return group[key][()] if key in group else None


def _origin(data: h5py.Dataset) -> tuple[float, float] | None:
    if "origin" not in data.attrs:
        return None
    y, x = np.asarray(data.attrs["origin"], float)[:2]
    return float(y), float(x)


def is_results_file(h5: h5py.File) -> bool:
    kind = h5.attrs.get("file_kind", b"")
    return (kind.decode() if isinstance(kind, bytes) else str(kind)) == "results"


def _in_order(name: str) -> tuple[str, int]:
    """image_2 before image_10; a group of another name (not one of ours) last of its kind."""
    kind, _, number = name.rpartition("_")
    return kind, int(number) if number.isdigit() else -1


@damaged_as_input_error
def read_results(path: str | Path) -> list[Result]:
    """Read every result from a file written by :func:`write_results`; a damaged one (a
    dataset missing or truncated, unreadable parameters) is refused by name."""
    results: list[Result] = []
    with open_h5(path) as h5:
        if not is_results_file(h5) or "entry_1" not in h5:
            raise InputError(path, "not a napari-cdinn results file")
        entry = h5["entry_1"]
        for name in sorted(entry, key=_in_order):
            group = entry[name]
            if name.startswith("image_"):
                result = ObjectResult(
                    objects=group["data"][()],
                    provenance=_read_provenance(group),
                    probe=_optional(group, "probe"),
                    support=_optional(group, "support"),
                    chi2=_optional(group, "chi2"),
                    origin=_origin(group["data"]),
                )
            elif name.startswith("orientation_"):
                result = OrientationResult(
                    group["quaternion"][()],
                    group["radius_nm"][()],
                    _read_provenance(group),
                    _optional(group, "flips_agreeing"),
                )
            else:
                continue
            problem = _misfit(result)
            if problem:
                raise InputError(path, f"damaged results file: {name} {problem}")
            results.append(result)
    return results


def write_tiff(path: str | Path, image: np.ndarray, metadata: dict[str, Any] | None = None) -> Path:
    """Write one real image or stack as float32 TIFF (e.g. an amplitude or phase), atomically."""
    image = np.asarray(image)
    if np.iscomplexobj(image):
        raise CdinnError(f"{path}: TIFF holds real images; write amplitude and phase separately")
    with atomic_path(path) as tmp:
        description = json.dumps({**(metadata or {}), "creator": CREATOR}, default=str)
        tifffile.imwrite(  # minisblack: a 3- or 4-frame stack must not become an RGB image
            tmp, image.astype(np.float32), description=description, photometric="minisblack"
        )
    return Path(path)
