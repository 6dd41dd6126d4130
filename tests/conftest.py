"""Shared fixtures for the core (Qt-free) tests: the real-data folder and small file writers."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

# The real experimental data (see ../shared/data/README.md); never copied into the project.
REAL_DATA = Path(
    os.environ.get("NAPARI_CDINN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
JOULE_PER_EV = 1.602176634e-19  # written out: the tests do not reuse the code's own constants


def real_file(relative: str) -> Path:
    """A file (or folder) of the real-data folder, or a skip saying why the test cannot run."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data folder {REAL_DATA} is absent (set NAPARI_CDINN_DATA to use one)")
    path = REAL_DATA / relative
    if not path.exists():
        pytest.skip(f"real data file {path} is absent (see ../shared/data/README.md)")
    return path


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="where the core tests run the networks and iterative methods (cuda: on a GPU "
        "machine, to check the torch paths that the CPU's numba loops stand in for)",
    )


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    """The device the tests compute on: "cpu" unless ``pytest --device cuda``."""
    chosen = request.config.getoption("--device")
    if chosen == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.fail("--device cuda, but torch sees no CUDA device")
    return chosen


@pytest.fixture(scope="session")
def real_path():
    """``real_path("cxi/x.cxi")``: a path in the shared real-data folder, skipping when absent."""
    return real_file


def _write_cxi(
    path: Path,
    frames: np.ndarray,
    *,
    entry: str = "entry_1",
    frames_at: str = "data_1/data",
    energy_ev: float | None = 8000.0,
    distance_m: float | None = 2.0,
    pixel_m: tuple[float, float] | None = (55e-6, 75e-6),  # (y, x)
    bit_mask: np.ndarray | None = None,
    translation: np.ndarray | None = None,
    translation_at: str = "sample_1/geometry_1/translation",
    probe: np.ndarray | None = None,
    mode: str = "w",
) -> Path:
    """A minimal CXI 1.6 file written with h5py alone (not with the project's own writer)."""
    with h5py.File(path, mode) as h5:
        if "cxi_version" not in h5:
            h5["cxi_version"] = 160
        group = h5.create_group(entry)
        group.create_dataset(frames_at, data=frames)
        detector = group.require_group("instrument_1/detector_1")
        source = group.require_group("instrument_1/source_1")
        if energy_ev is not None:
            source["energy"] = energy_ev * JOULE_PER_EV  # CXI: energy in joules
        if distance_m is not None:
            detector["distance"] = distance_m
        if pixel_m is not None:
            detector["y_pixel_size"], detector["x_pixel_size"] = pixel_m
        if bit_mask is not None:
            detector["mask"] = bit_mask
        if translation is not None:
            group[translation_at] = translation
        if probe is not None:
            source["illumination"] = probe
    return path


@pytest.fixture(scope="session")
def write_cxi():
    """``write_cxi(path, frames, **geometry)``: a minimal CXI 1.6 file written with h5py alone."""
    return _write_cxi
