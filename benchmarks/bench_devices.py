"""The same calls on the CPU and on a CUDA GPU, side by side in one process.

    python benchmarks/bench_devices.py           # both devices where a GPU is present
    python benchmarks/bench_devices.py --quick   # smaller sizes (a check that it all runs)

What the napari docks and the CLI run with device "auto": the CDI network and its iterative
recipe, ePIE, the ptychography network and its few-shot retraining, the wide-angle network (in
batches and one shot at a time). Each line gives the work per second on each device and the
GPU's speed-up; the answers of the two devices are compared too (a GPU path that ran but
answered differently would be a defect, not a speed-up).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from napari_cdinn.core import cdi, metrics, ptycho, wideangle
from napari_cdinn.core.data import ShotSet
from napari_cdinn.core.nn.ptycho import FineTuning
from napari_cdinn.core.nn.registry import load_model
from napari_cdinn.core.nn.wideangle import inference_network, predict
from napari_cdinn.core.progress import run_to_end
from napari_cdinn.core.retrieval.ptycho import EpieRecipe
from napari_cdinn.core.simulate.cdi import simulate_cdi
from napari_cdinn.core.simulate.ptycho import HELD_OUT_TEXTURES, simulate_ptycho
from napari_cdinn.core.simulate.wideangle import simulate_shots


def timed(make_steps, device: str, repeats: int = 2) -> tuple[object, float]:
    """The result and the best wall time of ``repeats`` runs (the first also warms the device:
    CUDA's kernels load and its FFT plans are made on first use)."""
    best, result = float("inf"), None
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = run_to_end(make_steps(device))
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return result, best


def report(name: str, unit: str, count: int, seconds: dict[str, float], agreement: str) -> None:
    rates = "  ".join(f"{d} {count / s:10.1f} {unit}/s" for d, s in seconds.items())
    ratio = ""
    if "cuda" in seconds:
        ratio = f"  GPU {seconds['cpu'] / seconds['cuda']:.1f} x"
    print(f"  {name:<34} {rates}{ratio}   {agreement}")


def correlations(results: dict, truth: np.ndarray) -> str:
    """Each device's median registered correlation with the true objects. The devices' answers
    differ in rounding (a GPU's convolutions use TF32), and for a pattern near a tie in the
    canonical form (which twin, where the centre) that can pick the other one, so pixel
    differences between devices say less than their scores."""
    scores = {
        d: np.median(metrics.registered_correlation(r.objects, truth)) for d, r in results.items()
    }
    return "correlation " + ", ".join(f"{d} {v:.3f}" for d, v in scores.items())


def ssims(results: dict, truth: np.ndarray, where: np.ndarray) -> str:
    """Each device's SSIM (amplitude/phase) against the true object on ``where``."""
    scores = {d: metrics.object_ssim(r.objects, truth, where) for d, r in results.items()}
    return "SSIM " + ", ".join(f"{d} {a:.3f}/{p:.3f}" for d, (a, p) in scores.items())


def cdi_section(devices: list[str], quick: bool) -> None:
    n_nn, n_it = (256, 8) if quick else (8192, 64)
    stack = simulate_cdi(n_nn, seed=999_999)
    few = simulate_cdi(n_it, seed=999_998)
    results, seconds = {}, {}
    for d in devices:
        results[d], seconds[d] = timed(lambda dev: cdi.network_steps(stack, device=dev), d)
    report("CDI network", "patterns", n_nn, seconds, correlations(results, stack.truth))
    for d in devices:
        results[d], seconds[d] = timed(lambda dev: cdi.iterative_steps(few, device=dev), d, 1)
    report(
        "CDI iterative (620 ER/HIO x 4)",
        "patterns",
        n_it,
        seconds,
        correlations(results, few.truth),
    )


def ptycho_section(devices: list[str], quick: bool) -> None:
    side = 200 if quick else 520
    scan = simulate_ptycho(
        (side, side), frame=64, step=10.0, photons=1e6, seed=424_242, textures=HELD_OUT_TEXTURES
    )
    n = len(scan.positions)
    grid = ptycho.ObjectGrid.around(scan.positions, scan.stack.frame_shape)
    truth = ptycho.on_grid(scan.truth, grid.origin, grid.shape)
    scanned = ptycho.scanned_region(scan.positions, 64, grid.origin, grid.shape)
    epochs = 10 if quick else 50
    results, seconds = {}, {}
    for d in devices:
        results[d], seconds[d] = timed(
            lambda dev: ptycho.epie_steps(scan, EpieRecipe(epochs=epochs), dev), d, 1
        )
    report(
        f"ePIE, {n} positions x {epochs} epochs",
        "epochs",
        epochs,
        seconds,
        ssims(results, truth, scanned),
    )
    epie = results["cpu"]
    for d in devices:
        results[d], seconds[d] = timed(lambda dev: ptycho.network_steps(scan, device=dev), d)
    report(f"ptycho network, {n} positions", "patterns", n, seconds, ssims(results, truth, scanned))
    region = ptycho.region_mask(
        grid, rectangle=(-1e9, 1e9, -1e9, grid.origin[1] + grid.shape[1] * 0.45)
    )
    budget = 5.0 if quick else 20.0
    epochs_done, validation = {}, {}
    for d in devices:
        model, _ = load_model(ptycho.default_model())
        run = FineTuning(model)
        run_to_end(ptycho.retrain_steps(scan, epie, region, run, budget, d, simulated=1000))
        epochs_done[d], validation[d] = len(run.history), run.best_validation
    print(
        f"  retraining for {budget:.0f} s (1000 simulated pairs): epochs done "
        + ", ".join(f"{d} {epochs_done[d]} (validation loss {validation[d]:.3f})" for d in devices)
    )


def wideangle_section(devices: list[str], quick: bool) -> None:
    n = 64 if quick else 1024
    images, orientations, _ = simulate_shots(n, seed=424_242)
    shots = ShotSet(np.round(images * 255) / 255, scaling="simulated, 8-bit")
    results, seconds = {}, {}
    for d in devices:
        results[d], seconds[d] = timed(lambda dev: wideangle.network_steps(shots, device=dev), d)
    from napari_cdinn.core import icosahedral

    medians = ", ".join(
        f"{d} {np.median(icosahedral.misorientation(results[d].quaternions, orientations)):.2f}"
        for d in devices
    )
    report(
        "wide-angle network, 8 flips", "shots", n, seconds, f"median misorientation {medians} deg"
    )
    for d in devices:  # the loaded network, one shot at a time, as a user clicking through
        net = inference_network(load_model(wideangle.default_model(), d)[0])
        predict(net, shots.images[:1], d)
        start = time.perf_counter()
        for k in range(20):
            predict(net, shots.images[k : k + 1], d)
        seconds[d] = (time.perf_counter() - start) / 20
    report("wide-angle network, batch 1, 8 flips", "shots", 1, seconds, "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    gpu = torch.cuda.get_device_name() if "cuda" in devices else "no CUDA device"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, GPU: {gpu}")
    cdi_section(devices, args.quick)
    ptycho_section(devices, args.quick)
    wideangle_section(devices, args.quick)


if __name__ == "__main__":
    main()
