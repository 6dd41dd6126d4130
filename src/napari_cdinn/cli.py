"""The command-line face: ``napari-cdinn info|view|invert|simulate|train``, over the same core.

Exit code 0 only on success; otherwise one clear line on stderr naming the file and the problem.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from . import __version__
from .core.errors import CdinnError

PROG = "napari-cdinn"
MODES = ("cdi", "ptycho", "wideangle")
SIMULATE_MODES = ("cdi", "ptycho")  # modes whose simulator exists so far


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
        from .core.io.results import atomic_path

        with atomic_path(args.output) as tmp:
            tmp.write_text(json.dumps(summary, indent=2, default=str))
        print(f"summary written to {args.output}")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    """Open napari with the plugin's dock and, if given, the file."""
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
    if args.mode == "cdi":
        from .core.simulate.cdi import simulate_cdi

        data = simulate_cdi(args.n, size=args.size, seed=args.seed, photons=args.photons)
    else:
        from .core.simulate.ptycho import simulate_ptycho

        # an object just large enough for n raster positions, unless a size is given
        side = args.object_size or int(args.size + args.step * (args.n * args.every) ** 0.5 + 2)
        data = simulate_ptycho(
            (side, side), frame=args.size, step=args.step, scan=args.scan,
            photons=args.photons, every=args.every, seed=args.seed,
        )  # fmt: skip
        data = data.subset(slice(0, args.n))
    write_cxi(args.output, data)
    print(f"wrote {args.output}")
    return 0


def cmd_not_yet(args: argparse.Namespace) -> int:
    raise CdinnError(
        f"{args.command}: no mode is available yet in version {__version__} "
        f"(planned: {', '.join(MODES)}); nothing was written"
    )


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

    view = sub.add_parser("view", help="open napari with the plugin's dock (and FILE)")
    view.add_argument("file", type=Path, nargs="?")
    view.add_argument("--dataset", help="HDF5 dataset path or NPZ array name to read")
    view.add_argument("--screenshot", type=Path, help="save a screenshot of the window and quit")
    view.set_defaults(func=cmd_view)

    invert = sub.add_parser("invert", help="invert diffraction data (modes: none yet)")
    invert.add_argument("input", type=Path)
    invert.add_argument("-o", "--output", type=Path, required=True)
    invert.add_argument("--mode", choices=MODES)
    invert.add_argument("--method")
    invert.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    invert.set_defaults(func=cmd_not_yet)

    simulate = sub.add_parser(
        "simulate", help=f"simulate data with known truth (modes: {', '.join(SIMULATE_MODES)})"
    )
    simulate.add_argument("mode", choices=MODES)
    simulate.add_argument("-n", type=int, default=64, help="patterns (cdi) or at most positions")
    simulate.add_argument("-o", "--output", type=Path, required=True)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--size", type=int, default=64, help="pattern / frame size in pixels")
    simulate.add_argument(
        "--photons", type=float, help="counts per pattern (Poisson); default none"
    )
    simulate.add_argument("--object-size", type=int, help="ptycho: object side (default: fits n)")
    simulate.add_argument("--step", type=float, default=10.0, help="ptycho: scan step (pixels)")
    simulate.add_argument("--scan", choices=("raster", "spiral"), default="raster")
    simulate.add_argument("--every", type=int, default=1, help="ptycho: keep every k-th position")
    simulate.set_defaults(func=cmd_simulate)

    train = sub.add_parser("train", help="train a network (modes: none yet)")
    train.add_argument("mode", choices=MODES)
    train.set_defaults(func=cmd_not_yet)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _print_warning
    try:
        return int(args.func(args) or 0)
    except CdinnError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
