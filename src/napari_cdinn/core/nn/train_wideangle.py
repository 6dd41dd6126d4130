"""Pretraining of the wide-angle network on MSFT simulations (``training/train_wideangle.py``).

Simulates ``--n-shots`` noiseless shots of random icosahedra once (2 processes, cached in
``--workdir`` as 8-bit log images, the real shots' format), then trains within ``--minutes``
on them with fresh detector-like augmentation (``nn.wideangle.augment``) and one of the eight
exact flips/transposes (labels mapped) per batch, checkpointing every epoch so an interrupted
run resumes; writes weights and model card with the held-out scores to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import torch

from ... import __version__
from .. import icosahedral
from ..device import resolve_device
from ..simulate.wideangle import (
    ABSORPTION_LENGTH,
    DYNAMIC_RANGE,
    RADII,
    REFRACTIVE_DECREMENT,
    Detector,
    simulate_shots,
)
from .registry import save_model
from .training import (
    CHECKPOINT,
    Log,
    cached,
    data_recipe,
    prepare_run,
    resume,
    save_cache,
    session_facts,
    train_within_budget,
    training_precision,
    training_record,
)
from .wideangle import augment, image_transforms, loss, parameter_errors, predict
from .wideangle_net import WideAngleNet

CHUNK = 500  # shots per simulation task
VALIDATION_SEED = 7_777_777  # validation shots; held-out shots use 8_888_888
HELD_OUT_SEED = 8_888_888


OUTPUTS = {
    "quaternion": "orientation as a unit quaternion (w, x, y, z)",
    "embedding": "orientation as its symmetry-invariant embedding (core.icosahedral.embedding), "
    "read as the nearest orientation (core.icosahedral.from_embedding)",
    "both": "orientation as a unit quaternion (w, x, y, z) and as its symmetry-invariant "
    "embedding (core.icosahedral.embedding), read as the nearest orientation",
}
_QUATERNION_LOSS = "sin(misorientation / 2) modulo the 60 rotations"
_EMBEDDING_LOSS = (
    "the distance of the symmetry-invariant orientation embeddings (core.icosahedral.embedding; "
    "about sin(misorientation / 2) when small)"
)
ORIENTATION_LOSSES = {
    "quaternion": _QUATERNION_LOSS,
    "embedding": _EMBEDDING_LOSS,
    "both": f"{_QUATERNION_LOSS} + {_EMBEDDING_LOSS}",
}


def _simulate_chunk(task: tuple[int, int, Path]) -> None:
    """Simulate one chunk of shots (its seed, its size) into its own cache file, whole or not
    at all, so that an interrupted simulation resumes with the chunks it finished."""
    seed, size, path = task
    images, orientations, radii = simulate_shots(size, seed)
    images = np.round(images * 255).astype(np.uint8)
    save_cache(path, {"images": images, "orientations": orientations, "radii": radii})


def _quiet(message: str) -> None:
    """A log that says nothing: one line per chunk of a cache would bury the training's."""


def training_data(
    n_shots: int, seed: int, workdir: Path, log: Log, processes: int = 2
) -> dict[str, np.ndarray]:
    """Simulate (in ``processes`` single-threaded processes) or load the cached training
    shots.  Chunks are cached one by one as they finish (the simulation of 60k shots takes
    about 14 minutes on 2 cores: a run stopped in it resumes where it was) and joined into one
    cache at the end; a chunk's shots depend only on its seed, so a resumed set is the same."""
    cache = workdir / f"shots_n{n_shots}_seed{seed}.npz"
    keys = ("images", "orientations", "radii")
    data = cached(cache, log, keys)
    if data is not None:
        return data
    start = time.time()
    chunks = workdir / f"shots_n{n_shots}_seed{seed}_chunks"  # a run of its own
    chunks.mkdir(parents=True, exist_ok=True)
    tasks = [
        (seed * 1_000_000 + i, CHUNK, chunks / f"chunk_{i:05d}.npz")
        for i in range(-(-n_shots // CHUNK))
    ]
    parts = {path: cached(path, _quiet, keys) for *_, path in tasks}  # None: to simulate
    missing = [task for task in tasks if parts[task[-1]] is None]
    if len(missing) < len(tasks):
        log(f"{len(tasks) - len(missing)} of {len(tasks)} chunks of shots already simulated")
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[name] = "1"  # read by the spawned workers as they start
    if missing:
        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            for done, _ in enumerate(pool.imap_unordered(_simulate_chunk, missing), 1):
                if done % 20 == 0:
                    log(f"simulated {done} of {len(missing)} chunks of {CHUNK} shots")
    for *_, path in missing:  # each chunk read once: those of a run before are in parts
        parts[path] = cached(path, _quiet, keys)
    data = {key: np.concatenate([part[key] for part in parts.values()])[:n_shots] for key in keys}
    log(f"simulated {n_shots} shots in {time.time() - start:.0f} s")
    save_cache(cache, data)
    for *_, path in tasks:
        path.unlink()
    chunks.rmdir()
    return data


def augmented_set(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """``n`` fresh shots, 8-bit quantised and augmented (seeded): the validation and held-out
    sets, corrupted as experimental shots are."""
    images, orientations, radii = simulate_shots(n, seed)
    quantised = torch.as_tensor(np.round(images * 255) / 255, dtype=torch.float32)[:, None]
    generator = torch.Generator().manual_seed(seed)
    corrupted = torch.cat([augment(b, generator) for b in quantised.split(256)])
    return corrupted[:, 0], orientations, radii


def evaluate(model: WideAngleNet, n: int = 1000, device: torch.device | str = "cpu") -> dict:
    """Scores on ``n`` held-out augmented shots, with the consensus of the eight flips."""
    images, orientations, radii = augmented_set(n, HELD_OUT_SEED)
    q, r = predict(model.eval(), images.numpy(), device)
    errors = parameter_errors(q, r, orientations, radii)
    return {
        "shots": n,
        "seed": HELD_OUT_SEED,
        "median_misorientation_deg": float(np.median(errors["misorientation"])),
        "median_radius_error_nm": float(np.median(errors["radius"])),
        "mean_relative_error": float(np.mean(errors["relative"])),
    }


def train(args: argparse.Namespace) -> Path:
    """Run the pretraining described by ``args``; returns the weights file."""
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.device = str(device)  # as recorded on the card
    args.precision = training_precision(args.precision) if device.type == "cpu" else "float32"
    model_file, log = prepare_run(args, "wideangle")
    log(f"start: {vars(args)}")
    data = training_data(args.n_shots, args.seed, args.workdir, log, args.threads)
    images = torch.as_tensor(data["images"]).to(device)
    orientations = torch.as_tensor(data["orientations"], dtype=torch.float32)
    radii = torch.as_tensor(data["radii"], dtype=torch.float32).to(device)
    val_images, val_q, val_r = augmented_set(args.n_val, VALIDATION_SEED)
    val_images = val_images.to(device)
    val_q = torch.as_tensor(val_q, dtype=torch.float32).to(device)
    val_r = torch.as_tensor(val_r).float().to(device)
    torch.manual_seed(args.seed)
    model = WideAngleNet(
        width=args.width, equalise=args.equalise, stem=args.stem, orientation=args.orientation
    ).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    checkpoint = args.workdir / CHECKPOINT
    state = resume(checkpoint, model, optimizer, log, data_recipe(args))
    generator = torch.Generator().manual_seed(args.seed + state["epoch"])
    # the augmentation draws on the data's device (the CPU's stream is the bundled recipe's)
    on_device = generator
    if device.type != "cpu":
        on_device = torch.Generator(device).manual_seed(args.seed + state["epoch"])
    transforms = image_transforms()

    def loss_of(index: torch.Tensor) -> torch.Tensor:
        x = augment(images[index.to(device)].float()[:, None] / 255, on_device)
        apply, turn = transforms[int(torch.randint(8, (1,), generator=generator))]
        q = torch.as_tensor(icosahedral.multiply(turn, orientations[index].numpy())).to(device)
        with torch.autocast("cpu", torch.bfloat16, enabled=args.precision == "bfloat16"):
            predicted_q, predicted_r = model(apply(x).contiguous(memory_format=torch.channels_last))
        return loss(predicted_q, predicted_r, q.float(), radii[index.to(device)])

    def validation_loss() -> float:
        losses = []
        for index in torch.arange(len(val_images), device=device).split(500):
            q, r = model(val_images[index][:, None].contiguous(memory_format=torch.channels_last))
            losses.append(float(loss(q, r, val_q[index], val_r[index])) * len(index))
        return sum(losses) / len(val_images)

    train_within_budget(
        model, optimizer, state, minutes=args.minutes, lr=args.lr,
        batches=lambda: torch.randperm(len(images), generator=generator).split(args.batch),
        loss_of=loss_of, validation_loss=validation_loss, checkpoint=checkpoint, log=log,
        clip_norm=args.clip_norm,
        session=session_facts(args),
    )  # fmt: skip

    held_out = evaluate(model, device=device)
    log(f"held-out: {held_out}")
    detector = Detector()
    card = {
        "name": args.name,
        "version": f"{__version__}+{time.strftime('%Y%m%d')}",
        "mode": "wideangle",
        "architecture": "WideAngleNet",
        "arguments": model.arguments(),
        "input": {
            "size": [detector.pixels, detector.pixels],
            "preprocessing": f"log10(I / max I) floored at -{DYNAMIC_RANGE:g}, mapped to [0, 1] "
            "(core.simulate.wideangle.log_image); 8-bit images are taken as that scale / 255"
            + (
                "; inside the network each pixel is replaced by its rank among the image's "
                "pixels with signal (nn.wideangle_net.equalised)"
                if args.equalise
                else ""
            ),
            "geometry": f"detector uniform in k_perp, {detector.max_angle:g} degrees at the "
            f"edges, wavelength {detector.wavelength:g} nm, forward direction between the four "
            "central pixels",
        },
        "output": OUTPUTS[args.orientation]
        + " in the icosahedral fundamental domain, circumradius in nm",
        "training_data": {
            "recipe": "core.simulate.wideangle (MSFT, silver: absorption length "
            f"{ABSORPTION_LENGTH:g} nm, delta {REFRACTIVE_DECREMENT:g}), icosahedra with radii "
            f"uniform in {list(RADII)} nm, orientations uniform; noiseless, 8-bit quantised; "
            "augmented on the fly (core.nn.wideangle.augment) and one of the 8 image flips/"
            "transposes per batch with its quaternion map",
            "n_shots": args.n_shots,
            "validation_shots": args.n_val,
            "seed": args.seed,
        },
        "training": training_record(
            "training/train_wideangle.py",
            ORIENTATION_LOSSES[args.orientation]
            + " + |radius error| / 65 nm (core.nn.wideangle.loss)",
            args,
            state,
        ),
        "held_out": held_out,
    }
    path = save_model(model, model_file, card, bundled=getattr(args, "bundled", False))
    log(f"wrote {path} and its card: {json.dumps(held_out)}")
    return path
