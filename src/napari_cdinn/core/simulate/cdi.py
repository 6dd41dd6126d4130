"""Bragg CDI training and test data, after the recipe of Cherukara, Nashed & Harder (2018).

Each object is a random convex crystal (convex hull of random points) with edges blurred by a
1-pixel Gaussian and unit amplitude inside, carrying a smooth phase made of sine gratings and
Gaussians (zero outside).  It fits inside the central half of the field, so the pattern
|FT|^2 is oversampled at least twice, as real data and iterative retrieval require.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter
from scipy.spatial import ConvexHull, QhullError
from skimage.draw import polygon

from ..data import DiffractionStack, Metadata


def random_convex_support(rng: np.random.Generator, size: int) -> np.ndarray:
    """A filled convex polygon inside the central ``size // 2`` box of a ``size`` grid."""
    half = size // 2
    lo = size // 4
    while True:
        n_points = int(rng.integers(4, 16))
        extent = rng.uniform(0.45, 1.0) * (half - 2)
        centre = lo + half / 2 + rng.uniform(-1, 1, 2) * (half - 2 - extent) / 2
        points = centre + (rng.random((n_points, 2)) - 0.5) * extent
        try:
            hull = points[ConvexHull(points).vertices]
        except QhullError:  # degenerate (collinear) draw: try again
            continue
        rows, cols = polygon(hull[:, 0], hull[:, 1], (size, size))
        support = np.zeros((size, size), bool)
        support[rows, cols] = True
        if support.sum() >= 16:
            return support


def random_phase(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth phase field (gratings + Gaussians) scaled to span up to (-pi, pi)."""
    y, x = np.mgrid[:size, :size] / size
    field = np.zeros((size, size))
    for _ in range(int(rng.integers(1, 4))):
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(0.15, 1.0)
        k = 2 * np.pi / period
        field += rng.uniform(0.2, 1) * np.sin(
            k * (x * np.cos(angle) + y * np.sin(angle)) + rng.uniform(0, 2 * np.pi)
        )
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        width = rng.uniform(0.03, 0.2)
        field += rng.uniform(-1, 1) * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * width**2))
    field -= field.mean()
    return field / (np.abs(field).max() + 1e-12) * np.pi * rng.uniform(0.2, 1.0)


def random_crystal(rng: np.random.Generator, size: int) -> np.ndarray:
    """One complex object: blurred convex shape times exp(i * phase), phase zero outside."""
    support = random_convex_support(rng, size)
    amplitude = np.clip(gaussian_filter(support.astype(float), 1.0), 0, 1)
    phase = random_phase(rng, size) * (amplitude > 0.05)
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def far_field_intensity(objects: np.ndarray) -> np.ndarray:
    """|FT|^2 with the zero frequency at the array centre, as a detector records it."""
    spectrum = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(objects, axes=(-2, -1))), axes=(-2, -1))
    return (np.abs(spectrum) ** 2).astype(np.float32)


def simulate_cdi(
    n: int, size: int = 64, seed: int = 0, photons: float | None = None
) -> DiffractionStack:
    """``n`` Bragg CDI patterns of ``size`` x ``size`` with their true objects (``truth``).

    ``photons``: total counts per pattern for Poisson noise; ``None`` keeps the noiseless |FT|^2.
    """
    rng = np.random.default_rng(seed)
    objects = np.stack([random_crystal(rng, size) for _ in range(n)])
    intensities = far_field_intensity(objects)
    if photons is not None:
        scale = photons / intensities.sum(axis=(-2, -1), keepdims=True)
        intensities = rng.poisson(intensities * scale).astype(np.float32)
    meta = Metadata(
        source=None,
        reader="simulate.cdi",
        extra={
            "simulation": {"mode": "cdi", "n": n, "size": size, "seed": seed, "photons": photons}
        },
    )
    return DiffractionStack(intensities, None, meta, truth=objects)
