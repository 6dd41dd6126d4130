"""Core data objects <-> napari layer-data tuples; the one place that knows how layers look.

Diffraction is shown as log10(1 + I), its contrast from all frames in memory, or from 8 spread
over a lazy stack (so that one is never read whole); the exact data object travels in
``layer.metadata["cdinn"]["data"]`` so algorithms use the raw intensities, not the display
values.  Complex objects become amplitude and phase layers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .core.data import (
    Dataset,
    DiffractionStack,
    ObjectResult,
    Provenance,
    PtychoScan,
    Result,
    ShotSet,
)
from .core.io import SUPPORTED_SUFFIXES, describe

LayerData = tuple[Any, dict[str, Any], str]
DISPLAY = "log10(1 + I)"


def source_name(data: Dataset | Result, fallback: str = "data") -> str:
    source = data.meta.source if hasattr(data, "meta") else data.provenance.source
    if not source:
        return fallback
    name = Path(source).name
    for suffix in (".bz2", *SUPPORTED_SUFFIXES):  # x.npz.bz2: .bz2, then .npz
        name = name.removesuffix(suffix)
    return name or fallback


def log_display(intensities: Any) -> Any:
    """log10(1 + I): numpy stays numpy, dask stays lazy."""
    if isinstance(intensities, np.ndarray):
        return np.log10(1 + np.maximum(intensities, 0))
    return (1 + intensities.clip(0)).map_blocks(np.log10, dtype=np.float32)


def _contrast(frames: Any, samples: int = 8) -> tuple[float, float]:
    """The range over the finite pixels (a lazily read frame may hold NaN gaps) of all frames
    in memory, or of up to ``samples`` frames spread over a lazy stack (which only those are
    read from): not frame 0 alone, which a missed first shot made (0, 1)."""
    sample = frames
    if np.ndim(frames) == 3 and not isinstance(frames, np.ndarray):
        count = min(samples, len(frames))
        sample = frames[np.unique(np.linspace(0, len(frames) - 1, count).astype(int))]
    sample = np.asarray(sample.compute() if hasattr(sample, "compute") else sample)
    finite = sample[np.isfinite(sample)]
    if not finite.size:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return (low, high) if high > low else (low, low + 1.0)


def layers_for_dataset(data: Dataset, name: str | None = None) -> list[LayerData]:
    """Layers for a freshly read dataset: diffraction (log), invalid pixels, scan positions."""
    name = name or source_name(data)
    summary = describe(data)
    cdinn = {"kind": type(data).__name__, "data": data, "summary": summary}
    if isinstance(data, ShotSet):
        kwargs = {
            "name": f"{name} shots",
            "colormap": "inferno",
            "contrast_limits": _contrast(data.images),
            "metadata": {"cdinn": {**cdinn, "display": data.scaling}},
        }
        return [(data.images, kwargs, "image")]
    stack = data.stack if isinstance(data, PtychoScan) else data
    shown = log_display(stack.intensities)
    layers: list[LayerData] = [
        (
            shown,
            {
                "name": f"{name} diffraction",
                "colormap": "magma",
                "contrast_limits": _contrast(shown),
                "metadata": {"cdinn": {**cdinn, "display": DISPLAY}},
            },
            "image",
        )
    ]
    if stack.mask is not None and not stack.mask.all():
        invalid = (~stack.mask).astype(np.uint8)
        layers.append((invalid, {"name": f"{name} invalid pixels", "opacity": 0.5}, "labels"))
    if isinstance(data, PtychoScan):
        layers.append(
            (
                data.positions,
                {
                    "name": f"{name} scan positions",
                    "size": max(2.0, stack.frame_shape[0] / 16),  # visible at frame scale
                    "face_color": "cyan",
                    "features": {"frame": np.arange(len(data.positions))},
                    # positions are the frames' top-left corners: drawn where the beam was,
                    # the middle of each frame's window, over the reconstructions
                    "translate": tuple(np.asarray(stack.frame_shape[-2:]) / 2),
                    "metadata": {
                        "cdinn": {
                            "kind": "positions",
                            "units": "object pixels (y, x) of each frame's top-left corner, "
                            "drawn at its middle (the layer's translate)",
                        }
                    },
                },
                "points",
            )
        )
    return layers


def result_label(provenance: Provenance) -> str:
    """The method, and the model's name when it is not a bundled model: a retrained network's
    layers then sit beside the bundled network's instead of taking their name."""
    if provenance.model_name is None:
        return provenance.method
    from .core.nn.registry import bundled_names  # torch: imported only once a network ran

    if provenance.model_name in bundled_names():
        return provenance.method
    return f"{provenance.method} {provenance.model_name}"


def layers_for_result(
    result: ObjectResult, name: str | None = None, amplitude_word: str = "amplitude"
) -> list[LayerData]:
    """Amplitude (or "shape") and phase layers of a complex result (phase in twilight, (-pi, pi]),
    placed over its data: a stitched object at its origin on the scan, a network's objects of
    resampled patterns at their pixel scale (``object_pixel_scale``) beside the iterative ones."""
    name = name or source_name(result, "result")
    label = result_label(result.provenance)
    common = {"cdinn_result": result}
    placed = {} if result.origin is None else {"translate": result.origin}  # over the scan
    scale = result.provenance.parameters.get("object_pixel_scale")
    if scale is not None:  # (y, x); one number in files of earlier versions
        along = tuple(np.broadcast_to(np.asarray(scale, float), 2))
        placed["scale"] = (1,) * (result.objects.ndim - 2) + along
    amplitude = result.amplitude
    return [
        (
            amplitude,
            {
                "name": f"{name} {amplitude_word} ({label})",
                "colormap": "gray",
                "contrast_limits": _contrast(amplitude),
                "metadata": {**common, "component": "amplitude"},
                **placed,
            },
            "image",
        ),
        (
            result.phase,
            {
                "name": f"{name} phase ({label})",
                "colormap": "twilight",
                "contrast_limits": (-np.pi, np.pi),
                "metadata": {**common, "component": "phase"},
                **placed,
            },
            "image",
        ),
    ]


def dataset_of(metadata: dict[str, Any]) -> DiffractionStack | PtychoScan | ShotSet | None:
    """The data object a layer was made from, if napari-cdinn made it."""
    return metadata.get("cdinn", {}).get("data")
