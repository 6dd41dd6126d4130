"""The wide-angle network: a compact residual network that regresses a cluster's orientation
(unit quaternion) and circumradius from one scattering image.

Stielow et al. (2020) used ResNet-34; this one has four residual stages, small enough to train on
two CPU cores and to answer in about a millisecond.  Its stem either bins the detector's
128 x 128 image 2 x 2 and convolves it at 64 x 64 (``stem="pool"``, the bundled model's), or
cuts the full-resolution image into 4 x 4 tiles, each mapped to 16 channels of a 32 x 32 map
(``stem="patchify"``, the ConvNeXt stem): a map that can keep every pixel, where binning blurs
the finest fringes (a 160 nm cluster's repeat about 5 detector pixels).  The last feature map
(4 x 4) is flattened rather than averaged, so the head still knows where in the image a streak
lies, which is what orientation is about.
"""

from __future__ import annotations

import torch
from torch import nn

from ..icosahedral import EMBEDDING_DIRECTIONS
from ..simulate.wideangle import RADII

ORIENTATION_OUTPUTS = {
    "quaternion": 4,
    "embedding": len(EMBEDDING_DIRECTIONS),
    "both": 4 + len(EMBEDDING_DIRECTIONS),
}
# the embedding's entries spread by about 0.025 over orientations: outputs scaled to that start
# where the targets lie (unscaled, the head's last layer first shrank its weights to reach them,
# and the features, their gradients shrunk with it, stopped learning: a constant answer)
EMBEDDING_OUTPUT_SCALE = 0.03


class Residual(nn.Module):
    """Two 3 x 3 convolutions with a shortcut (1 x 1 strided where the shape changes)."""

    def __init__(self, channels_in: int, channels_out: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(channels_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels_out),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                nn.BatchNorm2d(channels_out),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.shortcut(x))


def equalised(images: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """(B, 1, H, W) images in [0, 1] -> each pixel's mid-rank among its image's signal pixels
    (quantised to ``levels``; 0 stays 0: no signal).  The result is the same for any increasing
    map of the levels that keeps 0, so the display's unknown gamma drops out (and its floor, but
    for the faint levels the floor cuts).  Made on the images' device (CPU or CUDA)."""
    b = images.shape[0]
    level = (images.clamp(0, 1) * (levels - 1)).round().long().reshape(b, -1)
    counts = images.new_zeros((b, levels)).scatter_add_(
        1, level, torch.ones_like(level, dtype=images.dtype)
    )
    counts[:, 0] = 0
    below = counts.cumsum(1) - counts  # signal pixels under each level
    rank = (below + (counts + 1) / 2) / counts.sum(1, keepdim=True).clamp_min(1)
    rank[:, 0] = 0
    return rank.gather(1, level).reshape(images.shape)


torch.fx.wrap("equalised")  # one step for inference_model's tracing (it builds data-sized tensors)


class WideAngleNet(nn.Module):
    """(B, 1, size, size) log images in [0, 1] -> orientations, radii (B,) in nm.

    ``equalise``: the images are first replaced by their ranks (:func:`equalised`); ``stem``:
    "pool" or "patchify" (see the module's docstring); ``orientation``: "quaternion" (unit
    quaternions (B, 4), any of the 60 equivalents), "embedding" (B, 29): the orientation's
    symmetry-invariant embedding (``core.icosahedral.embedding``; ``from_embedding`` reads it),
    which has no seams where the answer must jump from one equivalent quaternion to another,
    or "both" (B, 33): the quaternion, then the embedding."""

    def __init__(
        self,
        size: int = 128,
        width: int = 16,
        equalise: bool = False,
        stem: str = "pool",
        orientation: str = "quaternion",
    ):
        super().__init__()
        if stem not in ("pool", "patchify"):
            raise ValueError(f"stem must be 'pool' or 'patchify', not {stem!r}")
        if orientation not in ORIENTATION_OUTPUTS:
            raise ValueError(
                f"orientation must be one of {list(ORIENTATION_OUTPUTS)}, not {orientation!r}"
            )
        self.size, self.width, self.equalise, self.stem = size, width, equalise, stem
        self.orientation = orientation
        w = width
        if stem == "pool":
            first = [nn.AvgPool2d(2), nn.Conv2d(1, w, 3, padding=1, bias=False)]  # 64
            first_stage = Residual(w, 2 * w, 2)  # 32
        else:
            first = [nn.Conv2d(1, w, 4, stride=4, bias=False)]  # 32
            first_stage = Residual(w, 2 * w)
        self.features = nn.Sequential(
            *first,
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            first_stage,
            Residual(2 * w, 4 * w, 2),  # 16
            Residual(4 * w, 8 * w, 2),  # 8
            Residual(8 * w, 8 * w, 2),  # 4
        )
        side = size // 32
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(8 * w * side * side, 256),
            nn.ReLU(inplace=True),
            nn.Linear(256, ORIENTATION_OUTPUTS[orientation] + 1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.equalise:
            x = equalised(x).contiguous(memory_format=torch.channels_last)
        features = self.features(x)
        # the answer in full precision, when the features are trained in bfloat16
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            out = self.head(features.float())
        orientation = out[:, :-1]
        if self.orientation == "quaternion":
            orientation = nn.functional.normalize(orientation, dim=1)
        elif self.orientation == "embedding":
            orientation = orientation * EMBEDDING_OUTPUT_SCALE
        else:
            quaternion = nn.functional.normalize(orientation[:, :4], dim=1)
            orientation = torch.cat([quaternion, orientation[:, 4:] * EMBEDDING_OUTPUT_SCALE], 1)
        low, high = RADII
        radius = (low + high) / 2 + (high - low) / 2 * out[:, -1]
        return orientation, radius

    def arguments(self) -> dict[str, int | bool | str]:
        return {
            "size": self.size,
            "width": self.width,
            "equalise": self.equalise,
            "stem": self.stem,
            "orientation": self.orientation,
        }
