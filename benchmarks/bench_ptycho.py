"""Ptychography benchmark: ePIE, the bundled network and few-shot retraining, side by side.

    python benchmarks/bench_ptycho.py            # the issue's figures (about 9 min on 2 cores)
    python benchmarks/bench_ptycho.py --quick    # a smaller simulated scan, fewer epochs
    python benchmarks/bench_ptycho.py --only speed   # section (4) alone (about 1 min)

Sections: (1) a simulated scan of a held-out object (>= 2000 positions, 50 % overlap, 1e6
photons per pattern): ePIE on all of it, retraining on a region of 800 positions with ePIE's
reconstruction as the teacher, then the whole scan by the network; SSIM against the truth and
against ePIE outside the region; ePIE for a few epochs from a flat start and from the network's image
(refine); (2) the same scan with 1 position in 4; (3) the real tike scan
(../shared/data/ptycho): retrain on one half, score the other half against ePIE, with a picture
for the README; (4) speed: network throughput, ePIE epoch against its FFT floor, network against
ePIE wall time for the whole scan; (5), only with ``--only single``: how much of its patch one
pattern with the known probe fixes (the ceiling of any per-pattern inversion).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from napari_cdinn.core import io, metrics, ptycho
from napari_cdinn.core.data import ObjectResult, PtychoScan
from napari_cdinn.core.nn.cdi import inference_model
from napari_cdinn.core.nn.ptycho import FineTuning, predict_patches, sample_patches, stitch
from napari_cdinn.core.nn.registry import load_model
from napari_cdinn.core.progress import run_to_end
from napari_cdinn.core.retrieval.ptycho import EpieRecipe
from napari_cdinn.core.simulate.ptycho import HELD_OUT_TEXTURES, shifted, simulate_ptycho

REPO = Path(__file__).resolve().parents[1]
TIKE = REPO.parent / "shared" / "data" / "ptycho" / "siemens-star-small.npz.bz2"
HELD_OUT_SEED = 424_242  # never used for training scans


def cpu_model() -> str:
    """The processor's name: ePIE's ratio to its FFT floor differs between CPUs (the FFT library
    is tuned for some more than others)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def timed(steps) -> tuple[object, float]:
    start = time.perf_counter()
    result = run_to_end(steps)
    return result, time.perf_counter() - start


def epoch_seconds(scan: PtychoScan, recipe: EpieRecipe) -> float:
    """Mean wall time of an ePIE epoch after the first (the set-up before it excluded), from the
    end-of-epoch callback."""
    stamps: list[float] = []
    steps = ptycho.epie_steps(scan, recipe, "cpu", lambda *_: stamps.append(time.perf_counter()))
    run_to_end(steps)
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def step_costs(scan: PtychoScan, recipe: EpieRecipe) -> dict[str, float]:
    """Seconds per epoch spent in each of ePIE's element-wise batch steps (the module's own
    functions wrapped with a timer for one run)."""
    from napari_cdinn.core.retrieval import ptycho as epie_module

    spent: dict[str, float] = {}
    names = ("exit_waves", "set_modulus_", "update_")
    originals = {name: getattr(epie_module, name) for name in names}

    def timer(name, function):
        def timed_step(*args, **kwargs):
            start = time.perf_counter()
            out = function(*args, **kwargs)
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - start
            return out

        return timed_step

    try:
        for name, function in originals.items():
            setattr(epie_module, name, timer(name, function))
        run_to_end(ptycho.epie_steps(scan, recipe, device="cpu"))
    finally:
        for name, function in originals.items():
            setattr(epie_module, name, function)
    return {name: seconds / recipe.epochs for name, seconds in spent.items()}


def region_holding(scan: PtychoScan, grid: ptycho.ObjectGrid, n: int, patch: int) -> np.ndarray:
    """A rectangle over the left of the scan whose inside holds the whole (network) patches of
    about ``n`` positions (the user's drawn region)."""
    data = ptycho.network_input(scan, 64, patch)
    right_edges = np.sort(data.corners[:, 1] + patch + 1)
    x1 = right_edges[min(n, len(right_edges)) - 1]
    rectangle = (grid.origin[0], grid.origin[0] + grid.shape[0], grid.origin[1], x1 + 0.5)
    return ptycho.region_mask(grid, rectangle=rectangle)


def synchronisation_ceiling(scan: PtychoScan, model: Path, truth: np.ndarray, where) -> str:
    """Stitched SSIM of the model's patches when each patch's constant phase (which no single
    pattern fixes) is taken from the truth instead of from the overlaps: what perfect phase
    synchronisation would give, so what is left is the patches' own error."""
    net, _ = load_model(model)
    data = ptycho.network_input(scan, net.size, net.patch)
    patches = run_to_end(ptycho.network_patches(net, data))  # as network_steps has them
    true_patches = sample_patches(scan.truth, (0.0, 0.0), data.corners, net.patch)
    turns = np.sum(data.weight * true_patches * patches.conj(), axis=(1, 2))
    patches = patches * (turns / np.maximum(np.abs(turns), 1e-30))[:, None, None]
    grid = data.grid
    image = stitch(patches, data.corners, data.stitch_weight, grid.origin, grid.shape, False)
    return scores(image, truth, where)


def scores(result: ObjectResult | np.ndarray, reference: np.ndarray, where: np.ndarray) -> str:
    image = result.objects if isinstance(result, ObjectResult) else result
    amplitude, phase = metrics.object_ssim(image, reference, where)
    return f"amplitude {amplitude:.3f}  phase {phase:.3f}"


def flat(reference: np.ndarray) -> np.ndarray:
    """A featureless image on the reference's grid: what SSIM gives for knowing nothing."""
    return np.ones_like(reference)


def statistics(run: FineTuning) -> str:
    """Whether the retraining adapted the batch statistics (a probe the network did not know)."""
    return "adapted" if run.source.get("adapted_batch_statistics") else "pretrained"


def few_shot(
    scan: PtychoScan, epie: ObjectResult, region: np.ndarray, seconds: float, base: Path
) -> tuple[FineTuning, Path, float]:
    """Retrain the ``base`` model on ``region`` of ``epie``; returns run, saved model, wall
    time."""
    model, card = load_model(base)
    run = FineTuning(model)
    _, elapsed = timed(ptycho.retrain_steps(scan, epie, region, run, seconds, device="cpu"))
    path = ptycho.save_fine_tuned(run, REPO / "bench_tmp" / "ptycho_fine_tuned", card, "bench")
    return run, path, elapsed


def held_out_scan(args: argparse.Namespace) -> PtychoScan:
    """The simulated scan of a held-out object (a smaller one with ``--quick``)."""
    side = 300 if args.quick else 520
    return simulate_ptycho(
        (side, side), frame=64, step=10.0, photons=1e6, seed=HELD_OUT_SEED,
        textures=HELD_OUT_TEXTURES,
    )  # fmt: skip


def simulated(args: argparse.Namespace) -> tuple[PtychoScan, ObjectResult, float]:
    scan = held_out_scan(args)
    side = scan.truth.shape[0]
    n = len(scan.positions)
    print(f"\n(1) simulated held-out scan: {n} positions, step 10 px (probe ~20 px: 50 % overlap), "
          f"{side} x {side} object, 1e6 photons per pattern")  # fmt: skip
    epie, t_epie = timed(ptycho.epie_steps(scan, EpieRecipe(epochs=args.epochs), device="cpu"))
    grid = ptycho.ObjectGrid.around(scan.positions, scan.stack.frame_shape)
    truth = ptycho.on_grid(scan.truth, grid.origin, grid.shape)
    scanned = ptycho.scanned_region(scan.positions, 64, grid.origin, grid.shape)
    held = min(800, 2 * n // 5)  # --quick: a smaller scan keeps an outside to score
    region = region_holding(scan, grid, held, load_model(args.model)[0].patch)
    outside = scanned & ~region
    pretrained, _ = timed(ptycho.network_steps(scan, args.model, device="cpu"))
    teacher = epie
    if args.teacher == "truth":  # is the teacher what limits the retrained network?
        teacher = ObjectResult(truth, epie.provenance, probe=scan.probe, origin=grid.origin)
        print("  (retraining on the TRUE object and probe as the teacher, --teacher truth)")
    run, model_path, t_train = few_shot(scan, teacher, region, args.seconds, args.model)
    network, t_nn = timed(ptycho.network_steps(scan, model_path, device="cpu"))
    network = ptycho.matched_to(network, epie)
    pretrained = ptycho.matched_to(pretrained, epie)
    epie_amp, epie_phase = metrics.object_ssim(epie.objects, truth, outside)
    nn_amp, nn_phase = metrics.object_ssim(network.objects, truth, outside)
    print(f"  ePIE {args.epochs} epochs: {t_epie:.1f} s; retraining on {run.source['positions']} "
          f"positions: {t_train:.1f} s ({len(run.history)} epochs, {statistics(run)} batch "
          f"statistics; target <= 60 s); network on "
          f"all {n} positions: {t_nn:.2f} s")  # fmt: skip
    print("  SSIM outside the training region, against the truth:")
    role = "(teacher)" if args.teacher == "epie" else "         "
    print(f"    ePIE {role}        amplitude {epie_amp:.3f}  phase {epie_phase:.3f}")
    print(f"    network, retrained    amplitude {nn_amp:.3f}  phase {nn_phase:.3f}   "
          f"(targets: phase >= 0.85, amplitude >= 0.95 x ePIE = {0.95 * epie_amp:.3f})")  # fmt: skip
    print(f"    network, pretrained   {scores(pretrained, truth, outside)}")
    inside = scanned & region  # the positions it was retrained on: is it fitting them at all?
    print(f"    inside the region (its training positions): ePIE {scores(epie, truth, inside)}; "
          f"retrained {scores(network, truth, inside)}; pretrained "
          f"{scores(pretrained, truth, inside)}")  # fmt: skip
    ceiling = synchronisation_ceiling(scan, args.model, truth, outside)
    print(f"    pretrained, each patch's constant phase from the truth  {ceiling}")
    for sigma in (2, 3):  # for scale: how much a plain blur of the truth costs
        blurred = gaussian_filter(np.abs(truth), sigma) * np.exp(
            1j * gaussian_filter(np.angle(truth), sigma)
        )
        amplitude, phase = metrics.object_ssim(blurred, truth, outside)
        print(f"    truth blurred {sigma} px  amplitude {amplitude:.3f}  phase {phase:.3f}")
    print(f"    a flat image          {scores(flat(truth), truth, outside)}")
    print(f"  network against ePIE outside the region: {scores(network, epie.objects, outside)}")
    refine(scan, truth, outside, args)
    sparse(scan, model_path, region, args)
    return scan, epie, t_epie


def flat_and_seeded(
    scan: PtychoScan, model: Path, epochs: int, reference: np.ndarray, where: np.ndarray
) -> tuple[str, float, str, float]:
    """ePIE for ``epochs`` from a flat object and from ``model``'s image (refine): the scores
    against ``reference`` on ``where`` and the wall time of each."""
    recipe = EpieRecipe(epochs=epochs)
    flat_start, t_flat = timed(ptycho.epie_steps(scan, recipe, device="cpu"))
    seeded, t_seeded = timed(ptycho.refine_steps(scan, model, recipe, device="cpu"))
    return scores(flat_start, reference, where), t_flat, scores(seeded, reference, where), t_seeded


def refine(scan: PtychoScan, truth: np.ndarray, where: np.ndarray, args) -> None:
    """ePIE for ``args.refine_epochs`` from a flat object and from the bundled network's image."""
    epochs = args.refine_epochs
    from_flat, t_flat, from_network, t_seeded = flat_and_seeded(
        scan, args.model, epochs, truth, where
    )
    print(f"  ePIE {epochs} epochs from a flat object ({t_flat:.1f} s): {from_flat}")
    print(f"  ePIE {epochs} epochs from the pretrained network's image (refine, {t_seeded:.1f} s): "
          f"{from_network}")  # fmt: skip


def sparse(scan: PtychoScan, model_path: Path, region: np.ndarray, args) -> None:
    """Every 4th position: ePIE against the network trained on the dense scan's region."""
    thin = scan.subset(slice(None, None, 4))
    print(f"\n(2) the same scan with 1 position in 4 ({len(thin.positions)} positions, step ~20 px "
          "along the fast axis)")  # fmt: skip
    epie, t_epie = timed(ptycho.epie_steps(thin, EpieRecipe(epochs=args.epochs), device="cpu"))
    network, t_nn = timed(ptycho.network_steps(thin, model_path, device="cpu"))
    network = ptycho.matched_to(network, epie)
    grid = ptycho.ObjectGrid.around(thin.positions, thin.stack.frame_shape)
    truth = ptycho.on_grid(scan.truth, grid.origin, grid.shape)
    dense_grid = ptycho.ObjectGrid.around(scan.positions, scan.stack.frame_shape)
    shift = tuple(np.subtract(grid.origin, dense_grid.origin))
    region = ptycho.on_grid(region, shift, grid.shape)  # the same region on the sparse grid
    outside = ptycho.scanned_region(thin.positions, 64, grid.origin, grid.shape) & ~region
    print(f"  ePIE    {t_epie:6.1f} s  SSIM vs truth {scores(epie, truth, outside)}")
    print(f"  network {t_nn:6.2f} s  SSIM vs truth {scores(network, truth, outside)}")
    refine(thin, truth, outside, args)


def tike(args: argparse.Namespace, figure: Path | None) -> None:
    scan = io.read(TIKE)
    n = len(scan.positions)
    print(f"\n(3) real scan: {TIKE.name}, {n} positions, 128 x 128 frames (binned 2 x 2 for the "
          "network), probe from the file")  # fmt: skip
    epie, t_epie = timed(ptycho.epie_steps(scan, EpieRecipe(epochs=args.epochs), device="cpu"))
    grid = ptycho.ObjectGrid.around(scan.positions, scan.stack.frame_shape)
    middle = grid.origin[1] + grid.shape[1] / 2
    left = ptycho.region_mask(grid, rectangle=(-1e9, 1e9, -1e9, middle))
    scanned = ptycho.scanned_region(scan.positions, 128, grid.origin, grid.shape)
    right = scanned & ~left
    print(f"  ePIE {args.epochs} epochs {t_epie:.1f} s")
    print(f"  (a flat image against ePIE on the right half: "
          f"{scores(flat(epie.objects), epie.objects, right)})")  # fmt: skip
    for seconds in args.tike_seconds:
        run, model_path, t_train = few_shot(scan, epie, left, seconds, args.model)
        network, t_nn = timed(ptycho.network_steps(scan, model_path, device="cpu"))
        network = ptycho.matched_to(network, epie)
        print(f"  retrained on the {run.source['positions']} positions of the left half and "
              f"{run.source['simulated_pairs']} simulated pairs in {t_train:.1f} s "
              f"({len(run.history)} epochs, {statistics(run)} batch statistics); network "
              f"{t_nn:.2f} s; SSIM network vs ePIE on the "
              f"right half: {scores(network, epie.objects, right)}")  # fmt: skip
    epochs = args.refine_epochs
    from_flat, _, from_network, _ = flat_and_seeded(scan, model_path, epochs, epie.objects, right)
    print(f"  ePIE {epochs} epochs against ePIE {args.epochs} on the right half: from a flat object "
          f"{from_flat}; from the retrained network's image {from_network}")  # fmt: skip
    if figure is None:
        print("  picture: not drawn (--quick or another model; --figure FILE draws it)")
        return
    save_figure(epie, network, scanned, middle - grid.origin[1], figure)
    print(f"  picture: {figure}")


def save_figure(epie: ObjectResult, network: ObjectResult, seen, split: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = np.flatnonzero(seen.any(1))
    cols = np.flatnonzero(seen.any(0))
    crop = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    phase_epie = np.where(seen, np.angle(epie.objects), np.nan)[crop]
    phase_nn = np.where(seen, np.angle(network.objects), np.nan)[crop]
    difference = np.angle(np.exp(1j * (phase_nn - phase_epie)))
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.6))
    for ax, image, title, cmap, limits in (
        (axes[0], phase_epie, "ePIE phase", "twilight", (-np.pi, np.pi)),
        (axes[1], phase_nn, "network phase (retrained on the left half)", "twilight", (-np.pi, np.pi)),
        (axes[2], difference, "difference (rad)", "RdBu", (-1, 1)),
    ):  # fmt: skip
        shown = ax.imshow(image, cmap=cmap, vmin=limits[0], vmax=limits[1])
        ax.axvline(split - cols[0], color="yellow", lw=1, ls="--")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
        fig.colorbar(shown, ax=ax, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def speed(scan: PtychoScan, t_epie: float, args: argparse.Namespace, repeats: int = 3) -> None:
    print("\n(4) speed (2 CPU threads)")
    net, _ = load_model(args.model)
    fast = inference_model(net)
    patterns = ptycho.network_input(scan, net.size).patterns[:256]
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        for _ in predict_patches(fast, patterns, 1.0):
            pass
        best = min(best, time.perf_counter() - start)
    print(f"  network inference, batch 256: {len(patterns) / best:.0f} patterns/s (target >= 1000)")
    recipe = EpieRecipe(epochs=6)
    one = scan.subset(slice(0, 1024))
    run_to_end(ptycho.epie_steps(one.subset(slice(0, 64)), EpieRecipe(epochs=2), device="cpu"))
    field = torch.randn(recipe.batch_size, 64, 64, dtype=torch.complex64)
    ours, floor = [], []
    for _ in range(repeats):
        ours.append(epoch_seconds(one, recipe))
        start = time.perf_counter()
        for _ in range(len(one.positions) // recipe.batch_size):
            torch.fft.ifft2(torch.fft.fft2(field, norm="ortho"), norm="ortho")
        floor.append(time.perf_counter() - start)
    print(f"  ePIE epoch over {len(one.positions)} positions (batch {recipe.batch_size}, probe "
          f"update on): {min(ours) * 1e3:.1f} ms, its FFT pairs alone {min(floor) * 1e3:.1f} ms: "
          f"ratio {min(ours) / min(floor):.2f} (target <= 3)")  # fmt: skip
    costs = step_costs(one, recipe)
    print("  of which the element-wise steps: " + ", ".join(
        f"{name} {seconds * 1e3:.1f} ms" for name, seconds in costs.items()))  # fmt: skip
    n = len(scan.positions)
    per_epoch = t_epie / args.epochs
    _, t_nn = timed(ptycho.network_steps(scan, args.model, device="cpu"))
    print(
        f"  whole scan ({n} positions): network {t_nn:.2f} s, ePIE {per_epoch:.2f} s per epoch, "
        f"400 epochs (the paper's) {400 * per_epoch:.0f} s: ratio {400 * per_epoch / t_nn:.0f}x"
    )


def projected_per_pattern(scan: PtychoScan, start: np.ndarray, iterations: int) -> np.ndarray:
    """Each frame's window of ``start`` (on the scan's own object array) after ``iterations``
    steps that each set its exit wave's far-field modulus to the measured one and update the
    window where the known probe lights it (rPIE's step, one frame alone): what the pattern
    itself, with the probe, says about its patch. No frame sees another, so no overlap helps."""
    corners = np.floor(scan.positions).astype(int)
    probes = torch.as_tensor(
        np.stack([shifted(scan.probe, f) for f in scan.positions - corners]), dtype=torch.complex64
    )
    measured = np.sqrt(np.maximum(np.asarray(scan.stack.intensities, np.float32), 0))
    modulus = torch.as_tensor(np.fft.ifftshift(measured, axes=(-2, -1)))
    window = torch.as_tensor(sample_patches(start, (0.0, 0.0), corners, probes.shape[-1]))
    lit = probes.abs() ** 2
    step = probes.conj() / (0.3 * lit.amax(dim=(-2, -1), keepdim=True) + 0.7 * lit)
    for _ in range(iterations):
        wave = probes * window
        spectrum = torch.fft.fft2(torch.fft.ifftshift(wave, dim=(-2, -1)))
        counts = (spectrum.abs() ** 2).sum((-2, -1), keepdim=True)
        scale = torch.sqrt(counts / (modulus**2).sum((-2, -1), keepdim=True))
        spectrum = scale * modulus * torch.exp(1j * spectrum.angle())
        wave_set = torch.fft.fftshift(torch.fft.ifft2(spectrum), dim=(-2, -1))
        window = window + step * (wave_set - wave)
    return window.numpy()


def single_pattern(args: argparse.Namespace) -> None:
    """How much of a patch one pattern and the known probe fix, whatever the inverter: the true
    object blurred, then each frame's window projected onto its own pattern alone and stitched
    like the network's patches. Where projections leave a blurred start's score, no per-pattern
    inversion (the network's job) is told more by the data; overlaps (ePIE) are."""
    scan = held_out_scan(args)
    grid = ptycho.ObjectGrid.around(scan.positions, scan.stack.frame_shape)
    truth = ptycho.on_grid(scan.truth, grid.origin, grid.shape)
    scanned = ptycho.scanned_region(scan.positions, 64, grid.origin, grid.shape)
    outside = scanned & ~region_holding(scan, grid, min(800, 2 * len(scan.positions) // 5), 64)
    weight = ptycho.network_input(scan, 64).stitch_weight
    corners = np.floor(scan.positions).astype(float)
    print(f"\n(5) what one pattern says (held-out scan, {len(scan.positions)} frames): the truth "
          "blurred by a Gaussian, then each frame's window set to agree with its own pattern "
          f"({args.projections} projections, the known probe, no overlap) and stitched; SSIM "
          "against the truth outside the region")  # fmt: skip
    for sigma in (0.0, 1.0, 2.0, 3.0):
        blurred = gaussian_filter(np.abs(scan.truth), sigma) * np.exp(
            1j * gaussian_filter(np.angle(scan.truth), sigma)
        )
        start = time.perf_counter()
        windows = projected_per_pattern(scan, blurred, args.projections)
        image = stitch(windows, corners, weight, grid.origin, grid.shape)
        print(f"  blurred {sigma:.0f} px: {scores(ptycho.on_grid(blurred, grid.origin, grid.shape), truth, outside)}"
              f"  ->  projected {scores(image, truth, outside)}  "
              f"({time.perf_counter() - start:.0f} s)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller scan, fewer epochs")
    parser.add_argument("--epochs", type=int, default=100, help="ePIE epochs")
    parser.add_argument("--seconds", type=float, default=55.0, help="retraining budget")
    parser.add_argument(
        "--teacher", choices=("epie", "truth"), default="epie",
        help="the simulated scan's retraining reference: ePIE's result or the true object",
    )  # fmt: skip
    parser.add_argument(
        "--refine-epochs", type=int, default=ptycho.REFINE_EPOCHS,
        help="ePIE epochs from a flat start and from the network's image",
    )  # fmt: skip
    parser.add_argument(
        "--tike-seconds", type=float, nargs="+", default=[55.0, 180.0],
        help="retraining budgets on the tike scan, whose probe the pretraining never saw",
    )  # fmt: skip
    parser.add_argument(
        "--model", type=Path, default=ptycho.default_model(), help="base model (the bundled)"
    )
    parser.add_argument(
        "--only", choices=("simulated", "tike", "speed", "single"),
        help="one section (simulated, tike: without the speed section; speed: after ePIE on the "
        "simulated scan, for the whole-scan comparison; single: section (5), what one pattern "
        "fixes of its patch, not in the full run)",
    )  # fmt: skip
    parser.add_argument(
        "--projections", type=int, default=100, help="per-pattern projections in section (5)"
    )
    parser.add_argument(
        "--figure",
        type=Path,
        help="where to draw the tike picture (default: docs/ptycho_tike.png, the README's, on a "
        "full run of the bundled model; none otherwise, so that no other run replaces it)",
    )
    args = parser.parse_args()
    if args.quick:
        args.epochs = min(args.epochs, 30)
    readme_run = not args.quick and args.model == ptycho.default_model()
    args.figure = args.figure or (REPO / "docs" / "ptycho_tike.png" if readme_run else None)
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu, "
          f"CPU {cpu_model()}")  # fmt: skip
    if args.only == "tike":
        tike(args, args.figure)
        return
    if args.only == "single":
        single_pattern(args)
        return
    if args.only == "speed":
        scan = held_out_scan(args)
        _, t_epie = timed(ptycho.epie_steps(scan, EpieRecipe(epochs=args.epochs), device="cpu"))
        speed(scan, t_epie, args)
        return
    scan, _, t_epie = simulated(args)
    if args.only == "simulated":
        return
    if TIKE.exists():
        tike(args, args.figure)
    else:
        print(f"\n(3) skipped: {TIKE} not found")
    speed(scan, t_epie, args)


if __name__ == "__main__":
    main()
