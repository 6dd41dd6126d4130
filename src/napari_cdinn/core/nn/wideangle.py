"""Labels, augmentation, loss, inference and scores of the wide-angle network.

Image transforms and labels.  A pattern's flips and transpose are patterns of the same cluster
turned: flipping the detector's x axis mirrors the cluster in x, and an icosahedron is centrally
symmetric, so its mirror image is the cluster turned by pi about x (q -> r_x q with
r_x = (0, 1, 0, 0)); likewise pi about y for a row flip, and pi about (1, -1, 0) / sqrt 2 for a
transpose.  The eight compositions augment training, and at test time their answers, turned
back, are combined by consensus.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

import numpy as np
import torch

from .. import icosahedral
from ..simulate.wideangle import RADII
from .cdi import inference_model
from .wideangle_net import WideAngleNet, equalised

Array = TypeVar("Array", np.ndarray, torch.Tensor)  # a network's output, in torch or numpy

_TURNS = {  # the rotation that a flip or transpose of the image stands for
    "flip_x": np.array([0.0, 1.0, 0.0, 0.0]),
    "flip_y": np.array([0.0, 0.0, 1.0, 0.0]),
    "transpose": np.array([0.0, 1.0, -1.0, 0.0]) / math.sqrt(2),
}


@lru_cache(maxsize=1)
def image_transforms() -> tuple[tuple[Callable[[torch.Tensor], torch.Tensor], np.ndarray], ...]:
    """The eight flips/transposes of an image (..., H, W) with rows y and columns x, each with
    the quaternion m such that the transformed pattern of orientation q is that of m q."""
    transforms = []
    for transpose in (False, True):
        for flip_y in (False, True):
            for flip_x in (False, True):
                turn = np.array([1.0, 0.0, 0.0, 0.0])
                for used, name in (
                    (transpose, "transpose"),
                    (flip_y, "flip_y"),
                    (flip_x, "flip_x"),
                ):
                    if used:
                        turn = icosahedral.multiply(_TURNS[name], turn)

                def apply(x, transpose=transpose, flip_y=flip_y, flip_x=flip_x):
                    if transpose:
                        x = x.transpose(-2, -1)
                    if flip_y:
                        x = x.flip(-2)
                    if flip_x:
                        x = x.flip(-1)
                    return x

                transforms.append((apply, turn))
    return tuple(transforms)


CONSENSUS_DEGREES = 8.0  # test-time flips' answers farther than this from their medoid: outliers

_RIGHT = torch.tensor(  # (60, 4, 4): q g = _RIGHT[g] @ q
    np.stack([icosahedral.multiply(np.eye(4), g) for g in icosahedral.GROUP]).transpose(0, 2, 1),
    dtype=torch.float32,
)


def orientation_loss(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per sample sin(theta / 2), theta the misorientation modulo the group: the network may
    answer any of the 60 (x +-1) quaternions of the orientation, and the loss grows like the
    angle itself near zero (not its square), which keeps pulling small errors in."""
    equivalents = torch.einsum("gij,bj->bgi", _RIGHT.to(truth), truth)
    cosine = torch.einsum("bgi,bi->bg", equivalents, predicted).abs().amax(dim=1)
    return torch.sqrt((1 - cosine.square()).clamp_min(0) + 1e-8)


def embedding_loss(predicted: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per sample the distance of a predicted embedding (B, 29) from that of the true
    orientations (B, 4): about sin(theta / 2) for small misorientations theta, as
    :func:`orientation_loss`, with no minimum over the group to take (the embedding is the
    same for every equivalent quaternion)."""
    target = torch.as_tensor(icosahedral.embedding(truth.detach().cpu().double().numpy()))
    difference = predicted - target.to(predicted)
    return torch.sqrt(difference.square().sum(dim=1) + 1e-8)


def loss(
    orientation: torch.Tensor, radius: torch.Tensor, true_q: torch.Tensor, true_r: torch.Tensor
) -> torch.Tensor:
    """Mean of the orientation loss (quaternions (B, 4), embeddings (B, 29) or both (B, 33)
    against the true quaternions) plus the radius error over half the radius range."""
    half_range = (RADII[1] - RADII[0]) / 2
    error = (radius - true_r).abs() / half_range
    quaternion, embedding = orientation_parts(orientation)
    if quaternion is not None:
        error = error + orientation_loss(quaternion, true_q)
    if embedding is not None:
        error = error + embedding_loss(embedding, true_q)
    return error.mean()


def orientation_parts(output: Array) -> tuple[Array | None, Array | None]:
    """The quaternions (B, 4) and the embeddings (B, 29) in a network's orientation output
    (B, 4, 29 or 33 wide: the quaternion, the embedding, or both, in that order); None for a
    part it does not give."""
    n = len(icosahedral.EMBEDDING_DIRECTIONS)
    width = output.shape[1]
    return (output[:, :4] if width != n else None, output[:, -n:] if width != 4 else None)


def _disc(shape: tuple[int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (y, x) from the image centre."""
    y = torch.arange(shape[0], device=device, dtype=torch.float32) - (shape[0] - 1) / 2
    x = torch.arange(shape[1], device=device, dtype=torch.float32) - (shape[1] - 1) / 2
    return y[:, None], x[None, :]


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Detector-like corruption of (B, 1, H, W) log images in [0, 1] (0: no signal), after
    Stielow et al., in the order things happen: the beam off centre (shift up to 4 px), the
    detector's blur (Gaussian, sigma up to 5 px, mostly small), uneven sensitivity (a smooth
    gain of up to +-0.25 decade), uniform noise, the display scaling of the saved image (a
    random floor keeping 2 to 5 decades, and a gamma of 0.7 to 1.6: the real shots are 8-bit
    display images of unknown scaling), the finite detector (a centred rectangle of random
    size, 36 to 100 % of the frame each way, with cut corners), the beam stop's central hole,
    a gap between detector tiles and blind spots, and salt-and-pepper pixels.  Each sample
    draws its own strengths.  ``generator`` is on the images' device (CPU or CUDA)."""
    device = images.device

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(shape or (b,), generator=generator, device=device)

    b, _, h, w = images.shape
    out = torch.nn.functional.pad(images, (4, 4, 4, 4))
    shifts = torch.randint(0, 9, (b, 2), generator=generator, device=device)
    out = torch.stack([out[i, :, y : y + h, x : x + w] for i, (y, x) in enumerate(shifts.tolist())])
    sigma = 5 * uniform(0, 1) ** 3
    rows = blur_rows(sigma, h)
    out = rows @ out @ (rows if w == h else blur_rows(sigma, w)).transpose(-2, -1)
    gain = torch.randn((b, 1, 4, 4), generator=generator, device=device)
    gain = gain * uniform(0, 0.025)[:, None, None, None]
    out = out + _smooth_rows(h).to(device) @ gain @ _smooth_rows(w).to(device).T
    # one uniform draw per pixel serves the salt and pepper (below ``rate``) and, rescaled to
    # [0, 1), the noise of the other pixels (the salt and pepper overwrite theirs)
    rate = uniform(0, 0.01)[:, None, None, None]
    draw = torch.rand(out.shape, generator=generator, device=device)
    noise = ((draw - rate) / (1 - rate) - 0.5) * 2 * uniform(0, 0.04)[:, None, None, None]
    out = out + noise
    floor, gamma = uniform(0, 0.6)[:, None, None, None], uniform(0.7, 1.6)[:, None, None, None]
    out = ((out - floor) / (1 - floor)).clamp(0, 1) ** gamma
    y, x = _disc((h, w), images.device)
    half_y, half_x = uniform(0.18, 0.5)[:, None, None] * h, uniform(0.18, 0.5)[:, None, None] * w
    corner = uniform(0.7, 1.0)[:, None, None] * (half_y + half_x)
    detector = (y.abs() <= half_y) & (x.abs() <= half_x) & ((y.abs() + x.abs()) <= corner)
    hole = (y**2 + x**2) <= (uniform(1, 8) ** 2)[:, None, None]
    dead = ~detector | hole
    gap_at = uniform(-10, 10)[:, None, None]
    gap_half = uniform(0.5, 2)[:, None, None]
    horizontal = (uniform(0, 1) < 0.5)[:, None, None]
    across = torch.where(horizontal, y - gap_at, x - gap_at)  # (b, h, w)
    dead |= (across.abs() < gap_half) & (uniform(0, 1) < 0.3)[:, None, None]
    for _ in range(3):  # blind spots
        spot_on = uniform(0, 1) < 0.3
        cy, cx, radius = uniform(-40, 40), uniform(-40, 40), uniform(2, 6)
        spot = ((y - cy[:, None, None]) ** 2 + (x - cx[:, None, None]) ** 2) < (radius**2)[
            :, None, None
        ]
        dead |= spot & spot_on[:, None, None]
    out = torch.where(dead[:, None], 0.0, out)
    out = torch.where(draw < rate / 2, 1.0, torch.where(draw < rate, 0.0, out))
    return out.clamp(0, 1)


def blur_rows(sigma: torch.Tensor, n: int, reach: int = 12) -> torch.Tensor:
    """(B, 1, n, n) matrices that blur along one axis by a Gaussian of ``sigma`` (B,) pixels:
    a 2 ``reach`` + 1 tap kernel normalised to sum 1, zero beyond the edges, so that
    ``rows @ image @ columns.T`` is the separable 2D blur as one batched product."""
    taps = torch.arange(-reach, reach + 1, dtype=torch.float32, device=sigma.device)
    kernel = torch.exp(-(taps**2) / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))
    kernel = kernel / kernel.sum(-1, keepdim=True)
    zeros = torch.zeros(len(sigma), n - 1, dtype=torch.float32, device=sigma.device)
    padded = torch.cat([zeros, kernel, zeros], dim=1)  # tap d at column d + reach + n - 1
    index = torch.arange(n, device=sigma.device)
    return padded[:, index[:, None] - index[None, :] + reach + n - 1][:, None]


@lru_cache(maxsize=4)
def _smooth_rows(n: int, knots: int = 4) -> torch.Tensor:
    """(n, knots): bicubic interpolation (corners aligned) of ``knots`` values to ``n`` pixels,
    as a matrix (the gain map is linear in its knots)."""
    basis = torch.eye(knots)[:, None, :, None].expand(knots, 1, knots, 1)
    rows = torch.nn.functional.interpolate(basis, (n, 1), mode="bicubic", align_corners=True)
    return rows[:, 0, :, 0].T.contiguous()


def inference_network(net: WideAngleNet, features: torch.dtype = torch.float32) -> torch.nn.Module:
    """The network for answering: batch norm fused into the convolutions, channels-last, and
    its input ranking (``equalise``) left to :func:`predict`, which ranks each image once
    instead of once per flip (the ranks of a flipped image are the flipped ranks: a flip only
    permutes the pixels).  ``features=torch.bfloat16``: the convolutions in bfloat16, as a
    network trained with ``--precision bfloat16`` learnt them (the head stays float32)."""
    plain = copy.deepcopy(net)
    plain.equalise = False
    fast = inference_model(plain).to(features)
    fast.head.float()  # its input is cast to float32 by the network's forward
    fast.ranks_input = net.equalise
    fast.input_dtype = features
    return fast


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    images: np.ndarray,
    device: torch.device | str = "cpu",
    tta: bool = True,
    batch_size: int = 64,
    agreement: bool = False,
) -> tuple[np.ndarray, ...]:
    """Orientations (N, 4, fundamental domain) and radii (N,) for (N, H, W) log images, each
    the :func:`consensus` of the eight flips/transposes (``tta``) with their quaternion maps
    undone (of all 16 answers, where the network gives a quaternion and an embedding for each:
    on 1000 held-out shots median misorientation 2.27 deg, the 8 embeddings' 2.28, the 8
    quaternions' 2.60, relative error 3.05, 3.21 and 3.37 %);
    ``batch_size`` network images (flips included) go through it together (on the CPU about
    64 are fastest per image: 8 shots with their flips take 0.6 ms each, 64 shots with theirs
    1.0: their activations no longer stay in the cache).  ``model``: a
    :class:`WideAngleNet` or its :func:`inference_network`.  Radii are clipped to the training
    range ``RADII``: beyond it the network's answer is an extrapolation.  With ``agreement``
    also (N,) how many of the flips agree with the answer (:func:`consensus`; with two answers
    per flip, half the agreeing answers, at least 1)."""
    transforms = image_transforms() if tta else image_transforms()[:1]
    undo = icosahedral.conjugate(np.stack([turn for _, turn in transforms]))
    ranked_here = getattr(model, "ranks_input", False)
    quaternions, radii, agreeing = [], [], []
    shots = max(1, batch_size // len(transforms))
    for lo in range(0, len(images), shots):
        x = torch.as_tensor(np.asarray(images[lo : lo + shots], np.float32))[:, None]
        x = equalised(x.to(device)) if ranked_here else x.to(device)
        batch = torch.cat([apply(x) for apply, _ in transforms])
        batch = batch.to(getattr(model, "input_dtype", torch.float32))
        q, r = model(batch.contiguous(memory_format=torch.channels_last))
        q = np.stack(orientation_answers(q.cpu().numpy().astype(float)))  # (kinds, B, 4)
        q = q.reshape(len(q) * len(transforms), len(x), 4)
        back = icosahedral.multiply(np.tile(undo, (len(q) // len(undo), 1))[:, None], q)
        r = np.tile(r.cpu().numpy().astype(float), len(q) // len(undo))
        r = r.reshape(len(q), len(x))
        orientation, radius, agree = consensus(back.transpose(1, 0, 2), r.T)
        quaternions.append(orientation)
        # counted in flips (two answers each), at least the one the answer came from
        agreeing.append(np.maximum(agree * len(undo) // len(q), 1))
        radii.append(np.clip(radius, *RADII))  # the network knows no clusters outside RADII
    answers = np.concatenate(quaternions), np.concatenate(radii)
    return (*answers, np.concatenate(agreeing)) if agreement else answers


def orientation_answers(output: np.ndarray) -> list[np.ndarray]:
    """The orientations (B, 4) in a network's orientation output (B, 4, 29 or 33 wide): its
    quaternions, the orientations nearest its embeddings, or both."""
    quaternion, embedding = orientation_parts(output)
    answers = [] if quaternion is None else [quaternion]
    if embedding is not None:
        answers.append(icosahedral.from_embedding(embedding))
    return answers


def consensus(
    quaternions: np.ndarray, radii: np.ndarray, within: float = CONSENSUS_DEGREES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, K, 4) orientation and (N, K) radius estimates of N shots (the flips' answers, turned
    back) -> (N, 4) orientations in the fundamental domain, (N,) radii and (N,) how many of
    the K agree: the mean of the estimates within ``within`` degrees (modulo the group) of
    their medoid, the estimate nearest all the others; the radius is the mean of all K (its
    errors do not follow the orientation's outliers: on the 1000 shots below, median radius
    error 0.463 nm against 0.481 for the mean of the agreeing ones).  The count is the answer's confidence:
    on the benchmark's 5000 augmented held-out shots the median misorientation was 1.9 deg
    where all eight agreed (a third of the shots) and 7.5 to 21 deg where three or fewer did.
    Why not the plain mean: a flip now and then answers tens of degrees off, and the mean
    follows it; on 1000 augmented held-out shots the plain mean of all eight gave a median
    misorientation of 3.11 deg, this 2.49 (the medoid alone 2.77)."""
    candidates = icosahedral.equivalents(quaternions)  # (N, K, 60, 4)
    cosine = np.einsum("nagi,nbi->nabg", candidates, quaternions)  # a's equivalents . b
    nearest = np.abs(cosine).argmax(axis=-1)  # (N, K, K): a's equivalent nearest b
    best = np.take_along_axis(cosine, nearest[..., None], axis=-1)[..., 0]
    angle = np.degrees(2 * np.arccos(np.clip(np.abs(best), 0.0, 1.0)))
    shots = np.arange(len(quaternions))
    medoid = angle.sum(axis=2).argmin(axis=1)
    kept = angle[shots, :, medoid] <= within  # the medoid itself always (angle 0)
    turned = np.take_along_axis(candidates, nearest[shots, :, medoid][..., None, None], axis=2)[
        :, :, 0
    ]  # each estimate's equivalent nearest the medoid
    sign = np.sign(best[shots, :, medoid])
    aligned = turned * np.where(sign == 0, 1, sign)[..., None]
    orientation = (aligned * kept[..., None]).sum(axis=1)
    return icosahedral.reduced(orientation), radii.mean(axis=1), kept.sum(axis=1)


def parameter_errors(
    quaternion: np.ndarray, radius: np.ndarray, true_q: np.ndarray, true_r: np.ndarray
) -> dict[str, np.ndarray]:
    """Per shot: misorientation (degrees), radius error (nm), and the paper's relative
    parameter error: the mean over the five parameters (w, x, y, z of the fundamental-domain
    quaternion, radius) of |error| / that parameter's range (the domain's extent in each
    component, the radius range), taking the prediction's equivalent nearest the truth."""
    truth = icosahedral.reduced(true_q)
    candidates = icosahedral.equivalents(quaternion)
    cosine = np.einsum("ngi,ni->ng", candidates, truth)
    best = np.abs(cosine).argmax(axis=1)
    nearest = (
        candidates[np.arange(len(truth)), best]
        * np.sign(cosine[np.arange(len(truth)), best])[:, None]
    )
    ranges = np.append(domain_ranges(), RADII[1] - RADII[0])
    errors = np.abs(np.column_stack([nearest - truth, radius - true_r])) / ranges
    return {
        "misorientation": icosahedral.misorientation(quaternion, true_q),
        "radius": np.abs(radius - true_r),
        "relative": errors.mean(axis=1),
    }


@lru_cache(maxsize=1)
def domain_ranges(n: int = 20_000, seed: int = 0) -> np.ndarray:
    """The extent (max - min) of each quaternion component over the fundamental domain,
    from uniformly drawn orientations."""
    q = icosahedral.random_orientations(n, np.random.default_rng(seed))
    return q.max(axis=0) - q.min(axis=0)
