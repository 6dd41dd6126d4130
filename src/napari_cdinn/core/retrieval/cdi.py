"""Iterative phase retrieval for Bragg CDI: ER, HIO and RAAR with shrink-wrap, batched in torch.

All patterns of a batch (and several random starts of each) iterate together as one
``(B, H, W)`` tensor, on the CPU or a CUDA GPU.  Arrays are kept in FFT order internally (zero
frequency at [0, 0]); inputs and outputs are centred, as a detector records them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..device import resolve_device
from ..metrics import reciprocal_error
from .projections import intensity, mix_, set_modulus_


@dataclass
class RetrievalRecipe:
    """The iterative recipe; the default follows CDI NN (Cherukara et al. 2018): 620 iterations of
    alternating ER and HIO with shrink-wrap, the last 20 iterates averaged, best of several starts.
    """

    schedule: list[tuple[str, int]] = field(
        default_factory=lambda: [("ER", 20), ("HIO", 180)] * 3 + [("ER", 20)]
    )
    beta: float = 0.9  # HIO / RAAR feedback
    shrinkwrap_every: int = 20
    shrinkwrap_sigma: tuple[float, float] = (2.0, 1.0)  # Gaussian blur, start -> end (pixels)
    shrinkwrap_threshold: float = 0.2  # fraction of the blurred maximum kept as support
    average_last: int = 20
    n_starts: int = 4

    @property
    def n_iterations(self) -> int:
        return sum(n for _, n in self.schedule)

    def as_dict(self) -> dict:
        return asdict(self)


def _gaussian_kernel_ft(shape: tuple[int, int], sigma: float, device: torch.device) -> torch.Tensor:
    """Fourier transform of a unit-sum Gaussian, for blurring by multiplication."""
    fy = torch.fft.fftfreq(shape[0], device=device)[:, None]
    fx = torch.fft.fftfreq(shape[1], device=device)[None, :]
    return torch.exp(-2 * (np.pi * sigma) ** 2 * (fy**2 + fx**2))


def shrinkwrap(
    obj: torch.Tensor, sigma: float, threshold: float, previous: torch.Tensor | None = None
) -> torch.Tensor:
    """New support: the blurred amplitude above ``threshold`` times its maximum, per pattern;
    an object of zero amplitude keeps its ``previous`` support (else the initial box): an
    empty support would hold the iterate at zero for good."""
    kernel = _gaussian_kernel_ft(obj.shape[-2:], sigma, obj.device)
    amplitude = intensity(obj).sqrt_()
    blurred = torch.fft.ifft2(torch.fft.fft2(amplitude) * kernel).real
    peak = blurred.amax(dim=(-2, -1), keepdim=True)
    fallback = _initial_support(obj.shape, obj.device) if previous is None else previous
    return torch.where(peak > 0, blurred > threshold * peak, fallback)


def _initial_support(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A centred box of half the field (the object fits there when sampling is >= 2x)."""
    h, w = shape[-2:]
    support = torch.zeros((h, w), dtype=torch.bool, device=device)
    support[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = True
    return torch.fft.ifftshift(support).expand(shape).clone()


def _to_fft_order(array: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.fft.ifftshift(
        torch.as_tensor(np.asarray(array), device=device, dtype=dtype), dim=(-2, -1)
    )


def outside_update(algorithm: str, beta: float) -> tuple[float, float]:
    """(a, b) such that outside the support the new object is a * object + b * projected
    (inside it is the projection): ER 0, 0; HIO 1, -beta; RAAR beta, 1 - 2 beta."""
    updates = {"ER": (0.0, 0.0), "HIO": (1.0, -beta), "RAAR": (beta, 1.0 - 2.0 * beta)}
    if algorithm not in updates:
        raise ValueError(f"unknown algorithm {algorithm!r}: use ER, HIO or RAAR")
    return updates[algorithm]


def iterate(
    magnitudes: torch.Tensor,
    valid: torch.Tensor | None,
    obj: torch.Tensor,
    support: torch.Tensor,
    recipe: RetrievalRecipe,
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Run the recipe, yielding (iteration, object, support) after each iteration (FFT order).

    The modulus constraint replaces |F obj| by the measured magnitude where ``valid`` (True =
    measured pixel) and leaves unmeasured pixels free.
    """
    total = recipe.n_iterations
    done = 0
    for algorithm, count in recipe.schedule:
        a, b = outside_update(algorithm, recipe.beta)
        for _ in range(count):
            spectrum = torch.fft.fft2(obj)
            set_modulus_(spectrum, magnitudes, valid)
            obj = mix_(torch.fft.ifft2(spectrum), obj, support, a, b)
            done += 1
            if recipe.shrinkwrap_every and done % recipe.shrinkwrap_every == 0 and done < total:
                start, end = recipe.shrinkwrap_sigma
                sigma = start + (end - start) * done / total
                support = shrinkwrap(obj, sigma, recipe.shrinkwrap_threshold, support)
            yield done, obj, support


def run_retrieval(
    intensities: np.ndarray,
    mask: np.ndarray | None = None,
    start: np.ndarray | None = None,
    recipe: RetrievalRecipe | None = None,
    device: str = "auto",
    batch_size: int = 256,
    seed: int = 0,
) -> Iterator[tuple[int, int]]:
    """Generator: retrieve objects from ``intensities`` (N, H, W), yielding (done, total) steps.

    ``mask``: (H, W) or (N, H, W), True = measured pixel.  ``start``: (N, H, W) complex starting
    objects (e.g. the network's output), centred; then one start each and the support comes from
    the start's amplitude.  Returns (through StopIteration) ``(objects, supports, chi2)``: centred
    complex64 objects, bool supports and float64 chi^2, one per pattern.
    """
    recipe = recipe or RetrievalRecipe()
    torch_device = resolve_device(device)
    n_starts = 1 if start is not None else max(1, recipe.n_starts)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    intensities = np.asarray(intensities, np.float32)
    n, h, w = intensities.shape
    total = n * recipe.n_iterations
    objects = np.empty((n, h, w), np.complex64)
    supports = np.empty((n, h, w), bool)
    chi2 = np.empty(n)
    per_batch = max(1, batch_size // n_starts)
    for lo in range(0, n, per_batch):
        hi = min(n, lo + per_batch)
        b = hi - lo
        magnitudes = _to_fft_order(
            np.sqrt(np.maximum(intensities[lo:hi], 0)), torch_device, torch.float32
        )
        magnitudes = magnitudes.repeat_interleave(n_starts, dim=0)
        valid = None
        if mask is not None:
            m = mask if mask.ndim == 2 else mask[lo:hi]
            valid = _to_fft_order(m, torch_device, torch.bool)
            valid = valid.expand(b, h, w).repeat_interleave(n_starts, dim=0)
        if start is not None:
            obj = _to_fft_order(start[lo:hi], torch_device, torch.complex64)
            support = shrinkwrap(obj, recipe.shrinkwrap_sigma[1], recipe.shrinkwrap_threshold)
            zero = (obj.abs() == 0).all(dim=-1).all(dim=-1)[:, None, None]  # nothing to refine
            obj = torch.where(zero, support.to(obj.dtype), obj)  # then a flat object in the box
        else:
            support = _initial_support((b * n_starts, h, w), torch_device)
            phases = torch.rand((b * n_starts, h, w), generator=generator) * 2 * np.pi
            obj = torch.polar(torch.ones_like(phases), phases).to(torch_device) * support
        average = torch.zeros_like(obj)
        n_average = 0
        steps = iterate(magnitudes, valid, obj, support, recipe)
        for done, current, current_support in steps:
            obj, support = current, current_support
            if done > recipe.n_iterations - recipe.average_last:
                average += obj
                n_average += 1
            if done % 10 == 0 or done == recipe.n_iterations:
                yield lo * recipe.n_iterations + done * b, total
        final = average / max(n_average, 1) if n_average else obj
        errors = reciprocal_error(final, magnitudes, valid).reshape(b, n_starts)
        best = errors.argmin(dim=1)
        pick = torch.arange(b, device=torch_device) * n_starts + best
        objects[lo:hi] = torch.fft.fftshift(final[pick], dim=(-2, -1)).cpu().numpy()
        supports[lo:hi] = torch.fft.fftshift(support[pick], dim=(-2, -1)).cpu().numpy()
        chi2[lo:hi] = errors.gather(1, best[:, None])[:, 0].cpu().numpy()
    return objects, supports, chi2
