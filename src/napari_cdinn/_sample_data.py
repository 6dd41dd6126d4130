"""napari sample data: the simulated files shipped in ``sample_data/`` (inside the wheel too)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ._layers import LayerData
from ._reader import stack_layers
from .core import io


def sample_path(name: str) -> Path:
    """A bundled sample file: inside the installed package, or in the source tree's sample_data/."""
    packaged = Path(str(files("napari_cdinn"))) / "sample_data" / name
    if packaged.exists():
        return packaged
    return Path(__file__).resolve().parents[2] / "sample_data" / name


def _sample(name: str) -> list[LayerData]:
    """A sample's layers, as a file opened: with the network's when "invert on open" is set."""
    return stack_layers(io.read(sample_path(name)))


def cdi_sample() -> list[LayerData]:
    """32 simulated Bragg CDI patterns (64 x 64, 1e7 photons each) with their true crystals."""
    return _sample("cdi_crystals.cxi")


def ptycho_sample() -> list[LayerData]:
    """A simulated 169-position raster scan (64 x 64 frames) of a textured object, with probe."""
    return _sample("ptycho_scan.cxi")


def wideangle_sample() -> list[LayerData]:
    """8 simulated wide-angle shots of silver icosahedra (128 x 128, MSFT, 1e8 photons each)."""
    return _sample("wideangle_shots.cxi")
