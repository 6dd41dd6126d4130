"""Data objects that every reader returns and every algorithm consumes.

Conventions (see DESIGN.md): intensities are float32 ``(N, H, W)`` with the zero frequency at the
array centre; masks are boolean with True = valid pixel; objects are complex64; ptychography
positions are ``(N, 2)`` (y, x) in object pixels; orientations are unit quaternions (w, x, y, z).
Stacks that do not fit in memory are dask arrays and stay lazy until an algorithm asks for frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

PLANCK_EV_M = 1.239841984e-6  # h*c in eV*m: wavelength [m] = PLANCK_EV_M / energy [eV]
JOULE_PER_EV = 1.602176634e-19


@dataclass
class Metadata:
    """Where the data came from and the experimental geometry, when the file says it."""

    source: str | None = None
    reader: str = ""
    dataset: str | None = None  # the path inside the file the frames were read from
    energy_ev: float | None = None
    distance_m: float | None = None
    pixel_size_m: tuple[float, float] | None = None  # detector pixel (y, x)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def wavelength_m(self) -> float | None:
        return PLANCK_EV_M / self.energy_ev if self.energy_ev else None

    def object_pixel_size_m(self, shape: tuple[int, int]) -> tuple[float, float] | None:
        """Far-field object pixel size lambda*z/(N*p) along y and x, if the geometry is known."""
        if not (self.wavelength_m and self.distance_m and self.pixel_size_m):
            return None
        lz = self.wavelength_m * self.distance_m
        return (lz / (shape[0] * self.pixel_size_m[0]), lz / (shape[1] * self.pixel_size_m[1]))

    def frame_numbers(self, indices: Any) -> list[int]:
        """Frames ``indices`` of the data as the file numbers them: ``extra["frames"]`` when
        the data is a selection of the file's frames (the command line's ``--frames``)."""
        frames = self.extra.get("frames")
        return [int(i) if frames is None else int(frames[i]) for i in indices]

    def frame_list(self, indices: Any) -> str:
        """Frames ``indices`` as the file numbers them, for messages: "[3, 7]", at most five
        named ("[1, 2, 3, 4, 5] ...")."""
        indices = list(indices)
        return f"{self.frame_numbers(indices[:5])}{' ...' if len(indices) > 5 else ''}"

    def selected(self, indices: np.ndarray) -> Metadata:
        """This metadata for a selection ``indices`` of its frames (their file numbers kept)."""
        if "frames" not in self.extra:
            return self
        return replace(self, extra={**self.extra, "frames": self.frame_numbers(indices)})

    def as_dict(self) -> dict[str, Any]:
        """A flat, JSON-friendly summary (for layer metadata, `info` and result files)."""
        out: dict[str, Any] = {
            "source": self.source,
            "reader": self.reader,
            "dataset": self.dataset,
            "energy_ev": self.energy_ev,
            "wavelength_m": self.wavelength_m,
            "distance_m": self.distance_m,
            "pixel_size_m": list(self.pixel_size_m) if self.pixel_size_m else None,
        }
        out.update(self.extra)
        return {k: v for k, v in out.items() if v is not None}


@dataclass
class DiffractionStack:
    """Far-field intensities ``(N, H, W)``, numpy or dask, plus an optional validity mask."""

    intensities: Any  # np.ndarray | dask.array.Array, float32
    mask: np.ndarray | None = None  # (H, W) or (N, H, W) bool, True = valid pixel
    meta: Metadata = field(default_factory=Metadata)
    truth: np.ndarray | None = None  # (N, h, w) complex64 true objects, when known (simulations)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.intensities.shape)  # type: ignore[return-value]

    @property
    def n_frames(self) -> int:
        return int(self.intensities.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return tuple(self.intensities.shape[-2:])  # type: ignore[return-value]

    @property
    def is_lazy(self) -> bool:
        return not isinstance(self.intensities, np.ndarray)

    def subset(self, indices: Any) -> DiffractionStack:
        """Some frames only (an index array, boolean mask or slice), with their mask and truth."""
        indices = np.arange(self.n_frames)[indices]
        mask = self.mask[indices] if self.mask is not None and self.mask.ndim == 3 else self.mask
        truth = self.truth[indices] if self.truth is not None else None
        return DiffractionStack(self.intensities[indices], mask, self.meta.selected(indices), truth)

    def frames(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start:stop`` as an in-memory float32 array (computes lazy stacks piecewise)."""
        block = self.intensities[start:stop]
        return np.asarray(block.compute() if hasattr(block, "compute") else block, np.float32)


@dataclass
class PtychoScan:
    """A ptychography scan: the diffraction stack, where each frame was taken, and a probe guess."""

    stack: DiffractionStack
    positions: np.ndarray  # (N, 2) float (y, x) object pixels of each patch's top-left corner
    probe: np.ndarray | None = None  # (H, W) complex64, or (M, H, W) for several modes
    object_pixel_size_m: tuple[float, float] | None = None
    truth: np.ndarray | None = None  # the true object (simulations); positions index into it

    @property
    def meta(self) -> Metadata:
        return self.stack.meta

    def subset(self, indices: Any) -> PtychoScan:
        """The scan restricted to some positions (an index array, boolean mask or slice)."""
        indices = np.arange(len(self.positions))[indices]
        return PtychoScan(
            self.stack.subset(indices), self.positions[indices], self.probe,
            self.object_pixel_size_m, self.truth,
        )  # fmt: skip


@dataclass
class ShotSet:
    """Single-shot wide-angle scattering images ``(N, H, W)`` on the network's log scale, [0, 1]
    for log10(I / max I) from -5 to 0 (``simulate.wideangle.log_image``; 8-bit display images
    are taken as that scale / 255), float32."""

    images: np.ndarray
    meta: Metadata = field(default_factory=Metadata)
    scaling: str = field(kw_only=True)  # how the file's pixel values became these; readers say


Dataset = DiffractionStack | PtychoScan | ShotSet


@dataclass
class Provenance:
    """How a result was made: recorded with every result written to disk."""

    method: str
    model_name: str | None = None
    model_version: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float | None = None
    source: str | None = None


@dataclass
class ObjectResult:
    """Complex object(s): ``(N, H, W)`` per pattern (cdi) or ``(H, W)`` stitched (ptycho)."""

    objects: np.ndarray  # complex64
    provenance: Provenance
    probe: np.ndarray | None = None
    support: np.ndarray | None = None  # bool, same shape as objects
    chi2: np.ndarray | None = None  # reciprocal-space error per pattern, when computed
    origin: tuple[float, float] | None = None  # stitched: scan coordinate (y, x) of pixel [0, 0]

    @property
    def amplitude(self) -> np.ndarray:
        return np.abs(self.objects).astype(np.float32)

    @property
    def phase(self) -> np.ndarray:
        return np.angle(self.objects).astype(np.float32)


def at_limit(radii: np.ndarray | float, limits) -> np.ndarray:
    """Whether each radius sits at an end of ``limits`` (low, high nm), where the network and
    the fit clip their answers: no measurement there, the cluster may be larger (or smaller)."""
    radii = np.asarray(radii, float)[..., None]
    return np.isclose(radii, np.asarray(limits, float), rtol=0, atol=1e-3).any(axis=-1)


@dataclass
class OrientationResult:
    """Per shot: unit quaternion (w, x, y, z) in the icosahedral fundamental domain, radius in nm,
    and for the network how many of its eight test-time flips agree with the answer."""

    quaternions: np.ndarray  # (N, 4) float64
    radii_nm: np.ndarray  # (N,) float64
    provenance: Provenance
    flips_agreeing: np.ndarray | None = None  # (N,) int, of 8; None for fits

    @property
    def radius_at_limit(self) -> np.ndarray | None:
        """Per shot, whether its radius is pinned at an end of the model's range (parameter
        ``radius_range_nm``), where the answer is clipped: the cluster may be larger (or
        smaller); None when the result records no range."""
        limits = self.provenance.parameters.get("radius_range_nm")
        if not (isinstance(limits, list) and len(limits) == 2):
            return None
        return at_limit(self.radii_nm, limits)


Result = ObjectResult | OrientationResult
