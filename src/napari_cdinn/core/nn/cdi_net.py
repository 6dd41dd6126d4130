"""The CDI network: one encoder, two decoders (shape/amplitude and phase), after CDI NN (2018)
and Wu et al. (2021), made small enough for >= 1000 patterns/s on two CPU cores.

Input: a centred ``(H, W)`` diffraction pattern (H = W = ``size``), preprocessed by
:func:`preprocess` (log of the normalised intensity).  Output: amplitude in [0, 1] and phase in
(-pi, pi) on the central ``size // 2`` box of the object grid, where an object sampled at least 2x
lives; :func:`embed` places it back on the full ``size`` grid so the layers overlay the iterative
result.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(0.1, inplace=True),
    )


def encoder(width: int) -> nn.Sequential:
    """64 -> 8 pixels, 1 -> 4 * width channels (shared by the CDI and ptychography networks)."""
    return nn.Sequential(
        _block(1, width // 2, stride=2),  # 32
        _block(width // 2, width, stride=2),  # 16
        _block(width, 2 * width),
        _block(2 * width, 4 * width, stride=2),  # 8
        _block(4 * width, 4 * width),
    )


def _decoder(width: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        _block(4 * width, 2 * width),
        nn.Upsample(scale_factor=2, mode="nearest"),
        _block(2 * width, width),
        _block(width, width),
        nn.Conv2d(width, 1, 3, padding=1),
    )


class EncoderDecoders(nn.Module):
    """One encoder, two decoders (amplitude, phase): the shape of both networks here.  A subclass
    names its decoder and the function that keeps the amplitude in range."""

    make_decoder = staticmethod(_decoder)
    amplitude_activation = staticmethod(torch.sigmoid)

    def __init__(self, size: int = 64, width: int = 16):
        super().__init__()
        self.size = size
        self.width = width
        self.encoder = encoder(width)
        self.amplitude_decoder = self.make_decoder(width)
        self.phase_decoder = self.make_decoder(width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, 1, size, size) preprocessed patterns -> amplitude, phase (B, h, w)."""
        features = self.encoder(x)
        amplitude = self.amplitude_activation(self.amplitude_decoder(features))[:, 0]
        phase = torch.pi * torch.tanh(self.phase_decoder(features))[:, 0]
        return amplitude, phase

    def arguments(self) -> dict[str, int]:
        """Constructor arguments, recorded in the model card."""
        return {"size": self.size, "width": self.width}


class CDINet(EncoderDecoders):
    """Encoder 64 -> 8 pixels, two decoders 8 -> 32 pixels (the object's half of the field);
    amplitude in [0, 1] (sigmoid)."""


def preprocess(intensities: torch.Tensor) -> torch.Tensor:
    """(B, H, W) intensities -> (B, 1, H, W) network input: log10 of I / max(I), floored at 1e-6,
    mapped from [-6, 0] to [-1, 1] (log10 / 3 + 1).

    Scale-free, so counts from any detector or simulation look alike to the network.
    """
    peak = intensities.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    return (torch.log10((intensities / peak).clamp_min(1e-6)) / 3 + 1)[:, None]


def embed(crop: torch.Tensor, size: int) -> torch.Tensor:
    """Place (B, size/2, size/2) central crops on the (B, size, size) object grid (zero outside)."""
    out = crop.new_zeros((*crop.shape[:-2], size, size))
    lo = size // 4
    out[..., lo : lo + crop.shape[-2], lo : lo + crop.shape[-1]] = crop
    return out


def central_crop(objects: torch.Tensor) -> torch.Tensor:
    """The central half of the field of (B, H, W) objects: the network's training target."""
    h, w = objects.shape[-2:]
    return objects[..., h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2]
