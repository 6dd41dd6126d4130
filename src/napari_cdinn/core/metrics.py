"""Quality measures shared by tests, benchmarks and the GUI.

All take stacks ``(N, H, W)`` (or single ``(H, W)`` images) of centred arrays and return one
value per pattern.  Phase retrieval cannot tell an object from its translates, its global phase
offsets or its twin (complex conjugate, centro-inverted), so the comparisons with a known truth
maximise over those.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.metrics import structural_similarity


def _stack(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a[None] if a.ndim == 2 else a


def reciprocal_error(
    obj: torch.Tensor, magnitudes: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """chi^2 per pattern (torch, any device): sum (s|F obj| - sqrt(I))^2 / sum I over valid
    pixels, with the best scale s.  ``magnitudes`` = sqrt(I) in FFT order (zero frequency first)."""
    model = torch.fft.fft2(obj).abs()
    weight = torch.ones_like(magnitudes) if valid is None else valid.to(magnitudes.dtype)
    dims = (-2, -1)
    scale = (weight * model * magnitudes).sum(dims) / (weight * model**2).sum(dims).clamp_min(1e-30)
    residual = weight * (scale[..., None, None] * model - magnitudes) ** 2
    return residual.sum(dims) / (weight * magnitudes**2).sum(dims).clamp_min(1e-30)


def chi2(
    objects: np.ndarray, intensities: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray:
    """Reciprocal-space error of CDI NN for centred objects and intensities (numpy in and out)."""
    obj = torch.as_tensor(_stack(objects).astype(np.complex128))
    shift = (-2, -1)
    magnitudes = torch.fft.ifftshift(
        torch.as_tensor(np.sqrt(np.maximum(_stack(intensities), 0)).astype(np.float64)), dim=shift
    )
    valid = None
    if mask is not None:
        valid = torch.fft.ifftshift(torch.as_tensor(np.asarray(mask, bool)), dim=shift)
    return reciprocal_error(obj, magnitudes, valid).numpy()


def twin(objects: np.ndarray) -> np.ndarray:
    """The twin image: complex conjugate, centro-inverted (same |FT|)."""
    return np.conj(np.flip(objects, axis=(-2, -1)))


def _best_shift(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pattern: the max over circular integer shifts of |<a, shift(b)>| and that shift."""
    cross = np.fft.ifft2(np.fft.fft2(a) * np.conj(np.fft.fft2(b)))
    flat = np.abs(cross).reshape(len(a), -1)
    index = flat.argmax(axis=1)
    return flat[np.arange(len(a)), index], np.stack(np.unravel_index(index, a.shape[-2:]), -1)


def register(
    objects: np.ndarray, reference: np.ndarray, alongside: np.ndarray | None = None
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``objects`` moved onto ``reference``: best of object/twin, integer shift, global phase.
    With ``alongside`` (real arrays of the objects' shape, such as supports) also those, given
    the same twin flip and shift."""
    objects, reference = np.broadcast_arrays(_stack(objects), _stack(reference))  # one for all
    out = np.empty(objects.shape, np.complex64)
    moved_alongside = None if alongside is None else np.empty_like(_stack(alongside))
    direct_score, direct_shift = _best_shift(reference, objects)
    twins = twin(objects)
    twin_score, twin_shift = _best_shift(reference, twins)
    for i in range(len(out)):
        use_twin = twin_score[i] > direct_score[i]
        candidate = twins[i] if use_twin else objects[i]
        shift = tuple(twin_shift[i] if use_twin else direct_shift[i])
        moved = np.roll(candidate, shift, axis=(-2, -1))
        offset = np.vdot(moved, reference[i])  # phase that best aligns moved onto reference
        out[i] = moved * np.exp(1j * np.angle(offset))
        if moved_alongside is not None:
            other = _stack(alongside)[i]
            other = np.flip(other, axis=(-2, -1)) if use_twin else other  # twin: centro-inverted
            moved_alongside[i] = np.roll(other, shift, axis=(-2, -1))
    return out if moved_alongside is None else (out, moved_alongside)


def registered_correlation(objects: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """|<a, b>| / (|a| |b|), maximised over integer translation and the twin, per pattern."""
    objects, truth = np.broadcast_arrays(_stack(objects), _stack(truth))  # one truth for all
    norms = np.linalg.norm(objects.reshape(len(objects), -1), axis=1) * np.linalg.norm(
        truth.reshape(len(truth), -1), axis=1
    )
    direct, _ = _best_shift(truth, objects)
    twinned, _ = _best_shift(truth, twin(objects))
    return np.maximum(direct, twinned) / np.maximum(norms, 1e-30)


def phase_rms(objects: np.ndarray, truth: np.ndarray, threshold: float = 0.1) -> np.ndarray:
    """RMS phase error (radians) inside the true support (|truth| > threshold * max) after
    registration and removal of the global phase offset."""
    truth = _stack(truth)
    aligned = register(objects, truth)
    support = np.abs(truth) > threshold * np.abs(truth).max(axis=(-2, -1), keepdims=True)
    difference = np.angle(aligned * np.conj(truth))
    out = np.empty(len(truth))
    for i in range(len(truth)):
        d = difference[i][support[i]]
        d = np.angle(np.exp(1j * (d - np.angle(np.mean(np.exp(1j * d))))))  # remove the offset
        out[i] = np.sqrt(np.mean(d**2))
    return out


def phase_ramp(image: np.ndarray, reference: np.ndarray, region: np.ndarray) -> np.ndarray:
    """e^(i g.r): the linear phase ramp that best brings ``image`` onto ``reference`` over
    ``region``, its slope g the amplitude-weighted mean phase step between neighbours of
    reference * conj(image) (robust to phase wrapping)."""
    difference = reference * np.conj(image)
    step_y = (difference[1:] * np.conj(difference[:-1]))[region[1:] & region[:-1]].sum()
    step_x = (difference[:, 1:] * np.conj(difference[:, :-1]))[region[:, 1:] & region[:, :-1]].sum()
    yy, xx = np.indices(image.shape, dtype=float)
    return np.exp(1j * (np.angle(step_y) * yy + np.angle(step_x) * xx))


def matched(image: np.ndarray, reference: np.ndarray, region: np.ndarray | None = None):
    """``image`` with the linear phase ramp and complex factor that best match ``reference``
    over ``region`` (least squares for the factor): removes what ptychography cannot determine,
    the global phase offset, the amplitude scale and, with the probe retrieved too, a linear
    phase ramp (object e^(i g.r) and probe e^(-i g.r) give the same data)."""
    inside = np.ones(image.shape, bool) if region is None else region
    image = image * phase_ramp(image, reference, inside)
    factor = np.vdot(image[inside], reference[inside]) / max(
        np.vdot(image[inside], image[inside]).real, 1e-30
    )
    return image * factor


def object_ssim(
    image: np.ndarray, reference: np.ndarray, region: np.ndarray | None = None
) -> tuple[float, float]:
    """(amplitude SSIM, phase SSIM) of a complex image against a reference on the same grid,
    averaged over ``region`` (bool mask, default all) after :func:`matched`.  Each SSIM uses the
    reference's range inside the region as its data range."""
    inside = np.ones(image.shape, bool) if region is None else np.asarray(region, bool)
    image = matched(np.asarray(image, np.complex128), np.asarray(reference, np.complex128), inside)
    scores = []
    for part in (np.abs, np.angle):
        a, b = part(image), part(np.asarray(reference, np.complex128))
        span = float(np.ptp(b[inside])) or 1.0
        _, local = structural_similarity(a, b, data_range=span, full=True)
        scores.append(float(local[inside].mean()))
    return scores[0], scores[1]
