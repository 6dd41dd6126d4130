"""The ptychography network, after PtychoNN (Cherukara et al. 2020): one encoder, two decoders
(amplitude, phase), small enough for >= 1000 patterns/s on two CPU cores.

Geometry (see the README): the network takes ``size`` x ``size`` patterns (64).  A frame of
``size * b`` pixels is binned b x b first; binning the detector shrinks the real-space field of
view b times at the same object-pixel size.  The predicted ``patch`` x ``patch`` patch (64, or
32: the lit middle) is the object under the central ``patch`` x ``patch`` pixels of the frame's
window, at the reconstruction's own object-pixel size: patches from the network and from ePIE
lie on one grid.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from .cdi_net import EncoderDecoders, _block
from .cdi_net import _decoder as _half_decoder


def _full_decoder(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),  # 16
        _block(4 * width, 2 * width),
        nn.Upsample(scale_factor=2, mode="nearest"),  # 32
        _block(2 * width, width),
        _block(width, width),
        nn.ConvTranspose2d(width, 1, 4, stride=2, padding=1),  # 64
    )


class GlobalMixing(nn.Module):
    """A residual fully connected layer across the whole bottleneck (through ``channels``
    1 x 1-convolved channels).  The map from a diffraction pattern to its object patch is
    global, like the inverse Fourier transform it stands in for, while a cell of the
    convolutional encoder sees only 39 of the 64 pattern pixels; here every cell sees them all."""

    def __init__(self, features: int, channels: int, side: int):
        super().__init__()
        self.shape = (channels, side, side)
        self.down = nn.Conv2d(features, channels, 1)
        self.mix = nn.Linear(channels * side * side, channels * side * side)
        self.up = nn.Conv2d(channels, features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]  # not len(x): inference_model traces this with torch.fx
        mixed = self.mix(self.down(x).reshape(batch, -1))
        return x + self.up(nn.functional.leaky_relu(mixed, 0.1).reshape(batch, *self.shape))


class PtychoNet(EncoderDecoders):
    """Encoder 64 -> 8 pixels (then, with ``mixing`` > 0, a :class:`GlobalMixing` of that many
    channels), two decoders 8 -> ``patch`` pixels (the frame's central patch: 64, the whole
    window, or 32, its lit middle, where 8 bottleneck cells each hold 4 x 4 patch pixels instead
    of 8 x 8); amplitude unbounded above (softplus)."""

    amplitude_activation = staticmethod(nn.functional.softplus)

    def __init__(self, size: int = 64, width: int = 16, mixing: int = 0, patch: int = 64):
        if patch not in (size, size // 2):
            raise ValueError(f"patch must be {size} or {size // 2}, not {patch}")
        self.patch = patch
        self.make_decoder = _full_decoder if patch == size else _half_decoder
        super().__init__(size, width)
        self.mixing = mixing
        if mixing:
            self.encoder.append(GlobalMixing(4 * width, mixing, size // 8))

    def arguments(self) -> dict[str, int]:
        return {**super().arguments(), "mixing": self.mixing, "patch": self.patch}


def binning(frame: int, size: int, source: object = None) -> int:
    """The detector binning b that brings ``frame`` pixels to the network's ``size``."""
    if frame < size or frame % size:
        raise InputError(
            source,
            f"patterns are {frame} pixels wide; the ptychography network takes {size} x k pixels "
            f"(k = 1, 2, ...): crop or bin the data to such a size",
        )
    return frame // size


def binned(intensities: np.ndarray, factor: int) -> np.ndarray:
    """Sum ``factor`` x ``factor`` detector pixels: (N, H, W) -> (N, H/f, W/f)."""
    if factor == 1:
        return np.asarray(intensities, np.float32)
    n, h, w = intensities.shape
    blocks = np.asarray(intensities, np.float32).reshape(
        n, h // factor, factor, w // factor, factor
    )
    return blocks.sum(axis=(2, 4))


def intensity_scale(intensities: np.ndarray) -> float:
    """The scan's mean pixel intensity: one number per scan, so the network still sees how much
    each frame transmits (the object's absorption) while any dose or detector looks alike."""
    return float(max(np.mean(intensities), 1e-12))


def preprocess(intensities: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, H, W) intensities -> (B, 1, H, W) network input: log(1 + I / scale) / 5."""
    return (torch.log1p(intensities.clamp_min(0) / scale) / 5)[:, None]
