"""napari-cdinn: neural-network inversion of coherent X-ray diffraction data, in napari and a CLI."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-cdinn")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
