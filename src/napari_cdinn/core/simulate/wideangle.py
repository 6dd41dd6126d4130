"""Wide-angle single-shot scattering of icosahedral silver clusters: the multi-slice Fourier
transform (MSFT) model of Barke et al. (2015, Nat. Commun. 6, 6187), as used by Stielow et al.
(2020) to train their network.

Physics.  The beam runs along +z.  Every thin slice of the cluster at depth z radiates like the
first Born approximation, but lit by the field that is left after the material in front of it
(Lambert-Beer attenuation and refractive phase, exp(-a t) with t the thickness in front and
a = 1 / (2 L_abs) + i k0 delta), and its wave reaches the detector pixel at k_perp with the phase
q_z z of the curved Ewald sphere, q_z = k0 - sqrt(k0^2 - k_perp^2):

    A(k_perp) = integral dx dy e^(-i k_perp . r) integral dz e^(i q_z z) rho(r, z) e^(-a t(r, z))

Speed.  A convex cluster meets each column (x, y) in one chord [z_in, z_out], where
t = z - z_in, so the z integral is exact:

    integral = [e^(i q_z z_out) e^(-a L) - e^(i q_z z_in)] / (i q_z - a),  L = z_out - z_in

This chord integral is a smooth (entire) function of q_z, interpolated between a few Chebyshev
nodes of q_z; at each node the sum over columns is a separable matrix DFT straight onto the detector grid (no
zero-padded FFT).  :func:`reference_pattern` does the same physics by brute force, slice by
slice, for the tests and the benchmark.

Detector.  ``pixels`` x ``pixels`` samples uniform in k_perp (an Ewald-sphere map, as pyMSFT's
default), k_perp = k0 sin(``max_angle``) at the outer edges of the edge pixels (the corners reach
arcsin(sqrt 2 sin ``max_angle``)).  Intensities are counts per pixel of that grid: |A|^2 (per
solid angle) times the pixel's solid angle, which grows as k0 / k_z towards the edges.  The
beam's polarisation is left out (for a beam polarised along x a factor 1 - sin^2(psi)
cos^2(phi), psi the scattering angle, down to 0.5 at the corners: the image flips keep it, the
transposes would not).
Images are stored and learned as log10 intensity (:func:`log_image`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from .. import icosahedral

WAVELENGTH = 13.5  # nm, FLASH in Barke et al. 2015
ABSORPTION_LENGTH = 12.5  # nm, silver at 13.5 nm (intensity 1/e length)
REFRACTIVE_DECREMENT = 0.1  # delta of silver near 92 eV, order of the tabulated value
RADII = (30.0, 160.0)  # nm, circumradius range of the training clusters
EDGE_ON = 0.08  # |n_z| of a facet below which the chord map is sampled twice as finely
DYNAMIC_RANGE = 5.0  # decades of intensity kept in log images (a pnCCD's range, roughly)


@dataclass(frozen=True)
class Detector:
    """A detector grid uniform in k_perp, symmetric about the forward direction, which lies
    between the four central pixels (so that flips and transposes of an image are exact)."""

    pixels: int = 128
    max_angle: float = 30.0  # degrees, scattering angle at the edge midpoints
    wavelength: float = WAVELENGTH
    axis: tuple[float, ...] | None = None  # explicit k_perp samples instead (e.g. a peer's grid)

    @property
    def k0(self) -> float:
        return 2 * np.pi / self.wavelength

    @cached_property
    def k_axis(self) -> np.ndarray:
        """k_perp of each row (y) and column (x), nm^-1."""
        if self.axis is not None:
            return np.asarray(self.axis, float)
        edge = self.k0 * np.sin(np.radians(self.max_angle))
        return (np.arange(self.pixels) - (self.pixels - 1) / 2) * (2 * edge / self.pixels)

    @cached_property
    def q_z(self) -> np.ndarray:
        """(pixels, pixels) longitudinal momentum transfer of each pixel."""
        k_perp2 = self.k_axis[:, None] ** 2 + self.k_axis[None, :] ** 2
        return self.k0 - np.sqrt(self.k0**2 - k_perp2)

    @cached_property
    def solid_angle_factor(self) -> np.ndarray:
        """k0 / k_z: a k_perp pixel's solid angle is dk_x dk_y / (k0 k_z)."""
        return self.k0 / (self.k0 - self.q_z)


@dataclass(frozen=True)
class Material:
    absorption_length: float = ABSORPTION_LENGTH  # nm
    refractive_decrement: float = REFRACTIVE_DECREMENT  # delta in n = 1 - delta + i beta
    wavelength: float = WAVELENGTH

    @property
    def attenuation(self) -> complex:
        """a in exp(-a t): the field after a thickness t of material (nm^-1)."""
        k0 = 2 * np.pi / self.wavelength
        return 1 / (2 * self.absorption_length) + 1j * k0 * self.refractive_decrement


@dataclass
class Simulator:
    """MSFT patterns of icosahedra on one detector; reuses its DFT matrices between calls.

    ``sampling``: real-space grid step (nm) of the column maps (at most 1/64 of the cluster's
    diameter, and half the default when a facet lies within 4.6 degrees of the beam, whose
    silhouette edge is then almost a step); the default samples the
    detector's largest k_perp sixteen times over (the chord map's kinks at the projected edges,
    steep where a facet lies almost along the beam, alias little at that rate; see
    ``benchmarks/bench_wideangle.py`` for the agreement with the slice reference)."""

    detector: Detector = field(default_factory=Detector)
    material: Material = field(default_factory=Material)
    sampling: float | None = None

    def __post_init__(self) -> None:
        k_max = np.abs(self.detector.k_axis).max()
        self.step = self.sampling or float(np.pi / (8 * k_max))
        self._nodes: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # Chebyshev, per count

    def amplitude(self, radius: float, orientation: np.ndarray) -> np.ndarray:
        """Complex far-field amplitude (pixels, pixels) of an icosahedron of circumradius
        ``radius`` (nm) in ``orientation`` (unit quaternion)."""
        normals, offsets = turned_planes(radius, orientation)
        step = min(self.step, 2 * radius / 64)  # at least 64 columns across
        if np.abs(normals[:, 2]).min() < EDGE_ON:  # a facet along the beam: a near-step edge
            step /= 2
        n = int(np.ceil(2 * radius / step)) + 2
        axis = (np.arange(n) - (n - 1) / 2) * step
        nodes, weights = self._interpolation(_node_count(self.detector, radius))
        integrals = np.empty((len(nodes), n, n), np.complex64)
        _chord_integrals(normals, offsets, axis, nodes, self.material.attenuation, integrals)
        dft = np.exp(-1j * self.detector.k_axis[:, None] * axis[None, :]).astype(np.complex64)
        with _blas().limit(limits=1, user_api="blas"):  # small products: threads only contend
            spectra = dft @ integrals @ dft.T  # (M, pixels, pixels): rows y, columns x
        return np.einsum("mij,mij->ij", weights, spectra) * step**2

    def _interpolation(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        if m not in self._nodes:
            self._nodes[m] = _chebyshev(float(self.detector.q_z.max()), m, self.detector.q_z)
        return self._nodes[m]

    def intensity(self, radius: float, orientation: np.ndarray) -> np.ndarray:
        """Scattered intensity per detector pixel (arbitrary but common units): per solid angle
        times the pixel's solid angle (``Detector.solid_angle_factor``)."""
        amplitude = self.amplitude(radius, orientation)
        return (amplitude.real**2 + amplitude.imag**2) * self.detector.solid_angle_factor


def chords(
    radius: float, orientation: np.ndarray, axis: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Where each column (y = axis[i], x = axis[j]) along z enters and leaves the icosahedron
    of circumradius ``radius`` turned by ``orientation``: z_in, z_out (N, N), equal (0) where
    it misses."""
    normals, offsets = turned_planes(radius, orientation)
    y, x = axis[:, None, None], axis[None, :, None]
    room = offsets - normals[:, 0] * x - normals[:, 1] * y  # n_z z <= room, per face
    n_z = np.where(np.abs(normals[:, 2]) < 1e-12, 1e-12, normals[:, 2])
    bound = room / n_z
    z_out = np.where(n_z > 0, bound, np.inf).min(axis=-1)
    z_in = np.where(n_z < 0, bound, -np.inf).max(axis=-1)
    hit = z_out > z_in
    return np.where(hit, z_in, 0.0), np.where(hit, z_out, 0.0)


def turned_planes(radius: float, orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The icosahedron's 20 face planes n . v <= d, turned by ``orientation``."""
    normals, offsets = _unit_planes()
    return normals @ icosahedral.rotation_matrix(orientation).T, offsets * radius


@lru_cache(maxsize=1)
def _blas() -> ThreadpoolController:
    """The process's thread pools, inspected on first use only: the DFTs run on one BLAS
    thread (multithreaded OpenBLAS was 20 x slower under contention from other work)."""
    return ThreadpoolController()


@lru_cache(maxsize=1)
def _unit_planes() -> tuple[np.ndarray, np.ndarray]:
    return icosahedral.face_planes(1.0)


@numba.njit(parallel=True, cache=True)
def _chord_integrals(normals, offsets, axis, nodes, a, out) -> None:
    """out[m, i, j]: the integral along column (y = axis[i], x = axis[j]) of
    e^(i q z) e^(-a (z - z_in)) over its chord through the cluster, at q = nodes[m]:
    e^(i q z_in) (e^((i q - a) L) - 1) / (i q - a), L the chord's length.  The chords are found
    in float64; the node sums in float32 with real cos and sin (2.4 x faster than complex128
    exponentials; relative difference ~1e-6, far below the 8-bit images' quantisation)."""
    n, m = axis.size, nodes.size
    q = nodes.astype(np.float32)
    rate = 1j * nodes - a  # per node, the same for every column
    turn_rate = rate.imag.astype(np.float32)  # phase per nm of e^((i q - a) z)
    inverse = 1 / rate
    inverse_re, inverse_im = inverse.real.astype(np.float32), inverse.imag.astype(np.float32)
    for i in numba.prange(n):
        for j in range(n):
            z_in, z_out = -np.inf, np.inf
            for f in range(normals.shape[0]):
                n_z = normals[f, 2]
                room = offsets[f] - normals[f, 0] * axis[j] - normals[f, 1] * axis[i]
                if n_z > 1e-12:
                    z_out = min(z_out, room / n_z)
                elif n_z < -1e-12:
                    z_in = max(z_in, room / n_z)
                elif room < 0:
                    z_out = -np.inf
            length = z_out - z_in
            if length <= 0:
                out[:, i, j] = 0
                continue
            start, chord = np.float32(z_in), np.float32(length)
            decay = np.float32(np.exp(-a.real * length))
            for k in range(m):
                entry = q[k] * start  # phase of e^(i q z_in)
                turn = turn_rate[k] * chord  # phase of e^((i q - a) L)
                c, s = np.cos(entry), np.sin(entry)
                d_re, d_im = decay * np.cos(turn) - 1, decay * np.sin(turn)
                top_re, top_im = c * d_re - s * d_im, c * d_im + s * d_re
                out[k, i, j] = complex(
                    top_re * inverse_re[k] - top_im * inverse_im[k],
                    top_re * inverse_im[k] + top_im * inverse_re[k],
                )


def _node_count(detector: Detector, radius: float) -> int:
    """Chebyshev nodes enough to resolve e^(i q z) for |z| <= radius to ~1e-5 over the
    detector's q_z range."""
    return int(np.ceil(float(detector.q_z.max()) / 2 * radius)) + 8


def _chebyshev(q_max: float, m: int, q_z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``m`` Chebyshev nodes on [0, q_max] and each pixel's barycentric interpolation weights
    (m, P, P) at its ``q_z``."""
    half = q_max / 2
    t = np.cos(np.pi * (np.arange(m) + 0.5) / m)
    nodes = half + half * t
    barycentric = (-1.0) ** np.arange(m) * np.sin(np.pi * (np.arange(m) + 0.5) / m)
    x = (q_z - half) / half
    difference = x[None] - t[:, None, None]
    exact = np.abs(difference) < 1e-14
    difference = np.where(exact, 1.0, difference)
    terms = barycentric[:, None, None] / difference
    weights = terms / terms.sum(axis=0)
    if exact.any():  # a pixel on a node takes that node's value
        on = exact.any(axis=0)
        weights[:, on] = exact[:, on]
    return nodes, weights.astype(np.complex64)


def reference_pattern(
    radius: float,
    orientation: np.ndarray,
    detector: Detector | None = None,
    material: Material | None = None,
    step: float = 0.5,
) -> np.ndarray:
    """Brute-force MSFT: the cluster cut into slices ``step`` nm thick on a ``step`` grid (each
    voxel holding the fraction of its slice the column's chord fills), each slice lit by the
    field left after the slices in front, Fourier transformed onto the detector and summed with
    its e^(i q_z z).  Slow; for tests and benchmarks."""
    detector = detector or Detector()
    material = material or Material()
    n = int(np.ceil(2 * radius / step)) + 2
    axis = (np.arange(n) - (n - 1) / 2) * step
    z_in, z_out = chords(radius, orientation, axis)
    a = material.attenuation
    dft = np.exp(-1j * detector.k_axis[:, None] * axis[None, :])
    amplitude = np.zeros((detector.pixels, detector.pixels), complex)
    in_front = np.zeros_like(z_in)  # thickness of material before the current slice
    for z in axis:
        low, high = z - step / 2, z + step / 2
        filled = np.clip(np.minimum(z_out, high) - np.maximum(z_in, low), 0, step) / step
        if not filled.any():
            continue
        source = filled * np.exp(-a * (in_front + filled * step / 2))
        amplitude += np.exp(1j * detector.q_z * z) * (dft @ source @ dft.T)
        in_front += filled * step
    amplitude *= step**3
    return (np.abs(amplitude) ** 2) * detector.solid_angle_factor


def log_image(intensity: np.ndarray, dynamic_range: float = DYNAMIC_RANGE) -> np.ndarray:
    """log10 of intensity over its maximum, floored at -``dynamic_range``, mapped to [0, 1]
    (0: the floor, 1: the brightest pixel).  The network's and the shots' common scale."""
    intensity = np.asarray(intensity, np.float64)
    peak = intensity.max(axis=(-2, -1), keepdims=True)
    with np.errstate(divide="ignore"):
        decades = np.log10(np.maximum(intensity, 0) / np.maximum(peak, 1e-300))
    return (np.clip(decades, -dynamic_range, 0) / dynamic_range + 1).astype(np.float32)


def random_clusters(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` orientations uniform over the fundamental domain and radii uniform over ``RADII``."""
    return icosahedral.random_orientations(n, rng), rng.uniform(*RADII, n)


def simulate_shots(
    n: int, seed: int = 0, simulator: Simulator | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` noiseless shots of random clusters: log images (n, P, P) in [0, 1]
    (:func:`log_image`), orientations (n, 4) and radii (n,) in nm.  Seeded and reproducible."""
    simulator = simulator or Simulator()
    orientations, radii = random_clusters(n, np.random.default_rng(seed))
    images = (
        np.stack(
            [log_image(simulator.intensity(r, q)) for q, r in zip(orientations, radii, strict=True)]
        )
        if n
        else np.zeros((0, simulator.detector.pixels, simulator.detector.pixels), np.float32)
    )
    return images, orientations, radii


def simulate_intensities(
    n: int, seed: int = 0, photons: float | None = None, simulator: Simulator | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """``n`` shots of random clusters as intensities (Poisson noise at ``photons`` per shot
    when given), their orientations and radii, and the settings to record with them."""
    simulator = simulator or Simulator()
    rng = np.random.default_rng(seed)
    orientations, radii = random_clusters(n, rng)
    shots = np.stack([simulator.intensity(r, q) for q, r in zip(orientations, radii, strict=True)])
    if photons:
        shots = rng.poisson(shots * (photons / shots.sum(axis=(1, 2), keepdims=True)))
    detector, material = simulator.detector, simulator.material
    settings = {
        "mode": "wideangle", "seed": seed, "photons": photons or 0, "pixels": detector.pixels,
        "max_angle_deg": detector.max_angle, "wavelength_nm": detector.wavelength,
        "absorption_length_nm": material.absorption_length,
        "refractive_decrement": material.refractive_decrement,
    }  # fmt: skip
    return shots.astype(np.float32), orientations, radii, settings
