"""Pretraining of the ptychography network on simulated scans (``training/train_ptycho.py``).

Simulates ``--n-scans`` scans of random objects once (cached in ``--workdir``): textures from
``simulate.ptycho`` except the held-out ones, probes with random defocus and aberrations, steps
of 6 to 14 pixels, doses from 1e4 to 1e7 photons per pattern or none.  Targets are the true object
patches (normalised as few-shot targets are, ``nn.ptycho.normalised``).  Trains within
``--minutes``, checkpointing every epoch so an interrupted run resumes, then writes weights and
model card (with the held-out scores) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from ... import __version__
from .. import metrics, ptycho
from ..device import resolve_device
from ..progress import run_to_end
from ..simulate.ptycho import HELD_OUT_TEXTURES, TEXTURES, simulate_ptycho
from .ptycho import normalised, patch_loss, patch_offset, probe_weight, sample_patches
from .ptycho_net import PtychoNet, intensity_scale, preprocess
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
    training_record,
)

HELD_OUT_SEED = 999_999  # the held-out scan; training scans use seed * 100_000 + index
TRAINING_TEXTURES = tuple(t for t in TEXTURES if t not in HELD_OUT_TEXTURES)
SIZE = 64


def simulate_scan(seed: int, patch: int = SIZE) -> dict[str, np.ndarray]:
    """One training scan as network inputs (float16), complex targets (the central ``patch``
    pixels of each window) and its probe weight."""
    rng = np.random.default_rng(seed)
    photons = None if rng.random() < 0.2 else float(10 ** rng.uniform(4, 7))
    scan = simulate_ptycho(
        (160, 160), frame=SIZE, step=float(rng.uniform(6, 14)), photons=photons, seed=seed,
        textures=TRAINING_TEXTURES, defocus=float(rng.uniform(2, 10)),
        zoom=float(rng.uniform(1.5, 5)),
    )  # fmt: skip
    intensities = scan.stack.intensities
    inputs = preprocess(torch.as_tensor(intensities), intensity_scale(intensities))[:, 0]
    offset = patch_offset(SIZE, patch)
    targets = sample_patches(normalised(scan.truth), (0.0, 0.0), scan.positions + offset, patch)
    return {
        "inputs": inputs.numpy().astype(np.float16),
        "targets": targets,
        "weight": probe_weight(scan.probe, SIZE, patch)[None],
        "n": np.array([len(targets)]),
    }


def training_data(
    n_scans: int, seed: int, workdir: Path, log: Log, patch: int = SIZE, processes: int = 2
) -> dict[str, np.ndarray]:
    """Simulate (in ``processes`` processes) or load the cached training scans."""
    cache = workdir / f"scans_n{n_scans}_seed{seed}_patch{patch}.npz"
    data = cached(cache, log, ("inputs", "targets", "weight", "scan_of"))
    if data is not None:
        return data
    start = time.time()
    with Pool(processes) as pool:
        seeds = [seed * 100_000 + i for i in range(n_scans)]
        parts = pool.map(partial(simulate_scan, patch=patch), seeds, chunksize=8)
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    data["scan_of"] = np.repeat(np.arange(n_scans), data.pop("n"))
    log(
        f"simulated {n_scans} scans, {len(data['targets'])} patterns in {time.time() - start:.0f} s"
    )
    save_cache(cache, data)
    return data


def evaluate(model: PtychoNet, device: str = "cpu") -> dict[str, float]:
    """SSIM of the stitched network result against the truth of a held-out scan (held-out
    textures and seed, 1e6 photons per pattern), in its well-scanned region."""
    scan = simulate_ptycho(
        (256, 256), frame=SIZE, step=10.0, photons=1e6, seed=HELD_OUT_SEED,
        textures=HELD_OUT_TEXTURES,
    )  # fmt: skip
    loaded = (model.eval(), {"mode": "ptycho"})
    result = run_to_end(ptycho.network_steps(scan, device=device, loaded=loaded))
    truth = ptycho.on_grid(scan.truth, result.origin, result.objects.shape)
    region = ptycho.scanned_region(scan.positions, SIZE, result.origin, result.objects.shape)
    amplitude, phase = metrics.object_ssim(result.objects, truth, region)
    return {"scan_seed": HELD_OUT_SEED, "textures": list(HELD_OUT_TEXTURES),
            "positions": len(scan.positions), "ssim_amplitude": amplitude, "ssim_phase": phase}  # fmt: skip


def train(args: argparse.Namespace) -> Path:
    """Run the pretraining described by ``args``; returns the weights file."""
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.device = str(device)  # as recorded on the card
    model_file, log = prepare_run(args, "ptycho")
    log(f"start: {vars(args)}")
    data = training_data(args.n_scans, args.seed, args.workdir, log, args.patch, args.threads)
    inputs = torch.as_tensor(data["inputs"]).to(device)
    targets = torch.as_tensor(data["targets"]).to(device)
    weights = torch.as_tensor(data["weight"]).to(device)
    scan_of = torch.as_tensor(data["scan_of"]).to(device)
    is_validation = scan_of >= args.n_scans - args.n_val_scans  # whole scans held back
    train_index = torch.nonzero(~is_validation)[:, 0]
    val_index = torch.nonzero(is_validation)[:, 0]
    torch.manual_seed(args.seed)
    model = PtychoNet(size=SIZE, width=args.width, mixing=args.mixing, patch=args.patch).to(
        device, memory_format=torch.channels_last
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    checkpoint = args.workdir / CHECKPOINT
    state = resume(checkpoint, model, optimizer, log, data_recipe(args))

    def loss_of(index: torch.Tensor) -> torch.Tensor:
        x = inputs[index].float()[:, None].contiguous(memory_format=torch.channels_last)
        amplitude, phase = model(x)
        return patch_loss(amplitude, phase, targets[index], weights[scan_of[index]])

    generator = torch.Generator().manual_seed(args.seed + state["epoch"])
    train_within_budget(
        model, optimizer, state, minutes=args.minutes, lr=args.lr,
        batches=lambda: train_index[torch.randperm(len(train_index), generator=generator).to(device)].split(
            args.batch
        ),
        loss_of=loss_of,
        validation_loss=lambda: float(np.mean([float(loss_of(b)) for b in val_index.split(512)])),
        checkpoint=checkpoint, log=log,
        clip_norm=args.clip_norm,
        session=session_facts(args),
    )  # fmt: skip

    held_out = evaluate(model, args.device)
    log(f"held-out: {held_out}")
    card = {
        "name": args.name,
        "version": f"{__version__}+{time.strftime('%Y%m%d')}",
        "mode": "ptycho",
        "architecture": "PtychoNet",
        "arguments": model.arguments(),
        "input": {
            "size": [SIZE, SIZE],
            "preprocessing": "frames of 64k pixels binned k x k; log(1 + I / s) / 5 with s the "
            "scan's mean pixel intensity (core.nn.ptycho_net.preprocess)",
            "geometry": f"the output patch is the object under the central {args.patch} x "
            f"{args.patch} pixels of the 64 x 64 window a binned frame sees, at the "
            "reconstruction's object-pixel size",
        },
        "output": "amplitude (normalised, ~1) and phase (-pi, pi) of that patch",
        "training_data": {
            "recipe": "core.simulate.ptycho.simulate_ptycho, 160 x 160 objects of training "
            "textures magnified 1.5..5 x (features as large as in 300-600 px objects), frame 64, "
            "step 6..14 px, defocus 2..10 rad, 20 % noiseless, else Poisson at 1e4..1e7 "
            "photons per pattern",
            "n_scans": args.n_scans,
            "n_patterns": len(targets),
            "validation_scans": args.n_val_scans,
            "seed": args.seed,
        },
        "training": training_record(
            "training/train_ptycho.py",
            "probe-weighted MAE of amplitude and of the wrapped phase difference after "
            "removing each patch's weighted mean phase difference (nn.ptycho.patch_loss)",
            args,
            state,
        ),
        "held_out": held_out,
    }
    path = save_model(model, model_file, card, bundled=getattr(args, "bundled", False))
    log(f"wrote {path} and its card: {json.dumps(held_out)}")
    return path
