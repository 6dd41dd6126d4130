"""Far-field ptychography scans of a known complex object, for tests, training and demos.

The object takes its amplitude and phase from two different natural textures (scikit-image's
sample images); the probe is the focus of a zone-plate-like pupil (central stop, defocus, some
astigmatism and coma), not a flat top; scans are rasters (with jitter) or Fermat spirals.
Positions are (y, x) object pixels of the top-left corner of the patch each frame sees.
"""

from __future__ import annotations

import numpy as np
from skimage import data as skdata
from skimage.filters import gaussian
from skimage.transform import resize

from ..data import DiffractionStack, Metadata, PtychoScan
from .cdi import far_field_intensity

NATURAL = (
    "camera", "moon", "coins", "text", "brick", "grass", "gravel", "page", "clock", "astronaut",
    "cat", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
    "cell", "shepp_logan_phantom",
)  # fmt: skip
PROCEDURAL = ("siemens", "shapes")
TEXTURES = NATURAL + PROCEDURAL
HELD_OUT_TEXTURES = ("camera", "coins")  # never in the network's training scans (benchmarks)


def _procedural(name: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """A Siemens star with a random number of spokes, or random blurred ellipses."""
    yy, xx = np.mgrid[:side, :side] - (side - 1) / 2
    if name == "siemens":
        spokes = int(rng.integers(12, 48))
        image = (np.sin(spokes * np.arctan2(yy, xx) + rng.uniform(0, np.pi)) > 0).astype(float)
        return image * (np.hypot(yy, xx) < side * rng.uniform(0.4, 0.7))
    image = np.zeros((side, side))
    for _ in range(int(rng.integers(10, 40))):
        cy, cx = rng.uniform(-side / 2, side / 2, 2)
        ry, rx = rng.uniform(side / 40, side / 6, 2)
        angle = rng.uniform(0, np.pi)
        u = (yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
        v = -(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)
        image[(u / ry) ** 2 + (v / rx) ** 2 < 1] = rng.uniform(0.2, 1)
    return gaussian(image, rng.uniform(0.5, 2))


def _texture(
    name: str, shape: tuple[int, int], rng: np.random.Generator, zoom: float = 1.0
) -> np.ndarray:
    if name in PROCEDURAL:
        image = _procedural(name, max(shape) * 2, rng)
    else:
        image = np.asarray(getattr(skdata, name)(), float)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=-1)
    side = min(image.shape)
    crop = max(8, int(side * rng.uniform(0.6, 1.0) / zoom))
    y0, x0 = (int(rng.integers(0, s - crop + 1)) for s in image.shape)
    image = resize(image[y0 : y0 + crop, x0 : x0 + crop], shape, anti_aliasing=True)
    image -= image.min()
    return image / (image.max() + 1e-12)


def textured_object(
    shape: tuple[int, int],
    rng: np.random.Generator,
    textures: tuple[str, ...] = TEXTURES,
    zoom: float = 1.0,
) -> np.ndarray:
    """Amplitude in [0.3, 1] and phase in [-pi/2, pi/2] from two different textures; ``zoom``
    magnifies the textures (a smaller crop of each image fills the object)."""
    amp_name, phase_name = rng.choice(textures, size=2, replace=False)
    amplitude = 0.3 + 0.7 * _texture(str(amp_name), shape, rng, zoom)
    phase = (_texture(str(phase_name), shape, rng, zoom) - 0.5) * np.pi
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def focused_probe(
    size: int, rng: np.random.Generator, aperture: float = 0.22, defocus: float = 6.0
) -> np.ndarray:
    """A zone-plate-like focus: a centrally stopped pupil with defocus and mild aberrations."""
    f = np.fft.fftshift(np.fft.fftfreq(size))
    fy, fx = np.meshgrid(f, f, indexing="ij")
    rho = np.hypot(fy, fx) / aperture
    theta = np.arctan2(fy, fx)
    pupil = ((rho <= 1) & (rho >= 0.3)).astype(float)
    astigmatism, coma = rng.uniform(-1, 1, 2)
    aberration = defocus * rho**2 + astigmatism * rho**2 * np.cos(2 * theta)
    aberration += coma * (3 * rho**3 - 2 * rho) * np.cos(theta)
    field = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(pupil * np.exp(1j * aberration))))
    return (field / np.abs(field).max()).astype(np.complex64)


def raster_positions(
    object_shape: tuple[int, int], frame: int, step: float, rng: np.random.Generator
) -> np.ndarray:
    """Raster scan with a 10 % jitter of the step, patches inside the object."""
    ys = np.arange(0, object_shape[0] - frame - 1, step)
    xs = np.arange(0, object_shape[1] - frame - 1, step)
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    jitter = rng.uniform(-0.1, 0.1, grid.shape) * step
    limit = np.asarray(object_shape) - frame - 1
    return np.clip(grid + jitter, 0, limit)


def spiral_positions(object_shape: tuple[int, int], frame: int, step: float) -> np.ndarray:
    """Fermat spiral with mean nearest-neighbour distance ~ ``step``, patches inside the object."""
    limit = np.asarray(object_shape, float) - frame - 1
    centre = limit / 2
    radius = limit.min() / 2
    n = int(np.pi * radius**2 / (step**2 * 0.9)) + 1
    k = np.arange(n)
    r = step * 0.95 * np.sqrt(k)
    angle = k * np.pi * (3 - np.sqrt(5))
    points = centre + np.stack([r * np.sin(angle), r * np.cos(angle)], -1)
    return points[(points >= 0).all(1) & (points <= limit).all(1)]


def shifted(probe: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``probe`` moved by sub-pixel ``shift`` (y, x) with the Fourier shift theorem."""
    f = np.fft.fftfreq(probe.shape[-1])
    ramp = np.exp(-2j * np.pi * (shift[0] * f[:, None] + shift[1] * f[None, :]))
    return np.fft.ifft2(np.fft.fft2(probe) * ramp).astype(np.complex64)


def exit_waves(obj: np.ndarray, probe: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Probe (shifted by each position's fraction) times the object patch at its integer part."""
    size = probe.shape[-1]
    corners = np.floor(positions).astype(int)
    waves = np.empty((len(positions), size, size), np.complex64)
    for i, (corner, frac) in enumerate(zip(corners, positions - corners, strict=True)):
        patch = obj[corner[0] : corner[0] + size, corner[1] : corner[1] + size]
        waves[i] = shifted(probe, frac) * patch
    return waves


def simulate_ptycho(
    object_shape: tuple[int, int] = (192, 192),
    frame: int = 64,
    step: float = 10.0,
    scan: str = "raster",
    photons: float | None = 1e6,
    every: int = 1,
    seed: int = 0,
    textures: tuple[str, ...] = TEXTURES,
    defocus: float = 6.0,
    zoom: float = 1.0,
) -> PtychoScan:
    """A scan of a random textured object: intensities, positions, probe and the true object.

    ``photons``: mean total counts per pattern (Poisson noise), ``None`` for noiseless;
    ``every``: keep every k-th position (sparse scans); ``textures``: the names to draw the
    object's amplitude and phase from; ``defocus``: of the probe, in radians at the pupil edge; ``zoom``: texture magnification.
    """
    rng = np.random.default_rng(seed)
    obj = textured_object(object_shape, rng, textures, zoom)
    probe = focused_probe(frame, rng, defocus=defocus)
    if scan == "raster":
        positions = raster_positions(object_shape, frame, step, rng)
    elif scan == "spiral":
        positions = spiral_positions(object_shape, frame, step)
    else:
        raise ValueError(f"unknown scan '{scan}': use raster or spiral")
    positions = positions[::every]
    intensities = far_field_intensity(exit_waves(obj, probe, positions))
    if photons is not None:
        intensities = rng.poisson(intensities * (photons / intensities.sum(axis=(1, 2)).mean()))
        intensities = intensities.astype(np.float32)
    settings = {"mode": "ptycho", "object_shape": list(object_shape), "frame": frame, "step": step}
    settings.update(scan=scan, photons=photons, every=every, seed=seed, defocus=defocus, zoom=zoom)
    meta = Metadata(reader="simulate.ptycho", extra={"simulation": settings})
    stack = DiffractionStack(intensities, None, meta)
    return PtychoScan(stack, positions, probe, truth=obj)
