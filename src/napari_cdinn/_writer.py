"""napari writers: results layers -> the documented HDF5 layout; one image -> float32 TIFF."""

from __future__ import annotations

from typing import Any

import numpy as np

from ._layers import DISPLAY, dataset_of
from .core import io
from .core.data import DiffractionStack, ObjectResult, OrientationResult, PtychoScan
from .core.errors import CdinnError


def write_results_h5(path: str, layer_data: list[tuple[Any, dict, str]]) -> list[str]:
    """Write the napari-cdinn results behind the given image layers (amplitude/phase pairs are one
    complex result; a wide-angle layer's network answers with the dock's fits and refinements of
    its shots) into one HDF5 file.  Layers that hold no result are refused, not guessed at."""
    results: list[ObjectResult | OrientationResult] = []
    for _data, meta, _kind in layer_data:
        metadata = meta.get("metadata", {})
        result = metadata.get("cdinn_result")
        if result is None:
            raise CdinnError(
                f"{path}: layer '{meta.get('name')}' is not a napari-cdinn result; "
                "save plain images as TIFF"
            )
        for each in (result, *metadata.get("cdinn_fits", ())):  # the Wide-angle dock's fits
            if not any(each is r for r in results):
                results.append(each)
    io.write_results(path, results)
    return [path]


def write_image_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """Write one image layer's data as float32 TIFF with its name and scale in the description;
    for a diffraction layer, the intensities it shows as log10(1 + I), not the display values
    (which would read back as intensities), NaN where its mask says nothing was measured (the
    readers mask NaN again; a zero would read back as a measured zero)."""
    description = {"name": meta.get("name"), "scale": list(np.ravel(meta.get("scale", [])))}
    cdinn = meta.get("metadata", {}).get("cdinn", {})
    dataset = dataset_of(meta.get("metadata", {}))
    if cdinn.get("display") == DISPLAY and isinstance(dataset, DiffractionStack | PtychoScan):
        stack = getattr(dataset, "stack", dataset)
        data = stack.frames()
        if stack.mask is not None:
            data = np.where(np.broadcast_to(stack.mask, data.shape), data, np.float32(np.nan))
        description["values"] = "intensities, NaN where not measured"
    io.write_tiff(path, np.asarray(data), description)
    return [path]
