"""Image readers: TIFF (single, multi-page, a folder of frames) and greyscale PNG single shots."""

from __future__ import annotations

import re
from pathlib import Path

import dask
import dask.array as da
import imageio.v3 as iio
import numpy as np
import tifffile

from ..data import DiffractionStack, Metadata, ShotSet
from ..errors import InputError
from . import hdf5  # hdf5.LAZY_BYTES is read at call time: one threshold for all readers
from .checks import as_intensities, check_stack_shape, not_opened, repair_intensities, to_stack

TIFF_SUFFIXES = (".tif", ".tiff")
PNG_SUFFIXES = (".png",)


def natural_key(path: Path) -> list[object]:
    """Sort key that puts frame_2 before frame_10."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def frame_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """The files in ``folder`` with one of ``suffixes``, in natural order."""
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes),
        key=natural_key,
    )


def _files_of(path: str | Path | list[Path], suffixes: tuple[str, ...]) -> tuple[list[Path], str]:
    """The frame files of a file, a folder or a list of files (in the order given), and the
    name that messages and provenance give them (for several files, the first's absolute path:
    a result file outlives the folder it was made in)."""
    if isinstance(path, list | tuple):
        files = [Path(p) for p in path]
        if len(files) == 1:
            return files, str(files[0])
        return files, f"{files[0].resolve()} and {len(files) - 1} more files"
    path = Path(path)
    return (frame_files(path, suffixes) if path.is_dir() else [path]), str(path)


def _read_tiff_file(path: Path, page: int | range | None = None) -> np.ndarray:
    try:
        return tifffile.imread(path, key=page)
    except (FileNotFoundError, PermissionError) as err:
        raise not_opened(path, err) from None
    except Exception as err:  # tifffile raises many types for damaged files
        raise InputError(path, f"not a readable TIFF file (truncated or corrupt?): {err}") from None


def _read_tiff_frame(path: Path, page: int, frame: tuple[int, ...]) -> np.ndarray:
    """One frame of a lazily read stack, refused by name when it is not of the first one's
    shape (only the first file's header is read when the stack is opened)."""
    image = _read_tiff_file(path, page)
    if image.shape != frame:
        raise InputError(path, f"frame shape {image.shape} differs from the first frame {frame}")
    return image


def _tiff_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, range | None]:
    """Shape and dtype of a TIFF file's frames, and the pages to read: None for one series
    (tifffile's own reading), every page for a file of several series (pages written one by
    one), which tifffile would read as its first page alone."""
    try:
        with tifffile.TiffFile(path) as tif:
            series, pages = tif.series[0], None
            colour = "S" in series.axes  # samples per pixel: RGB(A), not one intensity
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
            if len(tif.series) > 1:
                found = {(tuple(p.shape), np.dtype(p.dtype)) for p in tif.pages}
                colour = colour or any("S" in s.axes for s in tif.series)
                if len(found) > 1:
                    raise InputError(
                        path, f"its {len(tif.pages)} pages differ in shape or type: "
                        + ", ".join(sorted(f"{shape_} {dtype_}" for shape_, dtype_ in found)),
                    )  # fmt: skip
                pages = range(len(tif.pages))
                shape = (len(tif.pages), *shape)
    except (FileNotFoundError, PermissionError) as err:
        raise not_opened(path, err) from None
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"not a readable TIFF file (truncated or corrupt?): {err}") from None
    if colour:
        raise InputError(
            path,
            "a colour (RGB) TIFF; diffraction frames are greyscale intensities (a stack of 3 or 4 "
            "frames saved by tifffile is tagged RGB unless written with photometric='minisblack')",
        )
    return shape, dtype, pages


def read_tiff(path: str | Path | list[Path], lazy: bool | None = None) -> DiffractionStack:
    """A TIFF file (one frame or a multi-page stack), a folder of TIFF frames or a list of
    TIFF frame files."""
    files, source = _files_of(path, TIFF_SUFFIXES)
    if not files:
        raise InputError(path, "the folder holds no .tif/.tiff frames")
    first_shape, dtype, first_pages = _tiff_layout(files[0])
    pages = len(files) if len(files) > 1 else None
    shape = (pages, *first_shape) if pages else first_shape
    check_stack_shape(shape, dtype, source)
    if lazy is None:
        lazy = int(np.prod(shape)) * dtype.itemsize > hdf5.LAZY_BYTES
    meta = Metadata(source=source, reader="tiff", extra={"n_files": len(files)})
    if lazy:  # one delayed read per frame: napari reads only the frames it shows
        per_file = int(np.prod(first_shape[:-2]))  # frames in each file (multi-page files too)
        reads = [(f, i) for f in files for i in range(per_file)]  # page i: a (1, H, W) file too
        frame = shape[-2:]
        parts = [
            da.from_delayed(dask.delayed(_read_tiff_frame)(*r, frame), frame, dtype) for r in reads
        ]
        return DiffractionStack(as_intensities(da.stack(parts)), None, meta)
    arrays = [_read_tiff_file(f, first_pages) for f in files]
    for f, a in zip(files, arrays, strict=True):
        if a.shape != first_shape:
            raise InputError(f, f"frame shape {a.shape} differs from the first frame {first_shape}")
    frames = np.stack(arrays) if pages else arrays[0]
    frames, mask = repair_intensities(as_intensities(to_stack(frames, source)), None, source)
    return DiffractionStack(frames, mask, meta)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_png_file(path: Path) -> np.ndarray:
    """One greyscale PNG image: its values as stored (8 or 16 bits). A file of another format
    named .png is refused, not decoded as what it is (a float TIFF misread as a display image)."""
    try:
        with open(path, "rb") as handle:
            if handle.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                raise InputError(path, "not a PNG image (its first bytes are not PNG's signature)")
        image = iio.imread(path, extension=".png")
    except (FileNotFoundError, PermissionError) as err:
        raise not_opened(path, err) from None
    except InputError:
        raise
    except Exception as err:
        raise InputError(path, f"not a readable PNG image (truncated or corrupt?): {err}") from None
    if image.dtype.kind not in "uib":
        raise InputError(path, f"a PNG of {image.dtype} values; PNG shots are 1-, 8- or 16-bit")
    if image.ndim == 3:
        colour = image[..., :1] if image.shape[-1] == 2 else image[..., :3]  # grey+alpha: grey
        if not (colour == colour[..., :1]).all():
            raise InputError(path, "colour image; single shots must be greyscale")
        image = colour[..., 0]
    if image.ndim != 2:
        raise InputError(path, f"image has shape {image.shape}; expected a 2-D greyscale image")
    return image


def read_png(path: str | Path | list[Path]) -> ShotSet:
    """Greyscale PNG single shot(s): one file, a folder of PNGs or a list of PNG files, scaled
    to 0..1.

    Such images (like the FLASH shots of Barke et al.) are display renderings of the log of the
    intensity; the wide-angle mode maps them to log intensity (see its documentation).
    """
    files, source = _files_of(path, PNG_SUFFIXES)
    if not files:
        raise InputError(path, "the folder holds no .png images")
    images = [_read_png_file(f) for f in files]
    for f, image in zip(files, images, strict=True):
        if image.shape != images[0].shape:
            raise InputError(f, f"image shape {image.shape} differs from {images[0].shape}")
        if image.dtype != images[0].dtype:  # one scale for the stack: 8 bits or 16, not both
            raise InputError(
                f, f"a {image.dtype} image among {images[0].dtype} ones ({files[0].name})"
            )
    dtype = images[0].dtype
    depth = 1.0 if dtype.kind == "b" else float(np.iinfo(dtype).max)  # 1-bit PNGs: bool
    stack = np.stack(images).astype(np.float32) / depth
    meta = Metadata(source=source, reader="png", extra={"files": [f.name for f in files]})
    return ShotSet(stack, meta, scaling=f"display value / {depth:g}")
