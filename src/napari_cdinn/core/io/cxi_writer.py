"""Write diffraction stacks and ptychography scans as CXI 1.6 files that :func:`read_cxi` reads.

Simulated truth goes to ``/entry_1/sample_1/true_object`` (complex64; ``(N, H, W)`` objects for a
stack of independent patterns, one ``(Ho, Wo)`` object for a scan), so anyone can score results,
and the simulation's settings (seed, photons, sizes) to that group's ``simulation`` attribute
(JSON).
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ..data import JOULE_PER_EV, PLANCK_EV_M, DiffractionStack, Metadata, PtychoScan
from .results import atomic_path, mark_as_ours

# A plausible hard X-ray geometry for simulated data: 10 keV, 75 um pixels (Eiger-like).
SIMULATED_ENERGY_EV = 10_000.0
SIMULATED_PIXEL_M = 75e-6
SIMULATED_OBJECT_PIXEL_M = 10e-9


def simulated_distance_m(frame: int) -> float:
    """Detector distance that makes the far-field object pixel 10 nm for ``frame`` pixels."""
    wavelength = Metadata(energy_ev=SIMULATED_ENERGY_EV).wavelength_m
    return SIMULATED_OBJECT_PIXEL_M * frame * SIMULATED_PIXEL_M / wavelength


def write_cxi(path: str | Path, data: DiffractionStack | PtychoScan) -> Path:
    """Write ``data`` (in memory) to ``path`` atomically, with the simulated geometry if unset."""
    stack = data.stack if isinstance(data, PtychoScan) else data
    meta = stack.meta
    frame = stack.frame_shape[0]
    energy = meta.energy_ev or SIMULATED_ENERGY_EV
    distance = meta.distance_m or simulated_distance_m(frame)
    pixel = meta.pixel_size_m or (SIMULATED_PIXEL_M, SIMULATED_PIXEL_M)
    with atomic_path(path, writes="data") as tmp, h5py.File(tmp, "w") as h5:
        mark_as_ours(h5)
        h5["cxi_version"] = 160
        entry = h5.create_group("entry_1")
        frames = np.asarray(stack.intensities, np.float32)
        detector = entry.create_group("instrument_1/detector_1")
        detector.create_dataset(
            "data", data=frames, chunks=(1, *frames.shape[1:]), compression="gzip"
        )
        entry["data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
        detector["distance"] = distance
        detector["y_pixel_size"], detector["x_pixel_size"] = pixel
        if stack.mask is not None:
            detector["mask"] = (~stack.mask).astype(np.uint32)  # CXI: 0 = good pixel
        source = entry.create_group("instrument_1/source_1")
        source["energy"] = energy * JOULE_PER_EV
        truth = stack.truth
        if isinstance(data, PtychoScan):
            geometry = Metadata(energy_ev=energy, distance_m=distance, pixel_size_m=pixel)
            object_pixel = np.asarray(
                data.object_pixel_size_m or geometry.object_pixel_size_m(stack.frame_shape)
            )
            translation = np.zeros((len(data.positions), 3))
            translation[:, [1, 0]] = -data.positions * object_pixel
            entry["sample_1/geometry_1/translation"] = translation
            if data.probe is not None:
                source["illumination"] = data.probe.astype(np.complex64)
            truth = data.truth
        if truth is not None:
            entry.create_dataset(
                "sample_1/true_object", data=truth.astype(np.complex64), compression="gzip"
            )
        if "simulation" in meta.extra:  # how it was made: seed, dose, sizes
            sample = entry.require_group("sample_1")
            sample.attrs["simulation"] = json.dumps(meta.extra["simulation"], default=str)
    return Path(path)


def write_shots(
    path: str | Path,
    intensities: np.ndarray,
    orientations: np.ndarray,
    radii_nm: np.ndarray,
    wavelength_nm: float,
    settings: dict,
) -> Path:
    """Simulated wide-angle shots as CXI: intensities at ``/entry_1/data_1/data``, the true
    orientations (N, 4) and radii (N,) under ``/entry_1/sample_1`` (``orientation``,
    ``radius_nm``), the simulator's settings as attributes of ``sample_1``."""
    with atomic_path(path, writes="data") as tmp, h5py.File(tmp, "w") as h5:
        mark_as_ours(h5)
        h5["cxi_version"] = 160
        entry = h5.create_group("entry_1")
        detector = entry.create_group("instrument_1/detector_1")
        frames = np.asarray(intensities, np.float32)
        detector.create_dataset(
            "data", data=frames, chunks=(1, *frames.shape[1:]), compression="gzip"
        )
        entry["data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
        energy_ev = PLANCK_EV_M / (wavelength_nm * 1e-9)
        entry["instrument_1/source_1/energy"] = energy_ev * JOULE_PER_EV
        sample = entry.create_group("sample_1")
        sample["orientation"] = np.asarray(orientations, np.float64)
        sample["radius_nm"] = np.asarray(radii_nm, np.float64)
        for key, value in settings.items():
            sample.attrs[key] = value
    return Path(path)
