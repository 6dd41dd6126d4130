"""The command-line face: ``napari-cdinn info|view|invert|simulate|train``, over the same core.

Exit code 0 only on success; otherwise one clear line on stderr naming the file and the problem.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .core.errors import CdinnError
from .core.nn.train_options import at_least as _at_least

PROG = "napari-cdinn"
MODES = ("cdi", "ptycho", "wideangle")
SIMULATE_MODES = MODES
MIN_SIMULATED_SIZE = 16  # a CDI object fills the central half of its grid: 8 x 8 pixels here


def _print_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def cmd_info(args: argparse.Namespace) -> int:
    """Print (and optionally save as JSON) what the reader found in a file."""
    from .core import io
    from .core.data import ObjectResult

    if io.is_results(args.file):
        results = io.read_results(args.file)
        summary: dict[str, Any] = {"kind": "results", "source": str(args.file), "reader": "results"}
        for i, result in enumerate(results, 1):
            shape = (
                result.objects.shape if isinstance(result, ObjectResult) else result.radii_nm.shape
            )
            summary[f"result {i}"] = f"{type(result).__name__} {shape} ({result.provenance.method})"
    else:
        summary = io.describe(io.read(args.file, dataset=args.dataset))
    width = max(len(k) for k in summary)
    for key, value in summary.items():
        print(f"{key:>{width}}: {value}")
    if args.output:
        from .core.io.results import CREATOR, atomic_path

        with atomic_path(args.output, writes="summary") as tmp:
            tmp.write_text(json.dumps({"creator": CREATOR, **summary}, indent=2, default=str))
        print(f"summary written to {args.output}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    """Open napari with the plugin's docks and, if given, the file."""
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        raise CdinnError("view needs a display (none found); on a headless machine use xvfb-run")
    from ._viewer import open_viewer

    return open_viewer(args.file, dataset=args.dataset, screenshot=args.screenshot)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate a dataset with its true objects and write it as CXI."""
    from .core.io.cxi_writer import write_cxi

    if args.mode not in SIMULATE_MODES:
        raise CdinnError(
            f"simulate: mode '{args.mode}' is not available yet (available: {', '.join(SIMULATE_MODES)})"
        )
    if args.n < 1:
        raise CdinnError("simulate: -n must be at least 1")
    _warn_unused_simulate(args)
    if args.mode == "wideangle":
        from .core.simulate.wideangle import Detector

        pixels = Detector().pixels
        if args.size not in (None, pixels):
            raise CdinnError(
                f"simulate wideangle: the detector is {pixels} x {pixels} pixels; "
                f"--size {args.size} cannot be given"
            )
        return _simulate_wideangle(args)
    args.size = args.size or 64
    if args.size < MIN_SIMULATED_SIZE:
        raise CdinnError(
            f"simulate {args.mode}: --size {args.size} is too small for an object with an "
            f"oversampled support; at least {MIN_SIMULATED_SIZE} pixels"
        )
    if args.mode == "ptycho" and args.object_size is not None and args.object_size <= args.size:
        raise CdinnError(
            f"simulate ptycho: --object-size {args.object_size} leaves no room to scan frames "
            f"of {args.size} pixels; give more than {args.size}"
        )
    if args.mode == "cdi":
        from .core.simulate.cdi import simulate_cdi

        data = simulate_cdi(args.n, size=args.size, seed=args.seed, photons=args.photons)
    else:
        from .core.simulate.ptycho import simulate_ptycho, spiral_positions

        # an object just large enough for n positions (a spiral fills a disc), unless given
        needed = args.n * args.every
        side = args.object_size or int(args.size + args.step * needed**0.5 + 2)
        while args.scan == "spiral" and not args.object_size:
            if len(spiral_positions((side, side), args.size, args.step)) >= needed:
                break
            side += max(1, int(args.step))
        data = simulate_ptycho(
            (side, side), frame=args.size, step=args.step, scan=args.scan,
            photons=args.photons, every=args.every, seed=args.seed,
        )  # fmt: skip
        data = data.subset(slice(0, args.n))
        if not len(data.positions):
            raise CdinnError(
                f"simulate ptycho: no scan position fits frames of {args.size} pixels on an "
                f"object of {side} pixels at step {args.step:g}; give a larger --object-size"
            )
    write_cxi(args.output, data)
    if args.mode == "ptycho":
        fewer = len(data.positions) < args.n
        print(f"wrote {args.output}: {len(data.positions)} scan positions on an object of "
              f"{side} x {side} pixels" + (f" (fewer than -n {args.n}: no more fit)" if fewer else ""))  # fmt: skip
    else:
        print(f"wrote {args.output}")
    return 0


PTYCHO_SIMULATION = ("object_size", "step", "scan", "every")  # the options only ptycho uses


def _given(args: argparse.Namespace, names: tuple[str, ...], bare: list[str]) -> list[str]:
    """Those of the options ``names`` that this command line sets away from the defaults of
    the bare command line ``bare`` (the same command with nothing chosen)."""
    defaults = vars(build_parser().parse_args(bare))
    return [name for name in names if getattr(args, name) != defaults[name]]


def _warn_unused_simulate(args: argparse.Namespace) -> None:
    """Name the given ptychography options that simulating another mode does not use, rather
    than drop them (``simulate wideangle --every 5 --step 3`` said nothing)."""
    if args.mode == "ptycho":
        return
    given = _given(args, PTYCHO_SIMULATION, ["simulate", args.mode, "-o", "x"])
    if given:
        named = ", ".join("--" + n.replace("_", "-") for n in given)
        warnings.warn(f"ignored with simulate {args.mode} (ptycho only): {named}", stacklevel=2)


def _simulate_wideangle(args: argparse.Namespace) -> int:
    """Shots of random icosahedra (intensities, Poisson noise when --photons is given) with
    their true orientations and radii."""
    from .core.io.cxi_writer import write_shots
    from .core.simulate.wideangle import WAVELENGTH, simulate_intensities

    shots, orientations, radii, settings = simulate_intensities(args.n, args.seed, args.photons)
    write_shots(args.output, shots, orientations, radii, WAVELENGTH, settings)
    print(f"wrote {args.output}")
    return 0


def parse_frames(spec: str | None, n: int) -> np.ndarray:
    """Frame selection: "7", "0:10", "0:100:5" or "1,4,9" -> indices (all when None)."""
    if not spec:
        return np.arange(n)
    try:
        if ":" in spec:
            parts = [int(p) if p else None for p in spec.split(":")]
            indices = np.arange(n)[slice(*parts)]  # 4 parts: TypeError; step 0: ValueError
        else:
            indices = np.array([int(p) for p in spec.split(",")])
    except (ValueError, TypeError):
        raise CdinnError(f"--frames '{spec}': use N, START:STOP[:STEP] or N,M,...") from None
    if not len(indices):
        raise CdinnError(f"--frames '{spec}': selects none of the stack's {n} frames")
    if indices.min() < -n or indices.max() >= n:
        raise CdinnError(f"--frames '{spec}': the stack has {n} frames")
    return indices % n  # counted from 0 (-1: the last), as results record them


def cmd_invert(args: argparse.Namespace) -> int:
    """Invert a file with the chosen mode and method and write the documented HDF5 layout."""
    from .core import io

    data = io.read(args.input, dataset=args.dataset)
    mode = (
        args.mode
        or data.meta.extra.get("mode")  # a file that says what it holds (wide-angle CXI)
        or {"DiffractionStack": "cdi", "PtychoScan": "ptycho"}.get(type(data).__name__, "wideangle")
    )
    if args.mode is None and mode != "wideangle":
        _refuse_wideangle_only(args, mode)
    if mode == "ptycho":
        results = _invert_ptycho(args, data)
    elif mode == "cdi":
        results = _invert_cdi(args, data)
    else:
        results = _invert_wideangle(args, data)
    io.write_results(args.output, results)
    print(f"wrote {args.output}")
    return 0


def _refuse_wideangle_only(args: argparse.Namespace, mode: str) -> None:
    """Refuse a method or option that only the wide-angle mode has when the mode came from the
    file (``invert shots.tif --method fit`` said "method 'fit' is not one of nn, iterative,
    refine", and ``--method refine --unsure-only`` ran CDI's refine): say which mode the file
    was read as, and how to ask for the other."""
    from .core import io

    given = []
    if args.method == "fit":
        given.append("--method fit")
    if args.unsure_only and args.method == "refine":
        given.append("--unsure-only")
    if given:
        kind = (io.file_kind(args.input[0]) or "this file").upper()
        raise CdinnError(
            f"{args.input[0]}: read as {mode} (the default for {kind}); {' and '.join(given)} "
            "is for the wide-angle mode: add --mode wideangle"
        )


def _numbered(data: Any, frames: np.ndarray) -> Any:
    """``data`` (a selection of the file's frames) whose metadata says which frame of the file
    each of its own is, so that refusals and warnings name frames as the file numbers them."""
    from dataclasses import replace

    meta = replace(data.meta, extra={**data.meta.extra, "frames": frames.tolist()})
    if hasattr(data, "stack"):  # a scan: its stack carries the metadata
        return replace(data, stack=replace(data.stack, meta=meta))
    return replace(data, meta=meta)


def _warn_unused(args: argparse.Namespace, mode: str, method: str) -> None:
    """Say which given options this mode and method do not use, rather than drop them."""
    unused = []
    if args.unsure_only and (mode, method) != ("wideangle", "refine"):
        unused.append("--unsure-only (for --mode wideangle --method refine)")
    if args.iterations and method == "nn":
        unused.append("--iterations (the network does not iterate)")
    if args.model and method not in ("nn", "refine"):
        unused.append(f"--model ({method} uses no network)")
    if args.device != "auto" and (mode, method) == ("wideangle", "fit"):
        unused.append("--device (the fit simulates on the CPU)")
    if unused:
        warnings.warn(f"ignored with {mode} {method}: {'; '.join(unused)}", stacklevel=2)


def _recorded(result: Any, args: argparse.Namespace, frames: np.ndarray, meta: Any) -> Any:
    """``result`` with what it answers for in its provenance: the input file's absolute path
    (a result file outlives the folder it was made in), the dataset read from it, the file's
    frames (``parse_frames``'s, one per row), the absolute path of each one's file when the
    stack was read from several (``meta.extra["files"]``, one per frame of the stack), and
    whether the file held amplitudes: a result of ``--frames 7`` must say it is frame 7's, of ``a.png
    b.png`` which row is b's, and of ``--dataset /b/data`` that it is not /a/data's."""
    from dataclasses import replace

    p = result.provenance
    parameters = {**p.parameters, "file_frames": frames.tolist()}
    if meta.dataset:
        parameters["file_dataset"] = meta.dataset
    files = meta.extra.get("files")
    if files is not None and len(files) > max(frames, default=-1):
        paths = _frame_paths(args, files)
        parameters["file_names"] = [paths[i] for i in frames]
    if args.amplitudes:
        parameters["file_held_amplitudes"] = True
    source = p.source  # "/abs/a.png and 3 more files" stays as it is
    if source and Path(source).exists():
        source = str(Path(source).resolve())
    return replace(result, provenance=replace(p, parameters=parameters, source=source))


def _frame_paths(args: argparse.Namespace, files: list[str]) -> list[str]:
    """The absolute path of each frame's file (``files``: their names, as the reader gives
    them): the several inputs, read in the order given, or the files of the folder or file."""
    inputs = [Path(p) for p in args.input]
    if len(inputs) > 1:
        return [str(p.resolve()) for p in inputs]
    folder = inputs[0] if inputs[0].is_dir() else inputs[0].parent
    return [str((folder / name).resolve()) for name in files]


def _invert_cdi(args: argparse.Namespace, data: Any) -> list:
    from .core import cdi
    from .core.data import DiffractionStack
    from .core.progress import run_to_end

    data = getattr(data, "stack", data)  # --mode cdi on a scan inverts its frames one by one
    if not isinstance(data, DiffractionStack):
        raise CdinnError(f"{data.meta.source}: holds no diffraction patterns for the cdi mode")
    method = args.method or "nn"
    if method not in cdi.METHODS:
        raise CdinnError(f"invert: method '{method}' is not one of {', '.join(cdi.METHODS)}")
    _warn_unused(args, "cdi", method)
    frames = parse_frames(args.frames, data.n_frames)
    stack = _numbered(data.subset(frames), frames)  # refusals name frames as the file does
    if args.amplitudes:
        _squared(stack)
    methods = ["nn", "refine"] if method == "refine" else [method]
    steps = cdi.invert_steps(
        stack, methods, iterations=args.iterations if method == "iterative" else None,
        refine_iterations=args.iterations or 50, device=args.device, model_path=args.model,
    )  # fmt: skip
    results = [_recorded(r, args, frames, data.meta) for r in run_to_end(steps).values()]
    for result in results:
        p, chi2 = result.provenance, result.chi2  # NaN for patterns left out (nothing measured)
        worst = int(np.nanargmax(chi2))
        print(
            f"{p.method}: {len(result.objects)} pattern(s) in {p.wall_time_s:.3f} s, median "
            f"chi2 {np.nanmedian(chi2):.4g}, worst {chi2[worst]:.4g} (frame {frames[worst]})"
        )
    return results


def _squared(stack: Any) -> None:
    """``--amplitudes``: the stack's sqrt(I) frames squared in memory, the NaN/Inf pixels of a
    lazily read stack masked first (as a method reading it would have)."""
    from .core.io.checks import frames_in_memory

    amplitudes, stack.mask = frames_in_memory(stack)
    stack.intensities = amplitudes**2


def _invert_ptycho(args: argparse.Namespace, data: Any) -> list:
    from .core import ptycho
    from .core.data import PtychoScan
    from .core.progress import run_to_end
    from .core.retrieval.ptycho import EpieRecipe

    if not isinstance(data, PtychoScan):
        raise CdinnError(f"{data.meta.source}: holds no scan positions for the ptycho mode")
    method = args.method or "nn"
    if method not in ptycho.METHODS:
        raise CdinnError(f"invert: method '{method}' is not one of {', '.join(ptycho.METHODS)}")
    _warn_unused(args, "ptycho", method)
    frames = parse_frames(args.frames, len(data.positions))
    scan = _numbered(data.subset(frames), frames)
    if args.amplitudes:
        _squared(scan.stack)
    if method == "epie":
        recipe = EpieRecipe(epochs=args.iterations or EpieRecipe.epochs)
        result = run_to_end(ptycho.epie_steps(scan, recipe, device=args.device))
    elif method == "refine":
        recipe = EpieRecipe(epochs=args.iterations or ptycho.REFINE_EPOCHS)
        result = run_to_end(ptycho.refine_steps(scan, args.model, recipe, device=args.device))
    else:
        result = run_to_end(ptycho.network_steps(scan, args.model, device=args.device))
    p = result.provenance
    inverted = p.parameters.get("positions_inverted", len(scan.positions))
    left_out = (
        f" ({len(scan.positions) - inverted} left out)" if inverted < len(scan.positions) else ""
    )
    print(f"{p.method}: {inverted} positions{left_out} in {p.wall_time_s:.3f} s")
    return [_recorded(result, args, frames, data.stack.meta)]


def _invert_wideangle(args: argparse.Namespace, data: Any) -> list:
    from dataclasses import replace

    from .core import wideangle
    from .core.data import DiffractionStack, ShotSet
    from .core.progress import run_to_end

    data = getattr(data, "stack", data)
    if not isinstance(data, ShotSet | DiffractionStack):
        raise CdinnError(f"{data.meta.source}: holds no images for the wideangle mode")
    method = args.method or "nn"
    if method not in wideangle.METHODS:
        raise CdinnError(f"invert: method '{method}' is not one of {', '.join(wideangle.METHODS)}")
    _warn_unused(args, "wideangle", method)
    if isinstance(data, ShotSet):
        if args.amplitudes:
            raise CdinnError(
                f"{data.meta.source}: holds shots on the log scale ({data.scaling}); "
                "--amplitudes is for files of sqrt(I)"
            )
        images = data.images if data.images.ndim == 3 else data.images[None]
        frames = parse_frames(args.frames, len(images))
        data = replace(data, images=images[frames])
    else:
        frames = parse_frames(args.frames, data.n_frames)
        data = data.subset(frames)
        if args.amplitudes:
            _squared(data)
    data = _numbered(data, frames)  # refusals name shots by their frame in the file(s)
    results = []  # each printed as soon as it is found: a fit may take hours after the network
    if method in ("nn", "refine"):
        network = run_to_end(wideangle.network_steps(data, args.model, device=args.device))
        results.append(_shown(network, args, frames, data.meta))
    recipe = wideangle.FitRecipe(evaluations=args.iterations or wideangle.FitRecipe.evaluations)
    shots = wideangle.unsure_shots(network) if method == "refine" and args.unsure_only else None
    if shots is not None and not len(shots):
        print(f"no unsure shots: at least {wideangle.UNSURE_BELOW} of 8 flips agree on each")
    elif method in ("fit", "refine"):
        start = network if method == "refine" else None
        finished: list = []  # (shot, its result), filled as each shot's fit ends
        steps = wideangle.fit_steps(data, recipe, start=start, shots=shots, finished=finished)
        try:
            fitted = _fit_reporting_progress(steps, finished, 1 if start else recipe.starts)
        except KeyboardInterrupt:  # keep what is done: fits take about a minute per shot
            _write_partial(args, results, finished, frames, data.meta)
            raise
        results.append(_shown(fitted, args, frames, data.meta))
    return results


def _shown(result: Any, args: argparse.Namespace, frames: np.ndarray, meta: Any) -> Any:
    """``result`` recorded (``_with_frames``) and printed."""
    result = _with_frames(result, args, frames, meta)
    p = result.provenance
    print(f"{p.method}: {len(result.radii_nm)} shot(s) in {p.wall_time_s:.3f} s")
    _print_answers(result, np.asarray(p.parameters["file_frames"]), args.output)
    return result


PROGRESS_EVERY_S = 10.0  # the fit says how far it is at most this often (a shot takes ~1 min)


def _fit_reporting_progress(steps: Any, finished: list, starts: int) -> Any:
    """Run a fit (of ``starts`` starts per shot) to its end, saying on stderr how many shots
    are done: after the first, then at most every ``PROGRESS_EVERY_S``, and at the end."""
    began = last = time.perf_counter()
    reported = 0
    while True:
        try:
            done, total = next(steps)
        except StopIteration as stop:
            return stop.value
        now = time.perf_counter()
        due = not reported or now - last >= PROGRESS_EVERY_S or done == total
        if len(finished) > reported and due:
            reported, last = len(finished), now
            print(f"{PROG}: fitted {reported} of {total // starts} shot(s) in "
                  f"{now - began:.0f} s", file=sys.stderr)  # fmt: skip


def _with_frames(result: Any, args: argparse.Namespace, frames: np.ndarray, meta: Any) -> Any:
    """``result`` recorded (``_recorded``) with the file's frames its rows answer for: a fit
    of some shots (parameter ``shots``) answers for those shots' frames only."""
    numbers = result.provenance.parameters.get("shots", range(len(result.radii_nm)))
    return _recorded(result, args, frames[np.asarray(numbers, int)], meta)


def _write_partial(
    args: argparse.Namespace, results: list, finished: list, frames: np.ndarray, meta: Any
) -> None:
    """On Ctrl-C during a fit: write the answers finished so far (``results``: the network's,
    recorded; ``finished``: the shots fitted) and say on stderr that the file is partial and
    which shots it holds."""
    from .core import io, wideangle

    held = [
        f"the network's answers for {int(np.isfinite(r.radii_nm).sum())} of its "
        f"{len(r.radii_nm)} shot(s) (the others left out)"
        if not np.isfinite(r.radii_nm).all()
        else f"the network's answers for all {len(r.radii_nm)} shot(s)"
        for r in results
    ]
    if finished:
        fitted = wideangle.merged([result for _, result in finished])
        results = [*results, _with_frames(fitted, args, frames, meta)]
        held.append(f"the fit's for shot(s) {meta.frame_list([shot for shot, _ in finished])}")
    if not results:
        print(f"{PROG}: no shot was done; {args.output} not written", file=sys.stderr)
        return
    io.write_results(args.output, results)
    print(f"{PROG}: interrupted: wrote {args.output}, a partial result: {' and '.join(held)} "
          f"({len(finished)} shot(s) fitted)", file=sys.stderr)  # fmt: skip


def _limit_note(result: Any, n: int) -> str:
    """ " (at the model's limit: ...)" for a radius pinned at an end of the model's range,
    which is no measurement, else ""."""
    from .core import wideangle

    limits = result.provenance.parameters.get("radius_range_nm")
    note = wideangle.radius_limit_note(result.radii_nm[n], limits and tuple(limits))
    return f" ({note})" if note else ""


def _print_answers(result: Any, rows: np.ndarray, output: Path) -> None:
    """The first ten shots' answers, each named by its frame in the file(s)."""
    for n, (q, r) in enumerate(zip(result.quaternions[:10], result.radii_nm[:10], strict=True)):
        if not np.isfinite(r):
            print(f"  shot {rows[n]}: left out (no signal, or the same value everywhere)")
            continue
        agree = ""
        if result.flips_agreeing is not None:
            agree = f", {result.flips_agreeing[n]} of 8 flips agree"
        print(f"  shot {rows[n]}: radius {r:.1f} nm{_limit_note(result, n)}, quaternion "
              f"{np.round(q, 4).tolist()}{agree}")  # fmt: skip
    if len(result.radii_nm) > 10:
        print(f"  ... and {len(result.radii_nm) - 10} more shot(s): all are in {output}")


def parse_region(spec: str) -> tuple[float, float, float, float]:
    """ "y0:y1,x0:x1" in scan coordinates (object pixels) -> (y0, y1, x0, x1)."""
    try:
        (y0, y1), (x0, x1) = ([float(v) for v in part.split(":")] for part in spec.split(","))
    except ValueError:
        raise CdinnError(f"--region '{spec}': use y0:y1,x0:x1 (scan coordinates)") from None
    if not np.isfinite([y0, y1, x0, x1]).all():
        raise CdinnError(f"--region '{spec}': the bounds must be finite numbers")
    if y1 <= y0 or x1 <= x0:
        raise CdinnError(f"--region '{spec}': empty (need y0 < y1 and x0 < x1)")
    return y0, y1, x0, x1


# the options of one training mode that the other does not use
PTYCHO_TRAINING = ("scan", "reference", "region", "model", "seconds", "simulated", "dataset")
CDI_TRAINING = ("n_train", "n_val", "size", "width", "batch", "lr", "clip_norm", "minutes",
                "seed", "workdir", "out", "name", "log", "threads")  # fmt: skip


def _warn_unused_training(args: argparse.Namespace) -> None:
    """Name the given options that the other training mode uses, rather than drop them (train
    cdi --model base.safetensors trained from scratch without a word)."""
    other = CDI_TRAINING if args.mode == "ptycho" else PTYCHO_TRAINING
    given = _given(args, other, ["train", args.mode])
    if given:
        named = ", ".join("SCAN" if n == "scan" else "--" + n.replace("_", "-") for n in given)
        warnings.warn(f"ignored with train {args.mode}: {named}", stacklevel=2)


def cmd_train(args: argparse.Namespace) -> int:
    """cdi: train on simulated data; ptycho: fine-tune on a region of a scan's reconstruction."""
    _warn_unused_training(args)
    if args.mode == "ptycho":
        return _train_ptycho(args)
    from .core.nn.registry import weights_path
    from .core.nn.train_cdi import train

    if args.output:  # -o names the model file (checked up front), as for ptycho
        if args.out is not None or args.name is not None:
            raise CdinnError(
                "train cdi: -o names the model file, --out and --name its folder and name: "
                "give one or the other"
            )
        written = weights_path(args.output)
        args.out, args.name = written.parent, written.stem
    args.command = f"{PROG} train cdi"  # on the card: what trained the model
    weights = train(args)  # the default name timestamped (training.prepare_run)
    print(f"model written to {weights} (use it with: napari-cdinn invert FILE --model {weights})")
    return 0


def _teacher(results: list, path: Path) -> Any:
    """The reconstruction in a results file that retraining learns from: a stitched
    (ptychography) one, ePIE's where there are several (napari's Save Selected Layers may
    have put the network's beside it), said when there is a choice."""
    from .core.data import ObjectResult

    stitched = [r for r in results if isinstance(r, ObjectResult) and r.origin is not None]
    if not stitched:
        raise CdinnError(f"{path}: holds no stitched (ptychography) reconstruction")
    epie = [k for k, r in enumerate(stitched) if "ePIE" in r.provenance.method]
    number = (epie or [0])[0]
    chosen = stitched[number]
    if len(stitched) > 1:
        methods = ", ".join(r.provenance.method for r in stitched)
        print(
            f"{path}: holds {len(stitched)} stitched reconstructions ({methods}); "
            f"the teacher is the {chosen.provenance.method} one (number {number + 1} of them)",
            file=sys.stderr,
        )
    return chosen


def _train_ptycho(args: argparse.Namespace) -> int:
    from .core import io, ptycho
    from .core.data import PtychoScan
    from .core.nn.ptycho import FineTuning
    from .core.nn.registry import load_model, require_mode, user_dir
    from .core.progress import run_to_end
    from .core.retrieval.ptycho import ObjectGrid, check_span

    if not (args.scan and args.reference and args.region):
        raise CdinnError("train ptycho needs SCAN, --reference RECON.h5 and --region y0:y1,x0:x1")
    scan = io.read(args.scan, dataset=args.dataset)
    if not isinstance(scan, PtychoScan):
        raise CdinnError(f"{args.scan}: holds no scan positions")
    positions = np.asarray(scan.positions, float)
    check_span(positions, scan.stack.frame_shape, args.scan, overlap=False)  # before any array
    reference = _teacher(io.read_results(args.reference), args.reference)
    base = args.model or ptycho.default_model()
    model, card = load_model(base)
    require_mode(card, "ptycho", base)
    grid = ObjectGrid.around(positions, scan.stack.frame_shape)  # the network's and ePIE's
    region = ptycho.region_mask(grid, rectangle=parse_region(args.region))
    run = FineTuning(model)
    steps = ptycho.retrain_steps(
        scan, reference, region, run, args.seconds, args.device, simulated=args.simulated,
        reference_name=args.reference,
    )  # fmt: skip
    run_to_end(steps)
    # the card names the scan and the teacher's file as result files do: in full
    run.source["reference_file"] = str(Path(args.reference).expanduser().resolve())
    run.source["scan"] = str(Path(args.scan).expanduser().resolve())
    output = args.output or user_dir() / (
        f"{Path(args.scan).stem}_retrained_{time.strftime('%Y%m%d_%H%M%S')}.safetensors"
    )
    path = ptycho.save_fine_tuned(run, output, card, args.region)
    last = run.history[-1]
    print(
        f"fine-tuned on {run.source['positions']} positions, {last['epoch']} epochs in "
        f"{last['seconds']:.1f} s, best validation loss {run.best_validation:.4f}"
    )
    print(f"model written to {path} (use it with: napari-cdinn invert SCAN --model {path})")
    return 0


POSITIVE = _at_least(1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Invert coherent X-ray diffraction data with neural networks and classic "
        "iterative phase retrieval.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="show what a file holds and which reader read it")
    info.add_argument("file", type=Path)
    info.add_argument("--dataset", help="HDF5 dataset path or NPZ array name to read")
    info.add_argument("-o", "--output", type=Path, help="also write the summary as JSON")
    info.set_defaults(func=cmd_info)

    view = sub.add_parser("view", help="open napari with the plugin's docks (and FILE)")
    view.add_argument("file", type=Path, nargs="?")
    view.add_argument("--dataset", help="HDF5 dataset path or NPZ array name to read")
    view.add_argument("--screenshot", type=Path, help="save a screenshot of the window and quit")
    view.set_defaults(func=cmd_view)

    invert = sub.add_parser(
        "invert", help="invert diffraction data (modes: cdi, ptycho, wideangle)"
    )
    invert.add_argument(
        "input", type=Path, nargs="+", help="a file, a folder, or several PNG/TIFF frame files"
    )
    invert.add_argument("-o", "--output", type=Path, required=True)
    invert.add_argument("--mode", choices=MODES, help="default: from the file's content")
    invert.add_argument(
        "--method",
        help="cdi: nn (default), iterative, refine; ptycho: nn (default), epie, refine (ePIE "
        "from the network's image); wideangle: nn (default), fit, refine",
    )
    invert.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    invert.add_argument(
        "--model", type=Path, help="a model file (.safetensors) instead of the bundled one"
    )
    invert.add_argument(
        "--iterations",
        type=POSITIVE,
        help="cdi iterative: ER/HIO iterations in all (620), refine: RAAR/ER iterations (50); "
        "ptycho epie: epochs (100), refine: epochs "
        "(10); wideangle fit: simulations per start (150)",
    )
    invert.add_argument("--frames", help="frames/positions: N, START:STOP[:STEP] or N,M,...")
    invert.add_argument("--dataset", help="HDF5 dataset path or NPZ array name to read")
    invert.add_argument("--amplitudes", action="store_true", help="the file holds sqrt(I), not I")
    invert.add_argument(
        "--unsure-only",
        action="store_true",
        help="wideangle refine: only the shots where fewer than 6 of the network's 8 flips agree",
    )
    invert.set_defaults(func=cmd_invert)

    simulate = sub.add_parser(
        "simulate", help=f"simulate data with known truth (modes: {', '.join(SIMULATE_MODES)})"
    )
    simulate.add_argument("mode", choices=MODES)
    simulate.add_argument(
        "-n", type=int, default=64, help="patterns (cdi, wideangle) or at most positions (ptycho)"
    )
    simulate.add_argument("-o", "--output", type=Path, required=True)
    simulate.add_argument("--seed", type=_at_least(0), default=0)
    simulate.add_argument(
        "--size",
        type=POSITIVE,
        help="pattern / frame size in pixels (cdi, ptycho: default 64; "
        "wideangle: its detector's 128)",
    )
    simulate.add_argument(
        "--photons",
        type=_at_least(1e-9, float, high=1e15),
        help="counts per pattern (Poisson; at most 1e15, where its noise is below float32's "
        "precision); default none: noiseless",
    )
    simulate.add_argument(
        "--object-size", type=POSITIVE, help="ptycho: object side (default: fits n)"
    )
    simulate.add_argument(
        "--step", type=_at_least(0.1, float), default=10.0, help="ptycho: scan step (pixels)"
    )
    simulate.add_argument("--scan", choices=("raster", "spiral"), default="raster")
    simulate.add_argument(
        "--every", type=POSITIVE, default=1, help="ptycho: keep every k-th position"
    )
    simulate.set_defaults(func=cmd_simulate)

    from .core.nn.train_options import add_cdi_arguments

    train = sub.add_parser(
        "train",
        help="cdi: train on simulated data; ptycho: fine-tune on a region of a reconstructed scan",
    )
    train.add_argument(
        "mode", choices=("cdi", "ptycho"),
        help="wideangle trains with training/train_wideangle.py (a GPU helps: README)",
    )  # fmt: skip
    train.add_argument("scan", type=Path, nargs="?", help="ptycho: the scan to learn from")
    add_cdi_arguments(train)
    few_shot = train.add_argument_group("ptycho fine-tuning")
    few_shot.add_argument("--reference", type=Path, help="results file with the reconstruction")
    few_shot.add_argument(
        "--region",
        help="y0:y1,x0:x1 in scan coordinates (object pixels); --region=-5:90,... if negative",
    )
    few_shot.add_argument(
        "-o",
        "--output",
        type=_model_file,
        help="model file to write (cdi: instead of --out/--name)",
    )
    few_shot.add_argument("--model", type=Path, help="start from this model (default: bundled)")
    few_shot.add_argument(
        "--seconds", type=_at_least(1, float), default=55.0, help="training time budget"
    )
    few_shot.add_argument(
        "--simulated",
        type=_at_least(0),
        default=3000,
        help="training pairs simulated from the reference and its probe, added to the region's "
        "(0: none); a probe unlike the pretraining's needs them, and some 3 minutes",
    )
    few_shot.add_argument("--dataset", help="HDF5 dataset path or NPZ array name to read")
    train.set_defaults(func=cmd_train)
    return parser


class _QuietWhenUnread:
    """stdout that falls silent once the reader of a pipe has gone (``invert ... | head``), so
    the work goes on and its file is still written."""

    def __init__(self, stream: Any) -> None:
        self.original = self.stream = stream

    def write(self, text: str) -> int:
        try:
            return self.stream.write(text)
        except BrokenPipeError:
            self._silence()
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except BrokenPipeError:
            self._silence()

    def _silence(self) -> None:
        # the real descriptor too, or the interpreter's last flush complains
        with contextlib.suppress(AttributeError, OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stream.fileno())
        self.stream = open(os.devnull, "w")  # noqa: SIM115 (kept open while the process lives)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def _inputs(args: argparse.Namespace) -> list[Path]:
    """Every file the command reads, a folder's frame files too (its output must be none of
    them)."""
    named = [getattr(args, name, None) for name in ("input", "file", "scan", "reference", "model")]
    paths: list[Path] = []
    for value in named:
        if isinstance(value, list | tuple):
            paths.extend(Path(v) for v in value)
        elif value is not None:
            paths.append(Path(value))
    from .core.io.images import PNG_SUFFIXES, TIFF_SUFFIXES, frame_files

    frames = PNG_SUFFIXES + TIFF_SUFFIXES  # what a folder is read as
    return [p for path in paths for p in (frame_files(path, frames) if path.is_dir() else [path])]


def _output_suffixes(args: argparse.Namespace) -> tuple[str, ...]:
    """The endings ``-o`` may have: the kind of file the command writes."""
    from .core.io.results import HDF5_SUFFIXES

    return (".json",) if args.func is cmd_info else HDF5_SUFFIXES


def _check_output(args: argparse.Namespace) -> None:
    """``-o`` checked before the work, not after it: for ``train``, a model's weights
    (.safetensors added when missing) and card that replace no file but a model's, else
    ``-o`` itself."""
    if args.func is cmd_train:
        from .core.nn.registry import check_model_file

        if Path(args.output).is_dir():  # -o m1 would write m1.safetensors beside the folder
            raise CdinnError(f"{args.output}: is a folder; give a file name for the model")
        check_model_file(args.output, _inputs(args))
        return
    from .core.io.results import check_output

    kind = {cmd_simulate: "data", cmd_info: "summary"}.get(args.func, "results")
    check_output(args.output, _inputs(args), _output_suffixes(args), kind)


def _model_file(text: str) -> Path:
    """An argparse type for ``train -o``: a file name (``m1/`` names a folder)."""
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{text}: is a folder; give a file name for the model")
    return Path(text)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _print_warning
    sys.stdout = _QuietWhenUnread(sys.stdout)
    try:
        if getattr(args, "output", None) is not None:
            _check_output(args)
        return int(args.func(args) or 0)
    except CdinnError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    finally:
        if isinstance(sys.stdout, _QuietWhenUnread):
            sys.stdout.flush()  # a pipe's buffered text: its reader may be gone already
            sys.stdout = sys.stdout.original


if __name__ == "__main__":
    sys.exit(main())
