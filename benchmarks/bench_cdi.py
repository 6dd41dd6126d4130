"""Bragg CDI benchmark: accuracy and speed of the network, NN-seeded refinement and the
620-iteration ER/HIO recipe, measured side by side in one process (ratios, not absolute claims).

    python benchmarks/bench_cdi.py                      # the issue's figures (about 10 to 15 min on 2 cores)
    python benchmarks/bench_cdi.py --n 200 --quick      # a smaller run

Sections: held-out accuracy (noiseless, 1e7 and 1e5 photons), network throughput, iterative cost
against its FFT floor, the real gold crystal (../shared/data/bcdi) with a picture for the README,
and the peer cohere-core (if installed) on the same patterns.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from napari_cdinn.core import cdi, metrics
from napari_cdinn.core.data import DiffractionStack, Metadata
from napari_cdinn.core.nn.cdi import inference_model, predict
from napari_cdinn.core.nn.registry import load_model
from napari_cdinn.core.progress import run_to_end
from napari_cdinn.core.retrieval.cdi import RetrievalRecipe
from napari_cdinn.core.simulate.cdi import simulate_cdi

HELD_OUT_SEED = 999_999  # the seed of the model card's held-out set; never used for training
REPO = Path(__file__).resolve().parents[1]
GOLD = REPO.parent / "shared" / "data" / "bcdi" / "gold_ft_crop_64.npy"


def medians(objects: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    return (
        float(np.median(metrics.registered_correlation(objects, truth))),
        float(np.median(metrics.phase_rms(objects, truth))),
    )


def timed(steps) -> tuple[object, float]:
    start = time.perf_counter()
    result = run_to_end(steps)
    return result, time.perf_counter() - start


def accuracy(stack: DiffractionStack, n_iterative: int, label: str) -> dict[str, dict]:
    """Network, refine (50, 100) and the 620-iteration recipe on the same patterns."""
    rows: dict[str, dict] = {}
    network, t_nn = timed(cdi.network_steps(stack, device="cpu"))
    rows["network"] = {
        "n": stack.n_frames,
        "time": t_nn,
        "medians": medians(network.objects, stack.truth),
    }
    for iterations in (50, 100):
        refined, t_ref = timed(cdi.refine_steps(stack, network.objects, iterations, device="cpu"))
        rows[f"refine {iterations}"] = {
            "n": stack.n_frames,
            "time": t_nn + t_ref,
            "medians": medians(refined.objects, stack.truth),
        }
    subset = stack.subset(slice(0, n_iterative))
    iterative, t_it = timed(cdi.iterative_steps(subset, device="cpu"))
    rows["iterative 620"] = {
        "n": n_iterative,
        "time": t_it,
        "medians": medians(iterative.objects, subset.truth),
    }
    print(f"\n{label}")
    print(
        f"  {'method':<15}{'patterns':>9}{'time (s)':>10}{'ms/pattern':>12}{'corr':>8}{'phase rms':>11}"
    )
    for name, row in rows.items():
        corr, rms = row["medians"]
        per = 1000 * row["time"] / row["n"]
        print(f"  {name:<15}{row['n']:>9}{row['time']:>10.2f}{per:>12.3f}{corr:>8.3f}{rms:>11.3f}")
    return rows


def network_throughput(batch: int = 256, repeats: int = 5) -> float:
    """Patterns per second of the bundled network (fused, channels-last), best of ``repeats``."""
    model, _ = load_model(cdi.default_model())
    fast = inference_model(model)
    patterns = simulate_cdi(batch, seed=1).intensities
    predict(fast, patterns, batch_size=batch)  # warm up
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        predict(fast, patterns, batch_size=batch)
        best = min(best, time.perf_counter() - start)
    return batch / best


def iteration_cost(n: int = 64, iterations: int = 200, repeats: int = 3) -> tuple[float, float]:
    """Seconds per iteration per pattern of our ER/HIO (shrink-wrap included), and of the bare FFT
    pair each iteration needs on the same batch shape; interleaved repeats, the best of each (the
    shared 2-core machine is noisy)."""
    stack = simulate_cdi(n, seed=2)
    recipe = RetrievalRecipe(schedule=[("HIO", iterations)], n_starts=4, average_last=0)
    run_to_end(cdi.iterative_steps(stack.subset(slice(0, 2)), recipe, device="cpu"))  # warm-up
    field = torch.randn(n * recipe.n_starts, *stack.frame_shape, dtype=torch.complex64)
    ours, floor = [], []
    for _ in range(repeats):
        ours.append(timed(cdi.iterative_steps(stack, recipe, device="cpu"))[1])
        start = time.perf_counter()
        for _ in range(iterations):
            field = torch.fft.ifft2(torch.fft.fft2(field))
        floor.append(time.perf_counter() - start)
    pattern_iterations = n * recipe.n_starts * iterations
    return min(ours) / pattern_iterations, min(floor) / pattern_iterations


def gold(figure: Path | None) -> None:
    """The central slice of the measured gold crystal (the file holds sqrt(I))."""
    if not GOLD.exists():
        print(f"\nreal data: {GOLD} not found, skipped")
        return
    amplitudes = np.load(GOLD).astype(np.float32)
    pattern = amplitudes[amplitudes.shape[0] // 2] ** 2
    stack = DiffractionStack(pattern[None], meta=Metadata(source=str(GOLD)))
    network, _ = timed(cdi.network_steps(stack, device="cpu"))
    refined, _ = timed(cdi.refine_steps(stack, network.objects, 100, device="cpu"))
    iterative, _ = timed(cdi.iterative_steps(stack, device="cpu", reference=network.objects))
    results = {"network": network, "refine 100": refined, "iterative 620": iterative}
    print(
        "\nreal data: gold crystal, central slice of gold_ft_crop_64.npy (chi^2, lower is better)"
    )
    for name, result in results.items():
        print(
            f"  {name:<15}chi2 {float(result.chi2[0]):.4f}   wall {result.provenance.wall_time_s:.3f} s"
        )
    if figure is not None:
        save_gold_figure(pattern, results, figure)
        print(f"  picture: {figure}")


def save_gold_figure(pattern: np.ndarray, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(12, 6), constrained_layout=True)
    axes[0, 0].imshow(np.log10(1 + pattern / pattern.max() * 1e4), cmap="magma")
    axes[0, 0].set_title("measured log intensity")
    axes[1, 0].axis("off")
    for column, (name, result) in enumerate(results.items(), start=1):
        obj = result.objects[0][16:48, 16:48]
        axes[0, column].imshow(np.abs(obj), cmap="gray")
        axes[0, column].set_title(f"{name}: shape\nchi² {float(result.chi2[0]):.4f}")
        shown = axes[1, column].imshow(np.angle(obj), cmap="twilight", vmin=-np.pi, vmax=np.pi)
        axes[1, column].set_title(f"{name}: phase")
    fig.colorbar(shown, ax=axes[1, 1:], shrink=0.8, label="phase (rad)")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def peer(stack: DiffractionStack, ours: float) -> None:
    """cohere-core's ER/HIO on the same patterns, beside our recipe."""
    try:
        from peer_cohere import run_cohere

        objects, elapsed = run_cohere(stack.intensities)  # imports cohere_core itself
    except ImportError as err:
        print(f"\npeer cohere-core: not available ({err})")
        return
    corr, rms = medians(objects, stack.truth)
    print(
        f"\npeer cohere-core on the same {stack.n_frames} patterns (620 iterations, one start each):"
    )
    print(f"  cohere-core   {elapsed:8.2f} s  corr {corr:.3f}  phase rms {rms:.3f}")
    print(f"  ours / cohere time ratio: {ours / elapsed:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000, help="held-out patterns")
    parser.add_argument("--n-iterative", type=int, default=1000, help="patterns for the 620 recipe")
    parser.add_argument("--n-noisy", type=int, default=200, help="patterns per noise level")
    parser.add_argument("--n-peer", type=int, default=16)
    parser.add_argument(
        "--figure",
        type=Path,
        help="where to draw the gold crystal (default: docs/cdi_gold.png, the README's, on a "
        "full run; none with --quick, so that a quick run never replaces it)",
    )
    parser.add_argument("--quick", action="store_true", help="skip the noise and peer sections")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")

    held_out = simulate_cdi(args.n, seed=HELD_OUT_SEED)
    rows = accuracy(
        held_out,
        min(args.n, args.n_iterative),
        f"held-out noiseless: {args.n} patterns 64x64, seed {HELD_OUT_SEED}",
    )
    throughput = network_throughput()
    per_iteration, fft_pair = iteration_cost()
    iterative = rows["iterative 620"]
    iterative_rate = iterative["n"] / iterative["time"]
    print("\nspeed")
    print(f"  network throughput, batch 256: {throughput:.0f} patterns/s (target >= 1000)")
    print(f"  iterative recipe: {iterative_rate:.2f} patterns/s (4 starts x 620 iterations)")
    print(
        f"  iteration cost: {1e6 * per_iteration:.1f} us per iteration per pattern, FFT pair "
        f"{1e6 * fft_pair:.1f} us: ratio {per_iteration / fft_pair:.2f} (target <= 3)"
    )
    print(f"  network / iterative throughput: {throughput / iterative_rate:.0f}x (target >= 30x)")
    for name in ("refine 50", "refine 100"):
        row = rows[name]
        time_ratio = (row["time"] / row["n"]) / (iterative["time"] / iterative["n"])
        better = all(
            (a >= b) if i == 0 else (a <= b)
            for i, (a, b) in enumerate(zip(row["medians"], iterative["medians"], strict=True))
        )
        print(
            f"  {name} / iterative 620 time: {time_ratio:.3f} (target <= 0.2), "
            f"at equal or better medians: {'yes' if better else 'no'}"
        )
    gold(args.figure or (None if args.quick else REPO / "docs" / "cdi_gold.png"))
    if args.quick:
        return
    for photons in (1e7, 1e5):
        noisy = simulate_cdi(args.n_noisy, seed=HELD_OUT_SEED, photons=photons)
        accuracy(
            noisy,
            args.n_noisy,
            f"Poisson noise, {photons:.0e} photons per pattern: {args.n_noisy} patterns",
        )
    subset = held_out.subset(slice(0, args.n_peer))
    one_start = RetrievalRecipe(n_starts=1)
    ours, t_ours = timed(cdi.iterative_steps(subset, one_start, device="cpu"))
    corr, rms = medians(ours.objects, subset.truth)
    print(
        f"\nours on the same {args.n_peer} patterns, one start each: {t_ours:.2f} s  corr {corr:.3f}  phase rms {rms:.3f}"
    )
    peer(subset, t_ours)


if __name__ == "__main__":
    main()
