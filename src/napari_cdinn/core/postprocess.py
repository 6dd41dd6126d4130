"""Post-processing shared by every method, so results compare: the ambiguities of phase retrieval
(translation, global phase, twin) are removed the same way everywhere (see DESIGN.md)."""

from __future__ import annotations

import numpy as np

from .metrics import register


def center_of_mass_shift(objects: np.ndarray) -> np.ndarray:
    """Integer (dy, dx) per pattern that brings the amplitude's centre of mass to the middle.

    The centre is a circular mean, so an object wrapped around the array edges (as iterative
    retrieval may leave it) is found whole.
    """
    amplitude = np.abs(objects)
    shifts = np.empty((len(objects), 2), int)
    for axis, other in ((0, 2), (1, 1)):
        n = objects.shape[axis + 1]
        profile = amplitude.sum(axis=other)  # (N, n) along this axis
        angle = np.angle((profile * np.exp(2j * np.pi * np.arange(n) / n)).sum(-1))
        com = (angle % (2 * np.pi)) * n / (2 * np.pi)
        shifts[:, axis] = np.round(n // 2 - com).astype(int)
    return shifts


def center(objects: np.ndarray) -> np.ndarray:
    """Objects rolled so their centre of mass sits at the array centre."""
    return _rolled(objects, center_of_mass_shift(objects))


def _rolled(arrays: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    return np.stack(
        [np.roll(a, tuple(s), axis=(-2, -1)) for a, s in zip(arrays, shifts, strict=True)]
    )


def remove_global_phase(objects: np.ndarray) -> np.ndarray:
    """Set the amplitude-weighted mean phase of each object to zero."""
    weighted = (np.abs(objects) * objects).sum(axis=(-2, -1))
    return objects * np.exp(-1j * np.angle(weighted))[:, None, None]


def zero_phase_outside(objects: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """Phase set to 0 where the amplitude is below ``threshold`` of each object's maximum."""
    amplitude = np.abs(objects)
    inside = amplitude > threshold * amplitude.max(axis=(-2, -1), keepdims=True)
    return np.where(inside, objects, amplitude)


def canonical(
    objects: np.ndarray, reference: np.ndarray | None = None, threshold: float = 0.1
) -> np.ndarray:
    """Centre of mass to the middle, then twin and global phase chosen against ``reference`` (if
    given, else the mean phase is zeroed), then the phase zeroed outside the support."""
    return canonical_with(objects, None, reference, threshold)[0]


def canonical_with(
    objects: np.ndarray,
    supports: np.ndarray | None,
    reference: np.ndarray | None = None,
    threshold: float = 0.1,
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`canonical`, and ``supports`` (N, H, W) moved as the objects were (the same
    centring shift, twin flip and registration shift), so that they still outline them."""
    objects = np.asarray(objects, np.complex64)
    single = objects.ndim == 2
    objects = objects[None] if single else objects
    shifts = center_of_mass_shift(objects)
    objects = _rolled(objects, shifts)
    if supports is not None:
        supports = _rolled(np.asarray(supports), shifts)
    if reference is None:
        objects = remove_global_phase(objects)
    else:
        reference = np.asarray(reference)
        reference = reference[None] if reference.ndim == 2 else reference
        if supports is None:
            objects = register(objects, reference)
        else:
            objects, supports = register(objects, reference, supports)
    objects = zero_phase_outside(objects, threshold).astype(np.complex64)
    return (objects[0] if single else objects), supports
