"""napari reader: diffraction files dropped on the viewer become layers (via ``core.io``)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

from . import _settings
from ._layers import LayerData, layers_for_dataset, layers_for_result
from .core import io
from .core.data import DiffractionStack, ObjectResult
from .core.errors import CdinnError, InputError, InputWarning
from .core.progress import run_to_end

# napari runs readers in its own (GUI) thread: invert on open keeps to stacks the network
# answers in about a second on 2 CPU cores (1024 frames froze the window 4.6 s); larger
# ones go to the Invert CDI dock, whose worker shows progress and can be cancelled
MAX_FRAMES_ON_OPEN = 256

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
        # a results file holds complex objects, which are not "numeric datasets": never decline it
        if io.file_kind(p) in ("hdf5", "cxi") and not io.is_results(p):
            try:
                reason = io.no_frames_reason(p)
                if reason:
                    warnings.warn(
                        f"{p}: {reason}; napari-cdinn cannot show it",
                        InputWarning,
                        stacklevel=2,
                    )
                    return None
            except InputError:
                pass  # unreadable: let read_layers report it clearly
    return read_layers


def read_layers(path: str | list[str]) -> list[LayerData]:
    """Read one or several files into layers; raises :class:`InputError` naming a bad file.
    Several PNG or TIFF frames given together (napari's *Open Files as Stack*, or a drop with
    Shift held) become one stack, in the order given, as ``io.read`` reads a list of them."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if io.one_stack_of_frames(paths):
        return stack_layers(io.read(paths))
    layers: list[LayerData] = []
    for p in paths:
        if io.is_results(p):
            results = io.read_results(p)
            for result in results:
                if isinstance(result, ObjectResult):
                    layers += layers_for_result(result)
            if not layers:
                raise InputError(
                    p, "results file holds orientations and radii only, no images to show "
                    "(napari-cdinn info lists them; the Wide-angle dock shows its own answers "
                    "beside the shots)",
                )  # fmt: skip
        else:
            layers += stack_layers(io.read(p))
    return layers


def stack_layers(data: object) -> list[LayerData]:
    """A dataset's layers, and the network's with "invert on open"."""
    layers = layers_for_dataset(data)
    if _settings.invert_on_open():
        layers += network_layers(data)
    return layers


def network_layers(data: object) -> list[LayerData]:
    """The CDI network's shape and phase for a freshly opened stack ("invert on open").

    Skipped, with a warning, for data the network cannot take at once (lazy stacks larger than
    memory, scans, single shots) or patterns it refuses; the data layers are shown regardless.
    """
    if not isinstance(data, DiffractionStack) or data.meta.extra.get("mode", "cdi") != "cdi":
        return []  # e.g. wide-angle shots: the Wide-angle dock's network, not this one
    if data.is_lazy or data.n_frames > MAX_FRAMES_ON_OPEN:
        warnings.warn(
            f"{data.meta.source}: invert on open skips stacks kept on disk or over "
            f"{MAX_FRAMES_ON_OPEN} frames (this one: {data.n_frames}); use the Invert CDI dock",
            InputWarning,
            stacklevel=2,
        )
        return []
    from .core import cdi  # imports torch (seconds, ~200 MB): only when a network runs

    try:
        steps = cdi.invert_steps(data, ["nn"], device=_settings.device_choice())
        result = run_to_end(steps)["nn"]
    except CdinnError as err:
        warnings.warn(f"invert on open: {err}", InputWarning, stacklevel=2)
        return []
    except Exception as err:  # e.g. a GPU out of memory: the data layers are shown regardless
        warnings.warn(
            f"{data.meta.source}: invert on open failed ({type(err).__name__}: {err}); the "
            "Invert CDI dock can run it again",
            InputWarning,
            stacklevel=2,
        )
        return []
    return layers_for_result(result, amplitude_word="shape")
