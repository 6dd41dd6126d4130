"""Targets, loss, inference, stitching and few-shot fine-tuning for the ptychography network.

Patches: frame n sees the object at scan position p (its window's top-left corner); the network's
patch is the central ``size`` x ``size`` of that window, i.e. it starts at p + ``offset`` with
offset = (frame - size) / 2.  Targets are patches of a reference object (the truth in simulations,
ePIE or a loaded reconstruction on real data), normalised so that amplitude ~ 1 and the mean
phase is 0 over the region used, since ptychography fixes neither.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from .ptycho_net import preprocess

# Stitching's floor on the probe weight: a pixel lies in ~40 patches, most of them unlit there,
# and at the loss's floor of 0.02 their guesses made up a third of its stitched value.
STITCH_FLOOR = 1e-3


def patch_offset(frame: int, size: int) -> float:
    """Where the network's patch starts inside a frame's window (object pixels)."""
    return (frame - size) / 2


def sample_patches(
    image: np.ndarray, origin: tuple[float, float], corners: np.ndarray, size: int
) -> np.ndarray:
    """(N, size, size) patches of a complex ``image`` (pixel [0, 0] at scan coordinate
    ``origin``) with top-left corners at sub-pixel scan coordinates ``corners`` (bilinear)."""
    local = np.asarray(corners, float) - np.asarray(origin)
    base = np.floor(local).astype(int)
    fy, fx = (local - base).T
    padded = np.pad(image, ((0, size + 1), (0, size + 1)))
    rows = base[:, 0, None, None] + np.arange(size)[None, :, None]
    cols = base[:, 1, None, None] + np.arange(size)[None, None, :]
    if (base < 0).any() or (rows.max() >= image.shape[0]) or (cols.max() >= image.shape[1]):
        raise ValueError("patches reach outside the reference image")
    fy, fx = fy[:, None, None], fx[:, None, None]
    return (
        (1 - fy) * (1 - fx) * padded[rows, cols]
        + (1 - fy) * fx * padded[rows, cols + 1]
        + fy * (1 - fx) * padded[rows + 1, cols]
        + fy * fx * padded[rows + 1, cols + 1]
    ).astype(np.complex64)


def normalised(image: np.ndarray, region: np.ndarray | None = None) -> np.ndarray:
    """``image`` with amplitude divided by its 99th percentile and the amplitude-weighted mean
    phase removed, both over ``region`` (default all)."""
    inside = image if region is None else image[region]
    amplitude = np.abs(inside)
    scale = float(np.percentile(amplitude, 99)) or 1.0
    offset = np.angle(np.sum(inside))
    return (image / scale * np.exp(-1j * offset)).astype(np.complex64)


def probe_weight(
    probe: np.ndarray | None, frame: int, size: int, floor: float = 0.02
) -> np.ndarray:
    """(size, size) weights in [floor, 1]: the probe intensity under the network's patch (how
    well each patch pixel is seen), or a Gaussian without a probe.  The loss uses the default
    floor; stitching a far lower one (``STITCH_FLOOR``)."""
    if probe is None:
        axis = np.arange(size) - (size - 1) / 2
        weight = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * (size / 6) ** 2))
    else:
        probe = np.asarray(probe)
        probe = probe[0] if probe.ndim == 3 else probe
        lo = round(patch_offset(frame, size))
        weight = np.abs(probe[lo : lo + size, lo : lo + size]) ** 2
    weight = weight / max(float(weight.max()), 1e-30)
    return np.maximum(weight, floor).astype(np.float32)


def featureless_loss(targets: torch.Tensor, weight: torch.Tensor) -> float:
    """``patch_loss`` of a featureless answer (each patch's mean amplitude, no phase): the level
    a network that does not know the scan's probe sits at."""
    level = (weight * targets.abs()).sum((-2, -1), keepdim=True) / weight.sum()
    amplitude = level.expand(targets.shape)
    return float(patch_loss(amplitude, torch.zeros_like(amplitude), targets, weight))


def patch_loss(
    amplitude: torch.Tensor, phase: torch.Tensor, target: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """Probe-weighted mean absolute error of amplitude plus of the wrapped phase difference,
    the latter after removing each patch's weighted mean phase difference: one diffraction
    pattern cannot tell a patch from itself times e^(i c), so the network is not asked to guess
    c (stitching fixes it from the overlaps).  ``weight`` (s, s) for all samples or (B, s, s)."""
    weight = weight.expand_as(amplitude)
    difference = phase - target.angle()
    offset = torch.atan2(
        (weight * difference.sin()).sum((-2, -1), keepdim=True),
        (weight * difference.cos()).sum((-2, -1), keepdim=True),
    ).detach()
    wrapped = torch.remainder(difference - offset + torch.pi, 2 * torch.pi) - torch.pi
    misfit = (amplitude - target.abs()).abs() + wrapped.abs()
    return (weight * misfit).sum() / weight.sum()


@torch.inference_mode()
def predict_patches(
    model: nn.Module,
    intensities: np.ndarray,
    scale: float,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield (start index, complex patches) batch by batch for (N, size, size) patterns."""
    for lo in range(0, len(intensities), batch_size):
        batch = torch.as_tensor(np.asarray(intensities[lo : lo + batch_size], np.float32))
        x = preprocess(batch.to(device), scale).contiguous(memory_format=torch.channels_last)
        amplitude, phase = model(x)
        yield lo, torch.polar(amplitude, phase).cpu().numpy()


def levelled(patches: np.ndarray, counts: np.ndarray, lit: np.ndarray) -> np.ndarray:
    """``patches`` each with its amplitude scaled so that the power it passes under the probe
    matches its pattern's measured ``counts`` (Parseval: sum_k I_n(k) = sum_r |P(r)|^2
    |O_n(r)|^2, ``lit`` = |P|^2 under the patch), the scales' median kept at 1.  A pattern's total counts
    tell exactly how much its patch transmits (what a scanning transmission microscope
    measures), which the network gets only roughly: it compresses the bright end."""
    passed = np.einsum("nij,ij->n", np.abs(patches) ** 2, lit)
    ratio = np.divide(counts, passed, out=np.ones_like(passed), where=passed > 0)
    scale = np.sqrt(np.maximum(ratio, 0))
    typical = float(np.median(scale))
    scale = scale / typical if typical > 0 else np.ones_like(scale)
    return (patches * scale[:, None, None]).astype(np.complex64)


def phase_synchronised(
    patches: np.ndarray, corners: np.ndarray, weight: np.ndarray, rounds: int = 2
) -> np.ndarray:
    """``patches`` each times the e^(i c_n) that makes it agree with its neighbours where they
    overlap.  A diffraction pattern says nothing of its patch's constant phase c_n; the overlaps
    of a scan do.  Patches join one by one from the middle of the scan outwards, each turned onto
    those already placed, then every patch is turned onto all the others ``rounds`` times."""
    size = patches.shape[-1]
    base = np.round(corners - corners.min(axis=0)).astype(int)
    total = np.zeros(tuple(base.max(axis=0) + size), np.complex64)
    lit = patches * weight  # each patch as the stitch weighs it
    windows = [np.s_[y : y + size, x : x + size] for y, x in base]
    turns = np.ones(len(lit), np.complex64)
    middle = base.mean(axis=0)
    for n in np.argsort(np.hypot(*(base - middle).T)):
        agreement = np.vdot(lit[n], total[windows[n]])  # sum conj(patch) x those placed
        if agreement != 0:
            turns[n] = agreement / abs(agreement)
        total[windows[n]] += lit[n] * turns[n]
    own = np.einsum("nij,nij->n", lit.conj(), lit).real
    for round_ in range(rounds):
        seen = sliding_window_view(total, (size, size))[base[:, 0], base[:, 1]]
        agreement = np.einsum("nij,nij->n", lit.conj(), seen) - own * turns  # the others only
        turns = np.where(agreement != 0, agreement / np.maximum(np.abs(agreement), 1e-30), turns)
        if round_ + 1 < rounds:  # the sum of the turned patches, for the next round
            total[:] = 0
            for n, window in enumerate(windows):
                total[window] += lit[n] * turns[n]
    return (patches * turns[:, None, None]).astype(np.complex64)


def stitch(
    patches: np.ndarray,
    corners: np.ndarray,
    weight: np.ndarray,
    origin: tuple[float, float],
    shape: tuple[int, int],
    synchronise: bool = True,
) -> np.ndarray:
    """One complex image on a grid (pixel [0, 0] at scan coordinate ``origin``) from (N, s, s)
    patches at sub-pixel scan ``corners``: bilinear splatting, each patch weighted by ``weight``.
    Amplitude is the weighted mean of the patches' amplitudes, phase the angle of their weighted
    complex sum (so phases average across the -pi/pi cut), after each patch's constant phase is
    made to agree with its neighbours' (:func:`phase_synchronised`; ``synchronise=False`` when
    the patches' phases already agree); unseen pixels are 0."""
    size = patches.shape[-1]
    corners = np.asarray(corners, float)
    if synchronise:
        patches = phase_synchronised(patches, corners, weight)
    local = corners - np.asarray(origin)
    base = np.floor(local).astype(int)
    fraction = local - base
    amplitude_sum = np.zeros((shape[0] + 1, shape[1] + 1))
    complex_sum = np.zeros((shape[0] + 1, shape[1] + 1), np.complex128)
    weight_sum = np.zeros((shape[0] + 1, shape[1] + 1))
    for patch, (y, x), (fy, fx) in zip(patches, base, fraction, strict=True):
        amplitude = np.abs(patch)
        for dy, dx, share in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                              (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):  # fmt: skip
            if share == 0:
                continue
            window = np.s_[y + dy : y + dy + size, x + dx : x + dx + size]
            w = share * weight
            weight_sum[window] += w
            amplitude_sum[window] += w * amplitude
            complex_sum[window] += w * patch
    weight_sum, amplitude_sum = (
        weight_sum[: shape[0], : shape[1]],
        amplitude_sum[: shape[0], : shape[1]],
    )
    complex_sum = complex_sum[: shape[0], : shape[1]]
    seen = weight_sum > 1e-3 * weight_sum.max()
    out = np.zeros(shape, np.complex64)
    out[seen] = amplitude_sum[seen] / weight_sum[seen] * np.exp(1j * np.angle(complex_sum[seen]))
    return out


# The fine-tuned model's share when its weights are averaged with its base's (WiSE-FT).
FINE_TUNED_SHARE = 0.5
MIN_LR_DIVISOR = 8  # halving stops at 1/8 of the start: longer budgets keep learning


@dataclass
class FineTuning:
    """A fine-tuning run's state, kept up to date as it goes, so a stopped run keeps its best
    model: the caller holds this object and reads ``best_model()`` whenever it stops.

    ``best_model()`` is the best weights averaged with the base model's, ``share`` of them the
    fine-tuned (Wortsman et al. 2022, WiSE-FT: the average keeps the base's generality and most
    of what the region taught). Outside the region of the benchmark's held-out scan, the same
    run's weights alone against averaged half and half, phase SSIM 0.714 -> 0.741 and 0.735 ->
    0.741 in two runs (pretrained 0.746), amplitude +0.007; on another object 0.638 -> 0.653; on
    the sparse scan (1 position in 4) 0.649 -> 0.636, a small loss. ``fine_tune`` sets
    ``share`` 1 (no averaging) when the base did not know the probe: its weights have nothing
    to add there."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)  # per epoch: train, validation, lr, seconds
    best_state: dict | None = None
    best_validation: float = float("inf")
    source: dict = field(default_factory=dict)  # what it was trained on, for the model card
    base_state: dict | None = None  # the weights it started from
    share: float = FINE_TUNED_SHARE

    def best_model(self) -> nn.Module:
        model = copy.deepcopy(self.model)
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        if self.base_state is not None and self.share < 1:
            model.load_state_dict(averaged(self.base_state, model.state_dict(), self.share))
        return model.eval()


def averaged(base: dict, tuned: dict, share: float) -> dict:
    """``share`` x tuned + (1 - ``share``) x base for every floating-point tensor (weights and
    batch statistics); counters are the tuned ones."""
    return {
        name: torch.lerp(base[name], value, share) if value.is_floating_point() else value
        for name, value in tuned.items()
    }


def fine_tune(
    run: FineTuning,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    seconds: float = 55.0,
    max_epochs: int = 200,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    seed: int = 0,
    extra: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Iterator[tuple[int, int]]:
    """Generator: PtychoNN's recipe (MAE, Adam 1e-3, learning rate halved when the validation
    loss stalls, 90/10 split), until ``seconds`` (the last epoch cut short and validated) or
    ``max_epochs``; yields (batches done, total) after every batch so Stop (closing the
    generator) ends it within a fraction of a second.
    ``extra`` (inputs, targets) join the training side only (the validation stays measured
    pairs): with them the whole network learns; without them only the decoders. Batch
    normalisation keeps its pretrained statistics, except when there are ``extra`` pairs and
    the network does no better than a featureless answer on the validation pairs: then it
    follows the batches, and the learning rate is doubled, until the validation loss falls
    below 0.8 of that level; from there the statistics it reached are kept. Why: a few hundred
    patterns of one region are too few to re-learn the encoder's features (on the benchmark's
    held-out scan, retraining everything on them alone lowered the phase SSIM outside the
    region from 0.746 to 0.607); thousands of pairs simulated from the reference are not
    (``ptycho.retrain_steps``). On a probe unlike the pretraining's (the tike scan) the loss
    sits at the featureless level until the features change: with the pretrained statistics
    kept that took 100 to 140 s, adapting them 25 to 50 s.
    ``inputs`` (N, 1, s, s) preprocessed, ``targets`` (N, s, s) complex, ``weight`` (s, s)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(inputs), generator=generator)
    n_validation = max(1, len(inputs) // 10)
    validation, training = order[:n_validation], order[n_validation:]
    model = run.model
    if extra is not None:
        inputs = torch.cat([inputs, extra[0]])
        targets = torch.cat([targets, extra[1]])
        training = torch.cat([training, torch.arange(len(order), len(inputs))])
        learning = list(model.parameters())
    else:
        learning = [p for name, p in model.named_parameters() if not name.startswith("encoder.")]
    optimizer = torch.optim.Adam(learning, lr=learning_rate)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=2, min_lr=learning_rate / MIN_LR_DIVISOR
    )
    per_epoch = -(-len(training) // batch_size)
    total = per_epoch * max_epochs
    level = featureless_loss(targets[validation], weight)

    @torch.no_grad()
    def loss_on_validation() -> float:
        model.eval()
        amplitude, phase = model(inputs[validation])
        return float(patch_loss(amplitude, phase, targets[validation], weight))

    adapting = extra is not None and loss_on_validation() >= level
    run.source["adapted_batch_statistics"] = adapting
    run.base_state = copy.deepcopy(model.state_dict())
    run.share = 1.0 if adapting else run.share
    run.source["fine_tuned_share"] = run.share
    if adapting:
        optimizer.param_groups[0]["lr"] = 2 * learning_rate
    start = time.perf_counter()
    done = 0
    for epoch in range(max_epochs):
        model.train()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and not adapting:
                module.eval()  # the pretrained (or adapted) statistics kept
        shuffled = training[torch.randperm(len(training), generator=generator)]
        train_loss, counted = 0.0, 0
        for batch in shuffled.split(batch_size):
            if counted and time.perf_counter() - start > seconds:
                break  # out of time: validate what the epoch has learnt so far, then stop
            amplitude, phase = model(inputs[batch])
            loss = patch_loss(amplitude, phase, targets[batch], weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * len(batch)
            counted += len(batch)
            done += 1
            yield done, total
        validation_loss = loss_on_validation()
        if adapting and validation_loss < 0.8 * level:  # the features formed: keep them
            adapting = False
            optimizer.param_groups[0]["lr"] = learning_rate
        scheduler.step(validation_loss)
        run.history.append(
            {
                "epoch": epoch + 1,
                "train": train_loss / counted,
                "validation": validation_loss,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - start,
            }
        )
        if validation_loss < run.best_validation:
            run.best_validation = validation_loss
            run.best_state = copy.deepcopy(model.state_dict())
        if time.perf_counter() - start > seconds:
            break
    yield total, total
