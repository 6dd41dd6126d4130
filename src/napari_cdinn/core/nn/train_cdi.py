"""Training of the CDI network on simulated patterns (``napari-cdinn train cdi``).

Simulates ``--n-train`` patterns once (cached in ``--workdir``), trains within ``--minutes``,
checkpointing every epoch so an interrupted run resumes where it stopped, then writes the weights
(safetensors) and the model card (JSON, with held-out metrics) to ``--out``, appending to a log.
``training/train_cdi.py`` holds the recipe of the bundled weights.
"""

from __future__ import annotations

import argparse
import json
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

from ... import __version__
from .. import metrics
from ..device import resolve_device
from ..simulate.cdi import simulate_cdi
from .cdi import inference_model, predict, training_targets, twin_invariant_loss
from .cdi_net import CDINet, preprocess
from .registry import save_model
from .training import (
    CHECKPOINT,
    cached,
    data_recipe,
    prepare_run,
    resume,
    save_cache,
    session_facts,
    train_within_budget,
    training_record,
)

HELD_OUT_SEED = 999_999  # never used for training data
CHUNK = 5000


def simulate_chunk(args: tuple[int, int, int]) -> dict[str, np.ndarray]:
    """One chunk of training data: half noiseless, half Poisson at 1e5..1e9 photons."""
    n, size, seed = args
    stack = simulate_cdi(n, size=size, seed=seed)
    rng = np.random.default_rng(seed + 10**7)
    intensities = stack.intensities
    noisy = rng.random(n) < 0.5
    photons = 10 ** rng.uniform(5, 9, n)
    scale = photons / intensities.sum(axis=(1, 2))
    noisy_counts = rng.poisson(intensities[noisy] * scale[noisy, None, None]).astype(np.float32)
    intensities[noisy] = noisy_counts
    target, twin_target = training_targets(stack.truth)
    return {"intensities": intensities, "target": target, "twin": twin_target}


def training_data(
    n: int, size: int, seed: int, workdir: Path, log, processes: int = 2
) -> dict[str, np.ndarray]:
    """Simulate (in ``processes`` processes) or load the cached training set."""
    cache = workdir / f"data_n{n}_s{size}_seed{seed}.npz"
    data = cached(cache, log, ("intensities", "target", "twin"))
    if data is not None:
        return data
    start = time.time()
    jobs = [(min(CHUNK, n - lo), size, seed * 1000 + i) for i, lo in enumerate(range(0, n, CHUNK))]
    with Pool(processes) as pool:
        parts = pool.map(simulate_chunk, jobs)
    data = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    log(f"simulated {n} patterns in {time.time() - start:.0f} s")
    save_cache(cache, data)
    return data


def evaluate(model: CDINet, n: int, size: int) -> dict[str, float]:
    """Held-out medians on noiseless patterns the network never saw."""
    held_out = simulate_cdi(n, size=size, seed=HELD_OUT_SEED)
    device = next(model.parameters()).device
    objects = predict(inference_model(model), held_out.intensities, device)
    corr = metrics.registered_correlation(objects, held_out.truth)
    rms = metrics.phase_rms(objects, held_out.truth)
    chi2 = metrics.chi2(objects, held_out.intensities)
    return {
        "n_patterns": n,
        "seed": HELD_OUT_SEED,
        "median_registered_correlation": float(np.median(corr)),
        "median_phase_rms_rad": float(np.median(rms)),
        "median_chi2": float(np.median(chi2)),
    }


def train(args: argparse.Namespace) -> Path:
    """Run the training described by ``args`` (see ``train_options.add_cdi_arguments``);
    returns the weights file."""
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    args.device = str(device)  # as recorded on the card
    model_file, log = prepare_run(args, "cdi")

    log(f"start: {vars(args)}")
    n = args.n_train + args.n_val
    data = training_data(n, args.size, args.seed, args.workdir, log, args.threads)
    x_all = torch.as_tensor(data["intensities"]).to(device)
    target_all = torch.as_tensor(data["target"]).to(device)
    twin_all = torch.as_tensor(data["twin"]).to(device)
    n_train = args.n_train
    torch.manual_seed(args.seed)
    model = CDINet(size=args.size, width=args.width).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    checkpoint = args.workdir / CHECKPOINT
    state = resume(checkpoint, model, optimizer, log, data_recipe(args))
    generator = torch.Generator().manual_seed(args.seed + state["epoch"])

    def batches():
        order = torch.randperm(n_train, generator=generator).to(device)
        return (
            order[lo : lo + args.batch] for lo in range(0, n_train - args.batch + 1, args.batch)
        )

    def loss_of(index: torch.Tensor) -> torch.Tensor:
        inputs = preprocess(x_all[index]).contiguous(memory_format=torch.channels_last)
        amplitude, phase = model(inputs)
        return twin_invariant_loss(amplitude, phase, target_all[index], twin_all[index])

    def validation_loss() -> float:
        val = slice(n_train, None)
        amplitude, phase = model(preprocess(x_all[val]))
        return float(twin_invariant_loss(amplitude, phase, target_all[val], twin_all[val]))

    train_within_budget(
        model, optimizer, state, minutes=args.minutes, lr=args.lr, batches=batches,
        loss_of=loss_of, validation_loss=validation_loss, checkpoint=checkpoint, log=log,
        clip_norm=args.clip_norm,
        session=session_facts(args),
    )  # fmt: skip

    held_out = evaluate(model, 1000, args.size)
    log(f"held-out: {held_out}")
    card = {
        "name": args.name,
        "version": f"{__version__}+{time.strftime('%Y%m%d')}",
        "mode": "cdi",
        "architecture": "CDINet",
        "arguments": model.arguments(),
        "input": {
            "size": [args.size, args.size],
            "preprocessing": "log10(I / max I) floored at 1e-6, scaled /3 + 1 (core.nn.cdi_net.preprocess)",
            "sampling": "centred diffraction intensities, object within the central half (>= 2x oversampled)",
        },
        "output": "amplitude [0, 1] and phase (-pi, pi) on the central half of the object grid, embedded on the full grid",
        "training_data": {
            "recipe": "core.simulate.cdi.simulate_cdi: convex hulls, 1-px blur, gratings + Gaussians phase; "
            "half Poisson noise at 1e5..1e9 photons",
            "n_train": n_train,
            "n_validation": args.n_val,
            "seed": args.seed,
            "chunk_seeds": f"seed * 1000 + chunk index, chunks of {CHUNK}",
        },
        "training": training_record(
            "training/train_cdi.py",
            "twin-invariant L1 amplitude + amplitude-weighted (1 - cos) phase",
            args,
            state,
        ),
        "held_out": held_out,
    }
    weights = save_model(model, model_file, card, bundled=getattr(args, "bundled", False))
    log(f"wrote {weights} and its card: {json.dumps(held_out)}")
    return weights
