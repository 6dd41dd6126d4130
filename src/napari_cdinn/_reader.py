"""napari reader: diffraction files dropped on the viewer become layers (via ``core.io``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from ._layers import LayerData, layers_for_dataset, layers_for_result
from .core import io
from .core.data import ObjectResult
from .core.errors import InputError, InputWarning

ReaderFunction = Callable[[str | list[str]], list[LayerData]]


def get_reader(path: str | list[str]) -> ReaderFunction | None:
    """Return :func:`read_layers` for files napari-cdinn can use, ``None`` for others.

    An HDF5 file that opens but holds no 2-4-D numeric dataset is left to other plugins, with a
    warning saying why.  Unreadable (corrupt, truncated) files still get the reader, so the user
    sees our message naming the problem rather than a generic "no reader" one.
    """
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or any(io.file_kind(p) is None for p in paths):
        return None
    for p in paths:
        if io.file_kind(p) in ("hdf5", "cxi"):
            try:
                if not io.list_datasets(p):
                    warnings.warn(
                        f"{p}: no numeric dataset of 2 to 4 dimensions; napari-cdinn cannot "
                        "show it",
                        InputWarning,
                        stacklevel=2,
                    )
                    return None
            except InputError:
                pass  # unreadable: let read_layers report it clearly
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read one or several files into layers; raises :class:`InputError` naming a bad file."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        if io.is_results(p):
            results = io.read_results(p)
            for result in results:
                if isinstance(result, ObjectResult):
                    layers += layers_for_result(result)
            if not layers:
                raise InputError(p, "results file holds no image results to show")
        else:
            layers += layers_for_dataset(io.read(p))
    return layers
