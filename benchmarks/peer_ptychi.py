"""Peer benchmark: our ePIE against pty-chi's (APS's PyTorch ptychography library) on the tike scan.

Both reconstruct the real tike Siemens-star scan (``../shared/data/ptycho``: 516 patterns of
128 x 128, far field) on the CPU with 2 torch threads, in one process, from the same probe guess,
with the same number of epochs and batch size, each timed on one run after a short warm-up run.
Printed: seconds per epoch of each and their ratio, and the agreement of the two objects
(``metrics.object_ssim``, amplitude and phase, each against the other) over the well-scanned
region (``ptycho.scanned_region``) of our object grid.

pty-chi is not a dependency of the project: it runs from a venv of its own, outside the repo.  Its
import of torchvision needs a torchvision built for the same torch, so the venv gets its own torch
(a CUDA build that runs on the CPU; on this machine both wheels lie on the local disk)::

    python3 -m venv /work/ptychi-venv
    /work/ptychi-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/ptychi-venv/bin/pip install ptychi==2.2.0
    /work/ptychi-venv/bin/pip install -e /work/main       # our package, into the same venv

Run (the default: 50 epochs, ours then pty-chi's ePIE and rPIE, about 3 to 3.5 min on 2 cores;
the timings move a lot with anything else running on those cores)::

    /work/ptychi-venv/bin/python benchmarks/peer_ptychi.py --epochs 50
    /work/ptychi-venv/bin/python benchmarks/peer_ptychi.py --peer epie --save /tmp/objects.npz

The pty-chi side (``run_ptychi``), and how it is made equivalent to ours:

* Algorithm: ours (``EpieRecipe``) is mini-batch rPIE (object alpha 0.05, probe alpha 0.2), the
  probe updated once per epoch from epoch 2 on.  ``--peer`` picks pty-chi's (both by default):
  ``epie``, its ``EPIEOptions`` (``EPIEReconstructor``) with the textbook ePIE steps, alpha 1 for
  object and probe (step weight alpha conj(P) / max|P|^2, SGD with step size 1), and ``rpie``,
  its ``RPIEOptions`` with our alphas, the algorithm closest to ours.  pty-chi's PIEs add up the
  per-frame steps of a batch (ours divides a batch's step by its summed probe intensity) and
  update the probe every batch (ours once per epoch), from the same epoch 2 on
  (``optimization_plan.start``).  Random batches of 32 (``BatchingModes.RANDOM``), fixed
  positions, one probe mode, float32; the rest are pty-chi's defaults.  With both, the two
  pty-chi objects are also scored against each other, for scale.
* Probe guess: the scan's probe scaled as ours scales it (its power matched to the mean photon
  count), divided by sqrt(H W) since pty-chi's far-field propagator is the unnormalised FFT (ours
  is orthonormal): both start from the object 1 with the same predicted intensities.
* Data: the centred intensities as they are, ``fft_shift=True`` (pty-chi shifts them itself).
* Positions: ours are the (y, x) scan coordinates of each frame's top-left corner; pty-chi's are
  frame centres, relative to ``object_options.position_origin_coords`` (the buffer pixel of
  position (0, 0)).  The buffer is given our grid's shape and the origin is set explicitly
  (``SPECIFIED``) to the pixel centre nearest the grid's middle, so that pty-chi's buffer pixel
  [i, j] is our grid's pixel [i, j] (scan coordinate ``grid.origin + (i, j)``): no resampling.
  The object pixel is the same on both sides (far field: the detector-conjugate pixel).  The
  residual sub-pixel offset between the two objects is measured by cross-correlation and printed.
* Phase ramp: the data cannot tell a linear phase ramp of the object from a shift of the probe's
  spectrum; ours removes it (``_flattened``), pty-chi does not.  The agreement is printed for the
  objects as returned and after removing pty-chi's mean ramp over the region, the way ours does.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from napari_cdinn.core import io, metrics, ptycho
from napari_cdinn.core.data import ObjectResult, PtychoScan
from napari_cdinn.core.progress import run_to_end
from napari_cdinn.core.retrieval.ptycho import EpieRecipe, initial_probe

REPO = Path(__file__).resolve().parents[1]
TIKE = REPO.parent / "shared" / "data" / "ptycho" / "siemens-star-small.npz.bz2"
PEERS = ("epie", "rpie")


def run_ours(scan: PtychoScan, epochs: int, batch_size: int) -> tuple[ObjectResult, float]:
    """Our ePIE on the CPU: the result and its wall time."""
    recipe = EpieRecipe(epochs=epochs, batch_size=batch_size)
    start = time.perf_counter()
    result = run_to_end(ptycho.epie_steps(scan, recipe, device="cpu"))
    return result, time.perf_counter() - start


def probe_guess(scan: PtychoScan, intensities: np.ndarray) -> np.ndarray:
    """The probe guess ours starts from (the scan's, power matched to the mean photon count, as
    ``run_epie`` does it) for pty-chi's unnormalised FFT: divided by sqrt(H W)."""
    guess = scan.probe if scan.probe is not None else initial_probe(intensities)
    guess = np.asarray(guess, np.complex64)
    if guess.ndim == 3:
        guess = guess[0]
    h, w = guess.shape
    power = float(np.mean(np.sum(intensities, axis=(-2, -1))))
    guess = guess * math.sqrt(power / max(float(np.sum(np.abs(guess) ** 2)), 1e-30))
    return (guess / math.sqrt(h * w)).astype(np.complex64)


def buffer_origin(shape: tuple[int, int]) -> np.ndarray:
    """pty-chi's origin for a buffer of ``shape``: the pixel centre nearest its middle."""
    return np.floor(np.asarray(shape) / 2) - 0.5


def ptychi_positions(
    positions: np.ndarray, frame: tuple[int, int], grid: ptycho.ObjectGrid
) -> np.ndarray:
    """Our top-left scan coordinates as pty-chi positions (y, x): frame centres in buffer pixels,
    relative to :func:`buffer_origin`, for a buffer laid exactly on ``grid``."""
    centres = np.asarray(positions, float) + (np.asarray(frame) - 1) / 2  # scan coordinates
    return centres - np.asarray(grid.origin) - buffer_origin(grid.shape)


def ptychi_options(peer: str, epochs: int, batch_size: int, grid: ptycho.ObjectGrid):
    """pty-chi's options for ``peer`` (see the module docstring); data go to the task."""
    import ptychi.api as api

    recipe = EpieRecipe(epochs=epochs, batch_size=batch_size)
    if peer == "epie":
        options, object_alpha, probe_alpha = api.EPIEOptions(), 1.0, 1.0
    else:
        options = api.RPIEOptions()
        object_alpha, probe_alpha = recipe.object_alpha, recipe.probe_alpha
    options.data_options.fft_shift = True  # our intensities are centred
    options.data_options.free_space_propagation_distance_m = math.inf  # far field

    rec = options.reconstructor_options
    rec.num_epochs = epochs
    rec.batch_size = batch_size
    rec.batching_mode = api.BatchingModes.RANDOM
    rec.default_device = api.Devices.CPU
    rec.default_dtype = api.Dtypes.FLOAT32
    rec.random_seed = recipe.seed

    obj = options.object_options
    obj.optimizable = True
    obj.optimizer = api.Optimizers.SGD
    obj.step_size = 1.0
    obj.alpha = object_alpha
    obj.determine_position_origin_coords_by = api.ObjectPosOriginCoordsMethods.SPECIFIED
    obj.position_origin_coords = buffer_origin(grid.shape).tolist()

    probe = options.probe_options
    probe.optimizable = recipe.probe_update_from is not None
    probe.optimizer = api.Optimizers.SGD
    probe.step_size = 1.0
    probe.alpha = probe_alpha
    probe.optimization_plan.start = recipe.probe_update_from or 0

    options.probe_position_options.optimizable = False
    options.opr_mode_weight_options.optimizable = False
    return options


def run_ptychi(
    scan: PtychoScan, peer: str, epochs: int, batch_size: int
) -> tuple[np.ndarray, float, float, float | None]:
    """pty-chi's ``peer`` PIE on the CPU: (complex object on our grid, seconds of ``run()``,
    seconds to build the task, pty-chi's last displayed loss)."""
    from ptychi.api.task import PtychographyTask

    intensities = np.asarray(scan.stack.frames(), np.float32)
    frame = intensities.shape[-2:]
    grid = ptycho.ObjectGrid.around(scan.positions, frame)
    positions = ptychi_positions(scan.positions, frame, grid)
    mask = scan.stack.mask
    start = time.perf_counter()
    task = PtychographyTask(
        ptychi_options(peer, epochs, batch_size, grid),
        diffraction_data=torch.as_tensor(intensities),
        object_data=torch.ones((1, *grid.shape), dtype=torch.complex64),
        probe_data=torch.as_tensor(probe_guess(scan, intensities))[None, None],
        probe_position_y_px=torch.as_tensor(positions[:, 0], dtype=torch.float32),
        probe_position_x_px=torch.as_tensor(positions[:, 1], dtype=torch.float32),
        valid_pixel_mask=None if mask is None else torch.as_tensor(np.asarray(mask, bool)),
    )
    origin = task.object.pos_origin_coords.cpu().numpy()
    if not np.allclose(origin, buffer_origin(grid.shape)):
        raise RuntimeError(f"pty-chi placed the position origin at {origin}, not where asked")
    built = time.perf_counter()
    task.run()
    seconds = time.perf_counter() - built
    obj = task.get_data_to_cpu("object", as_numpy=True)[0]
    losses = getattr(task.reconstructor.loss_tracker, "table", None)
    loss = None
    if losses is not None and len(losses):
        loss = float(np.asarray(losses["loss"])[-1])
    return obj.astype(np.complex64), seconds, built - start, loss


def deramped(obj: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``obj`` without its mean linear phase ramp over ``region`` (amplitude-weighted phase step
    between neighbours inside it), as our ePIE flattens its own result."""
    both_y, both_x = region[1:] & region[:-1], region[:, 1:] & region[:, :-1]
    step_y = np.angle((obj[1:] * obj[:-1].conj())[both_y].sum())
    step_x = np.angle((obj[:, 1:] * obj[:, :-1].conj())[both_x].sum())
    y, x = np.indices(obj.shape)
    return (obj * np.exp(-1j * (step_y * y + step_x * x))).astype(np.complex64)


def residual_shift(image: np.ndarray, reference: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Sub-pixel (y, x) shift that best moves ``image`` onto ``reference``, from their amplitudes
    (less their means) inside ``region`` (amplitudes: a phase ramp would not move them): 0 when
    the two grids are laid alike."""
    from skimage.registration import phase_cross_correlation

    def varying(obj: np.ndarray) -> np.ndarray:
        amplitude = np.abs(obj)
        return (amplitude - amplitude[region].mean()) * region

    shift, _, _ = phase_cross_correlation(
        varying(reference), varying(image), upsample_factor=20, normalization=None
    )
    return np.asarray(shift)


def phase_correlation(image: np.ndarray, reference: np.ndarray, region: np.ndarray) -> float:
    """Pearson correlation of the two phases inside ``region``, after :func:`metrics.matched`
    (symmetric, unlike SSIM, and blind to the noise level's effect on the data range)."""
    image = metrics.matched(np.asarray(image, complex), np.asarray(reference, complex), region)
    return float(np.corrcoef(np.angle(image)[region], np.angle(reference)[region])[0, 1])


def agreement(
    label: str, image: np.ndarray, other: np.ndarray, region: np.ndarray, names: tuple[str, str]
) -> None:
    """SSIM (amplitude, phase) each way (the reference sets SSIM's data range) and the phase
    correlation of two objects on the same grid."""
    forward = metrics.object_ssim(image, other, region)
    backward = metrics.object_ssim(other, image, region)
    print(
        f"  {label:<28} SSIM {names[0]} vs {names[1]}: amplitude {forward[0]:.3f} phase "
        f"{forward[1]:.3f}; {names[1]} vs {names[0]}: amplitude {backward[0]:.3f} phase "
        f"{backward[1]:.3f}; phase correlation {phase_correlation(image, other, region):.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=TIKE)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--peer", nargs="+", choices=PEERS, default=list(PEERS))
    parser.add_argument(
        "--warm-up",
        type=int,
        default=3,
        help="epochs of each untimed first run (3: one with a probe update)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", type=Path, help="write the objects to this .npz")
    args = parser.parse_args()

    import ptychi  # here: the project's own venv has no pty-chi

    logging.getLogger("ptychi").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
    torch.set_num_threads(args.threads)
    scan = io.read(args.data)
    n, h, w = np.asarray(scan.stack.frames()).shape
    grid = ptycho.ObjectGrid.around(scan.positions, (h, w))
    region = ptycho.scanned_region(scan.positions, h, grid.origin, grid.shape)
    print(
        f"{args.data.name}: {n} patterns of {h} x {w}, object grid {grid.shape} "
        f"(origin {grid.origin}); {args.epochs} epochs, batch {args.batch_size}, "
        f"{torch.get_num_threads()} torch threads; torch {torch.__version__}, "
        f"pty-chi {getattr(ptychi, '__version__', '?')}"
    )

    run_ours(scan, args.warm_up, args.batch_size)  # numba compilation, allocator
    ours, ours_seconds = run_ours(scan, args.epochs, args.batch_size)
    if ours.origin != grid.origin or ours.objects.shape != grid.shape:
        raise RuntimeError(f"our result lies on {ours.origin} {ours.objects.shape}, not on {grid}")
    power = float(np.mean(np.sum(np.asarray(scan.stack.frames()), axis=(-2, -1))))
    misfit = ours.provenance.parameters["fourier_error"][-1]
    print(
        f"{'ours (mini-batch rPIE, alpha 0.05 / 0.2):':<41} {ours_seconds / args.epochs:7.3f} "
        f"s/epoch; Fourier misfit of the last epoch {misfit:.4f}"
    )
    saved = {"ours": ours.objects, "region": region, "origin": np.asarray(grid.origin)}
    for peer in args.peer:
        run_ptychi(scan, peer, args.warm_up, args.batch_size)
        theirs, seconds, build, loss = run_ptychi(scan, peer, args.epochs, args.batch_size)
        saved[f"ptychi_{peer}"] = theirs
        name = {"epie": "EPIE, alpha 1 / 1", "rpie": "RPIE, alpha 0.05 / 0.2"}[peer]
        name = f"pty-chi {peer} ({name}):"
        # pty-chi's loss: mean over pixels of (sqrt(I_model) - sqrt(I))^2 per batch; ours: the
        # same squares summed over the epoch's patterns over their summed counts
        misfit = "?" if loss is None else f"{loss * h * w / power:.4f}"
        print(
            f"{name:<41} {seconds / args.epochs:7.3f} s/epoch "
            f"(+ {build:.2f} s to build the task), pty-chi / ours = "
            f"{seconds / ours_seconds:.2f}; Fourier misfit of the last epoch {misfit}"
        )
        if not np.isfinite(theirs).all():
            print("  pty-chi's object holds NaN or infinite values")
            continue
        shift = residual_shift(theirs, ours.objects, region)
        print(f"  residual shift of pty-chi's object onto ours (y, x): {shift.round(2)} px")
        names = ("pty-chi", "ours")
        agreement("as returned", theirs, ours.objects, region, names)
        agreement(
            "pty-chi's phase ramp removed", deramped(theirs, region), ours.objects, region, names
        )
    if {"ptychi_epie", "ptychi_rpie"} <= saved.keys():
        print("pty-chi's two, against each other for scale:")
        epie, rpie = (deramped(saved[f"ptychi_{peer}"], region) for peer in PEERS)
        agreement("phase ramps removed", rpie, epie, region, ("rpie", "epie"))
    if args.save:
        np.savez_compressed(args.save, **saved)


if __name__ == "__main__":
    main()
