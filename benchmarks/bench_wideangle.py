"""Wide-angle benchmark: the MSFT simulator, the bundled network and the simplex fit, side by side.

    python benchmarks/bench_wideangle.py           # the issue's figures (about 20 min on 2 cores)
    python benchmarks/bench_wideangle.py --quick   # fewer shots, smaller fits
    python benchmarks/bench_wideangle.py --only real   # one part (simulator, network, real)

Sections: (1) simulator speed (one thread) and its agreement with the slice-by-slice reference
(rms of log10 intensity over 5 decades) at 30, 90 and 160 nm; (2) the network on held-out
simulated shots with the experimental augmentations: the paper's mean relative parameter
error, median misorientation and radius error, binned by radius; (3) speed: network per shot
at batch 1 against the Monte-Carlo simplex fit reaching the same median misorientation on the
same shots, in one run; (4) the real FLASH shots barke5 and barke6 (icosahedra): network, fit
and refine answers with the similarity of their re-simulated patterns to the measured ones,
and the picture for the README.
"""

from __future__ import annotations

import argparse
import itertools
import time
from pathlib import Path

import numpy as np
import torch

from napari_cdinn.core import icosahedral, io, wideangle
from napari_cdinn.core.data import Metadata, OrientationResult, Provenance, ShotSet
from napari_cdinn.core.nn.registry import load_model
from napari_cdinn.core.nn.train_wideangle import augmented_set
from napari_cdinn.core.nn.training import training_precision
from napari_cdinn.core.nn.wideangle import inference_network, parameter_errors, predict
from napari_cdinn.core.progress import run_to_end
from napari_cdinn.core.simulate import wideangle as simulate

REPO = Path(__file__).resolve().parents[1]
SHOTS = REPO.parent / "shared" / "data" / "wideangle"
BENCH_SEED = 5_555_555  # never used in training (training seeds 0 .. 149 * 1e6, 7.8e6, 8.9e6)


def log_rms(fast: np.ndarray, reference: np.ndarray, decades: float = 5.0) -> float:
    """rms of the difference of log10 intensities, both over the reference's maximum and floored
    ``decades`` below it (the network's dynamic range)."""
    peak = reference.max()
    a, b = (np.log10(np.maximum(x / peak, 10.0**-decades)) for x in (fast, reference))
    return float(np.sqrt(np.mean((a - b) ** 2)))


def simulator_section(args: argparse.Namespace) -> None:
    print("\n(1) simulator (MSFT, exact chord integrals; detector 128 x 128, 30 deg at the edges)")
    torch.set_num_threads(1)
    simulator = simulate.Simulator()
    rng = np.random.default_rng(BENCH_SEED)
    for radius in (30.0, 90.0, 160.0):
        qs = icosahedral.random_orientations(6, rng)
        simulator.intensity(radius, qs[0])
        start = time.perf_counter()
        for q in qs:
            simulator.intensity(radius, q)
        ms = (time.perf_counter() - start) / len(qs) * 1e3
        errors, seconds = [], 0.0
        for q in qs[: 1 if args.quick else 2]:
            start = time.perf_counter()
            reference = simulate.reference_pattern(radius, q, step=0.5)
            seconds += time.perf_counter() - start
            errors.append(log_rms(simulator.intensity(radius, q), reference))
        print(f"  radius {radius:5.0f} nm: {ms:6.1f} ms per pattern; rms log10 against the slice "
              f"reference (0.5 nm slices and grid, {seconds / len(errors):.0f} s each): "
              + ", ".join(f"{e:.4f}" for e in errors) + "  (target <= 0.01)")  # fmt: skip
    radii = rng.uniform(*simulate.RADII, 40)
    qs = icosahedral.random_orientations(40, rng)
    start = time.perf_counter()
    for q, r in zip(qs, radii, strict=True):
        simulator.intensity(r, q)
    print(f"  radii uniform in {simulate.RADII} nm: {(time.perf_counter() - start) / 40 * 1e3:.1f} "
          "ms per pattern on one thread")  # fmt: skip
    torch.set_num_threads(2)


def turned_by(orientations: np.ndarray, degrees: float, seed: int = 0) -> np.ndarray:
    """Each orientation turned by exactly ``degrees`` about a random axis: a network whose every
    answer is off by that angle, to put the relative-error target beside the angle's."""
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(len(orientations), 3))
    axes *= np.radians(degrees) / np.linalg.norm(axes, axis=1, keepdims=True)
    return icosahedral.multiply(icosahedral.from_rotation_vector(axes), orientations)


def network_section(args: argparse.Namespace, models: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """Scores of each of ``models`` (label: network) on the same held-out shots."""
    n = 500 if args.quick else 5000
    start = time.perf_counter()
    images, orientations, radii = augmented_set(n, BENCH_SEED)
    print(f"\n(2) network on {n} held-out simulated shots with the experimental augmentations "
          f"(simulated and corrupted in {time.perf_counter() - start:.0f} s)")  # fmt: skip
    edges = np.linspace(*simulate.RADII, 6)
    for degrees in (1, 2):
        relative = parameter_errors(turned_by(orientations, degrees), radii, orientations, radii)
        print(f"  for scale: every shot off by exactly {degrees} deg (radius exact) has a mean "
              f"relative parameter error of {100 * relative['relative'].mean():.2f} %")  # fmt: skip
    for label, model in models.items():
        print(f"  {label}:")
        start = time.perf_counter()
        q, r, agreeing = predict(model, images.numpy(), agreement=True)
        elapsed = time.perf_counter() - start
        errors = parameter_errors(q, r, orientations, radii)
        print(f"    all: mean relative parameter error {100 * errors['relative'].mean():.2f} % "
              f"(target < 1 %), median misorientation {np.median(errors['misorientation']):.2f} "
              f"deg (target <= 2), median radius error {np.median(errors['radius']):.2f} nm "
              f"(target <= 1); {elapsed / n * 1e3:.2f} ms per shot in batches with 8 flips")  # fmt: skip
        for lo, hi in itertools.pairwise(edges):
            inside = (radii >= lo) & (radii < hi)
            print(f"    radius {lo:5.0f}-{hi:3.0f} nm ({inside.sum():4d} shots): relative "
                  f"{100 * errors['relative'][inside].mean():.2f} %, misorientation median "
                  f"{np.median(errors['misorientation'][inside]):.2f} deg, radius error median "
                  f"{np.median(errors['radius'][inside]):.2f} nm")  # fmt: skip
        misorientation = errors["misorientation"]
        counts = ", ".join(
            f"{k}: {np.sum(agreeing == k)} shots {np.median(misorientation[agreeing == k]):.2f}"
            for k in range(8, 0, -1)
            if np.any(agreeing == k)
        )
        print(f"    median misorientation (deg) by how many of the 8 flips agree, the answer's "
              f"confidence: {counts}")  # fmt: skip
        outliers(q, errors, orientations, radii, edges)
        plain = parameter_errors(*predict(model, images.numpy(), tta=False), orientations, radii)
        print(f"    without the 8 flips: relative {100 * plain['relative'].mean():.2f} %, "
              f"misorientation median {np.median(plain['misorientation']):.2f} deg")  # fmt: skip
    return images.numpy(), orientations, radii


def outliers(q: np.ndarray, errors: dict, truth: np.ndarray, radii: np.ndarray, edges) -> None:
    """Where the answers off by more than 6 deg lie: their share in each radius bin, how many
    sit near the truth's twin, the cluster turned by pi about the beam (at small angles the same
    pattern: only the Ewald sphere's curvature and absorption tell them apart), and how much of
    the mean relative error they carry; and the mean relative error of the answers within 3
    deg, what the network would score if no answer were further off."""
    misorientation, relative = errors["misorientation"], errors["relative"]
    off = misorientation > 6
    twin = icosahedral.multiply(np.array([0.0, 0.0, 0.0, 1.0]), truth)
    near_twin = icosahedral.misorientation(q[off], twin[off]) < 3
    shares = ", ".join(
        f"{100 * off[(radii >= lo) & (radii < hi)].mean():.0f} %"
        for lo, hi in itertools.pairwise(edges)
    )
    print(f"    answers off by > 6 deg: {off.sum()} shots; by radius bin {shares}; within 3 deg of "
          f"the truth's twin (turned by pi about the beam): {near_twin.sum()}; they carry "
          f"{100 * relative[off].sum() / relative.sum():.0f} % of the mean relative error")  # fmt: skip
    close = misorientation <= 3
    print(f"    the {close.sum()} answers within 3 deg alone: mean relative parameter error "
          f"{100 * relative[close].mean():.2f} %, median misorientation "
          f"{np.median(misorientation[close]):.2f} deg")  # fmt: skip


def batch_one_seconds(model, images: np.ndarray, tta: bool, repeats: int = 3) -> float:
    """Seconds per shot answering 50 shots one at a time (best of ``repeats`` rounds)."""
    predict(model, images[:1], tta=tta)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for k in range(50):
            predict(model, images[k : k + 1], tta=tta)
        best = min(best, (time.perf_counter() - start) / 50)
    return best


def speed_section(args, model, images, orientations, radii, bfloat16=None) -> None:
    print("\n(3) speed: network at batch 1 against the simplex fit, same shots, one run")
    for tta in (True, False):
        passes = "8 flips and their consensus" if tta else "one pass"
        seconds = batch_one_seconds(model, images, tta)
        line = f"  network, batch 1, {passes}: {seconds * 1e3:.2f} ms per shot"
        if bfloat16 is not None:
            line += (
                f", features in bfloat16 {batch_one_seconds(bfloat16, images, tta) * 1e3:.2f} ms"
            )
        print(line + " (target <= 5; best of 3 rounds of 50)")
        if tta:
            t_network = seconds
    n_fit, n_refine = (6, 6) if args.quick else (16, 48)  # refine is quick: more shots
    q, r, agreeing = predict(model, images[: max(n_fit, n_refine)], agreement=True)
    misoriented = icosahedral.misorientation(q, orientations[: len(q)])

    def held_out(n: int) -> ShotSet:
        return ShotSet(images[:n], Metadata(source="held-out shots"), scaling="display value / 255")

    n, shots = n_fit, held_out(n_fit)
    network_median = float(np.median(misoriented[:n]))
    print(f"  on the first {n} shots the network's median misorientation is "
          f"{network_median:.2f} deg")  # fmt: skip
    budgets = [(2, 100), (4, 150), (8, 150)] if args.quick else [(2, 100), (4, 150), (8, 200)]
    for starts, evaluations in budgets:
        recipe = wideangle.FitRecipe(starts=starts, evaluations=evaluations)
        start = time.perf_counter()
        fit = run_to_end(wideangle.fit_steps(shots, recipe))
        per_shot = (time.perf_counter() - start) / n
        median = float(np.median(icosahedral.misorientation(fit.quaternions, orientations[:n])))
        reached = "reaches" if median <= network_median else "does not reach"
        print(f"  simplex fit, {starts} starts x {evaluations} simulations: median "
              f"misorientation {median:.2f} deg, radius error median "
              f"{np.median(np.abs(fit.radii_nm - radii[:n])):.2f} nm, {per_shot:.1f} s per "
              f"shot ({reached} the network's): {per_shot / t_network:.0f} x the network's "
              "time")  # fmt: skip
    n, shots = n_refine, held_out(n_refine)
    start = time.perf_counter()
    network = OrientationResult(q[:n], r[:n], Provenance("NN"), agreeing[:n])
    refined = run_to_end(wideangle.fit_steps(shots, start=network))
    per_shot = (time.perf_counter() - start) / n
    median = float(np.median(icosahedral.misorientation(refined.quaternions, orientations[:n])))
    print(f"  refine (one simplex from the network's answer) on the first {n} shots: median "
          f"misorientation {median:.2f} deg (the network's {np.median(misoriented[:n]):.2f}), "
          f"radius error median {np.median(np.abs(refined.radii_nm - radii[:n])):.2f} nm (the "
          f"network's {np.median(np.abs(r[:n] - radii[:n])):.2f}), {per_shot:.1f} s per shot")  # fmt: skip
    unsure = wideangle.unsure_shots(network)  # refined only where few flips agree
    combined = network.quaternions.copy()
    combined[unsure] = refined.quaternions[unsure]
    median = float(np.median(icosahedral.misorientation(combined, orientations[:n])))
    print(f"  refine of the unsure shots only ({len(unsure)} of {n}, fewer than "
          f"{wideangle.UNSURE_BELOW} of 8 flips agreeing; the others keep the network's answer): "
          f"median misorientation {median:.2f} deg over the {n}")  # fmt: skip


def real_section(args, model_path: Path, figure: Path | None) -> None:
    names = ("barke5", "barke6")
    if not SHOTS.exists():
        print(f"\n(4) skipped: {SHOTS} not found")
        return
    print("\n(4) real FLASH shots (icosahedra in expLabels.csv): answers and the similarity "
          "(Pearson correlation of log images over the detector's pixels) of the re-simulated "
          "pattern to the measured one")  # fmt: skip
    rows = []
    for name in names:
        shots = io.read(SHOTS / f"{name}.png")
        image = wideangle.shot_images(shots)[0]
        network = run_to_end(wideangle.network_steps(shots, model_path, device="cpu"))
        recipe = wideangle.FitRecipe(starts=4 if args.quick else 8)
        start = time.perf_counter()
        fit = run_to_end(wideangle.fit_steps(shots, recipe))
        t_fit = time.perf_counter() - start
        refined = run_to_end(wideangle.fit_steps(shots, start=network))
        answers = {"network": network, "simplex fit": fit, "refine": refined}
        for label, result in answers.items():
            q, r = result.quaternions[0], float(result.radii_nm[0])
            simulated = wideangle.simulated_image(q, r)
            similarity = wideangle.similarity(image[image > 0], simulated[image > 0])
            fitted = 1 - wideangle.ShotFit(image).misfit(q, r)  # what the fit maximises
            to_fit = float(icosahedral.misorientation(q, fit.quaternions[0]))
            print(f"  {name} {label:12s} radius {r:6.1f} nm, quaternion "
                  f"{np.round(q, 3).tolist()}, similarity {similarity:.3f} (the fit's, with "
                  f"the best beam offset and blur: {fitted:.3f}), misorientation to the fit "
                  f"{to_fit:5.1f} deg")  # fmt: skip
        print(f"  ({name}: network {network.provenance.wall_time_s * 1e3:.0f} ms including "
              f"loading the model, simplex fit {t_fit:.0f} s)")  # fmt: skip
        rows.append((name, image, network))
    if figure is None:
        print("  picture: not drawn (--quick or another model; --figure FILE draws it)")
        return
    save_figure(rows, figure)
    print(f"  picture: {figure}")


def save_figure(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    fig = plt.figure(figsize=(9, 3 * len(rows)))
    for i, (name, image, network) in enumerate(rows):
        q, r = network.quaternions[0], float(network.radii_nm[0])
        simulated = wideangle.simulated_image(q, r, like=image)
        for j, (shown, title) in enumerate(
            ((image, f"{name}: measured"), (simulated, f"simulated from the network ({r:.0f} nm)"))
        ):
            ax = fig.add_subplot(len(rows), 3, 3 * i + j + 1)
            ax.imshow(shown, cmap="inferno", vmin=0, vmax=1)
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        ax = fig.add_subplot(len(rows), 3, 3 * i + 3, projection="3d")
        vertices, faces = wideangle.cluster_mesh(q, r)  # (z, y, x)
        xyz = vertices[:, ::-1]
        ax.add_collection3d(
            Poly3DCollection(xyz[faces], facecolor="orange", edgecolor="k", alpha=0.9)
        )
        for set_limits in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
            set_limits(-r, r)
        ax.view_init(elev=90, azim=-90)  # looking back along the beam, from the detector
        ax.set_title("cluster, seen from the detector (nm)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def network_and_speed(args: argparse.Namespace, model, model_path: Path, card: dict) -> None:
    """Sections (2) and (3): the bundled (or given) model, its features in bfloat16 where the
    CPU has native bfloat16, and each ``--baseline`` beside it."""
    models = {f"model {model_path.name} ({card.get('version')})": model}
    bfloat16 = None
    if training_precision("auto") == "bfloat16":
        bfloat16 = inference_network(load_model(model_path)[0], torch.bfloat16)
        models["the same, its features in bfloat16"] = bfloat16
    for path in args.baseline or []:
        baseline, baseline_card = load_model(path)
        models[f"baseline {path} ({baseline_card.get('version')})"] = inference_network(baseline)
    images, orientations, radii = network_section(args, models)
    speed_section(args, model, images, orientations, radii, bfloat16)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer shots, smaller fits")
    parser.add_argument("--model", type=Path, help="model file (default: the bundled one)")
    parser.add_argument(
        "--baseline",
        type=Path,
        nargs="+",
        help="other models scored beside it in (2) on the same shots",
    )
    parser.add_argument(
        "--figure",
        type=Path,
        help="where to draw the real shots (default: docs/wideangle_real.png, the README's, on a "
        "full run of the bundled model; none otherwise, so that no other run replaces it)",
    )
    parser.add_argument("--skip-simulator", action="store_true", help="skip section (1)")
    parser.add_argument(
        "--only", choices=("simulator", "network", "real"),
        help="one part: section (1), sections (2) and (3), or section (4)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(2)
    model_path = args.model or wideangle.default_model()
    model, card = load_model(model_path)
    model = inference_network(model)  # as network_steps: fused, ranking each image once
    print(f"torch {torch.__version__}, 2 threads, model {model_path.name} "
          f"({card.get('version')})")  # fmt: skip
    parts = {args.only} if args.only else {"simulator", "network", "real"}
    if "simulator" in parts and not args.skip_simulator:
        simulator_section(args)
    if "network" in parts:
        network_and_speed(args, model, model_path, card)
    if "real" in parts:
        readme_run = not args.quick and args.model is None
        figure = args.figure or (REPO / "docs" / "wideangle_real.png" if readme_run else None)
        real_section(args, model_path, figure)


if __name__ == "__main__":
    main()
