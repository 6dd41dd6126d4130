"""Lazy opening of a 2 GB HDF5 stack in napari: time, memory and frame stepping, against an eager load.

The requirement: "A 2 GB HDF5 stack opens in napari in under 2 s and uses under 500 MB of memory".

What it does:

1. Writes (once; cached in ``--workdir``, never inside the repository) a ~2 GiB NeXus-style HDF5
   stack, e.g. ``(8192, 256, 256) float32`` at ``/entry/data/data``, one frame per chunk, written
   block by block so writing never needs 2 GB of RAM.
2. Reads the file once through the page cache (unless ``--no-warm``), so the eager baseline reads
   from memory too: the comparison is the eager load at its fastest.
3. In fresh subprocesses (one per repeat, so memory is measured cleanly), each with a real napari
   viewer shown on the X display:

   * lazy:  ``viewer.open(path, plugin="napari-cdinn")`` until the layer exists, its data is a dask
     array, and the first frame has been rendered (``viewer.screenshot`` forces a draw); then steps
     through frames with ``viewer.dims.set_point(0, i)``, rendering each;
   * eager: ``h5py`` ``dataset[()]`` of the whole stack into memory, then ``viewer.add_image`` of
     that array and a render (the cheapest possible eager load; ``--eager-plugin`` also measures
     the plugin's own reader with ``lazy=False``).

   Memory is the peak resident set of the child while opening, minus its resident set just
   before (napari imported, viewer shown): the kernel's high-water mark (``VmHWM``) is reset through
   ``/proc/self/clear_refs`` right before the open, and ``ru_maxrss`` is reported as a cross-check.
4. Prints a table with the medians over ``--repeat`` runs, the lazy/eager ratios and PASS/FAIL
   against the targets (open < 2 s, memory < 500 MB); the exit code is 0 only when both pass.

Run (a display is needed; on a headless machine use xvfb)::

    xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/bench_lazy_open.py
    xvfb-run -a python benchmarks/bench_lazy_open.py --workdir /tmp/cdinn-bench --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATASET = "entry/data/data"
OPEN_LIMIT_S = 2.0
MEMORY_LIMIT_MB = 500.0
MB = 1e6  # memory figures are in decimal megabytes (the requirement's "500 MB")


# -- the test file ---------------------------------------------------------------------------------
def _patterns(count: int, size: int, seed: int = 0) -> np.ndarray:
    """Far-field intensities |FFT(object)|^2 of random compact crystals, zero frequency centred."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - size / 2
    out = np.empty((count, size, size), np.float32)
    for k in range(count):
        radius = rng.uniform(0.06, 0.14) * size
        angle = rng.uniform(0, np.pi)
        u = xx * np.cos(angle) + yy * np.sin(angle)
        v = -xx * np.sin(angle) + yy * np.cos(angle)
        support = (np.abs(u) < radius) & (np.abs(v) < radius * rng.uniform(0.5, 1.0))
        phase = 0.5 * rng.standard_normal() * (u / size) + 0.3 * (v / size) ** 2
        obj = support * np.exp(1j * 2 * np.pi * phase)
        far = np.fft.fftshift(np.fft.fft2(obj))
        out[k] = np.abs(far) ** 2
    return out / out.max(axis=(1, 2), keepdims=True) * 1e6


def make_stack(path: Path, frames: int, size: int, dtype: str, block: int = 256) -> None:
    """Write the test stack to ``path`` unless a complete one is there already.

    Frames are written ``block`` at a time (64 MiB for 256 x 256 float32), to a temporary name first
    and renamed when complete, so an interrupted run never leaves a half-written file in the cache.
    """
    import h5py

    if path.exists():
        try:
            with h5py.File(path, "r") as h5:
                dset = h5[DATASET]
                if (
                    h5.attrs.get("bench_complete")
                    and dset.shape == (frames, size, size)
                    and dset.dtype == np.dtype(dtype)
                ):
                    print(f"using cached {path} ({path.stat().st_size / 2**30:.2f} GiB)")
                    return
        except (OSError, KeyError):
            pass
        path.unlink()
    print(f"writing {path}: ({frames}, {size}, {size}) {dtype}, one frame per chunk ...")
    start = time.perf_counter()
    base = _patterns(32, size)
    rng = np.random.default_rng(1)
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w") as h5:
        entry = h5.create_group("entry")
        entry.attrs["NX_class"] = "NXentry"
        group = entry.create_group("data")
        group.attrs["NX_class"] = "NXdata"
        group.attrs["signal"] = "data"
        dset = group.create_dataset(
            "data", shape=(frames, size, size), dtype=dtype, chunks=(1, size, size)
        )
        for first in range(0, frames, block):
            n = min(block, frames - first)
            index = np.arange(first, first + n)
            scale = (0.2 + 0.8 * (1 + np.sin(index / 97.0)) / 2).astype(np.float32)
            frames_block = base[index % len(base)] * scale[:, None, None]
            frames_block += rng.exponential(2.0, frames_block.shape).astype(np.float32)
            if np.dtype(dtype).kind in "iu":
                frames_block = np.round(frames_block)
            dset[first : first + n] = frames_block.astype(dtype)
        h5.attrs["bench_complete"] = True
    os.replace(tmp, path)
    print(
        f"  wrote {path.stat().st_size / 2**30:.2f} GiB in {time.perf_counter() - start:.1f} s "
        f"(peak RSS of the writer {_rusage_mb():.0f} MB)"
    )


def warm_page_cache(path: Path) -> float:
    """Read the file once (64 MiB at a time) so both loads start from the same warm page cache."""
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(64 * 2**20):
            pass
    return time.perf_counter() - start


# -- memory ----------------------------------------------------------------------------------------
def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / MB
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rusage_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # kB on Linux


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Memory:
    """Resident memory before an operation and the peak increase during it."""

    def __init__(self) -> None:
        import gc

        gc.collect()
        self.reset = _reset_peak()
        self.rss0 = _status_mb("VmRSS")
        self.hwm0 = _status_mb("VmHWM")
        self.maxrss0 = _rusage_mb()

    def peak_increase(self) -> dict[str, float]:
        return {
            "rss_before_mb": self.rss0,
            # with the mark reset, VmHWM - RSS before is the peak increase; without the reset a
            # peak under the old mark would be hidden, so it is reported as such
            "peak_increase_mb": _status_mb("VmHWM") - (self.rss0 if self.reset else self.hwm0),
            "maxrss_increase_mb": _rusage_mb() - self.maxrss0,
            "rss_increase_mb": _status_mb("VmRSS") - self.rss0,
            "hwm_reset": self.reset,
        }


# -- child processes -------------------------------------------------------------------------------
def _viewer():
    """A shown napari viewer with every pending event processed; returns (viewer, process)."""
    from qtpy.QtWidgets import QApplication

    import napari

    viewer = napari.Viewer(title="bench_lazy_open", show=True)
    viewer.window._qt_window.resize(1200, 800)

    def process() -> None:
        for _ in range(3):
            QApplication.processEvents()

    process()
    viewer.screenshot(canvas_only=True, flash=False)  # the first GL draw, outside the timings
    process()
    return viewer, process


def _render(viewer, process) -> np.ndarray:
    """Process pending events and draw the canvas; returns the rendered RGBA image."""
    process()
    return viewer.screenshot(canvas_only=True, flash=False)


def _step(viewer, process, steps: list[int], shot: np.ndarray) -> dict:
    """Step through ``steps`` frames, each sliced (``set_point``) then drawn; times in ms."""
    slice_ms, step_ms = [], []
    changed = 0
    for i in steps:
        t0 = time.perf_counter()
        viewer.dims.set_point(0, i)  # napari slices synchronously: this reads the frame
        t1 = time.perf_counter()
        new = _render(viewer, process)
        step_ms.append((time.perf_counter() - t0) * 1e3)
        slice_ms.append((t1 - t0) * 1e3)
        changed += int(not np.array_equal(new, shot))
        shot = new
    if viewer.dims.point[0] != steps[-1]:
        raise SystemExit(f"the viewer is at frame {viewer.dims.point[0]}, not {steps[-1]}")
    return {"step_ms": step_ms, "slice_ms": slice_ms, "frames_changed": changed}


def child_lazy(path: Path, steps: list[int]) -> dict:
    import dask.array as da

    viewer, process = _viewer()
    memory = Memory()
    start = time.perf_counter()
    layers = viewer.open(str(path), plugin="napari-cdinn")
    t_layers = time.perf_counter() - start
    shot = _render(viewer, process)
    t_shown = time.perf_counter() - start
    opened = memory.peak_increase()
    heavy = sorted(m for m in ("torch", "scipy", "skimage") if m in sys.modules)
    image = next(layer for layer in layers if layer._type_string == "image")
    if not isinstance(image.data, da.Array):
        raise SystemExit(f"layer data is {type(image.data).__name__}, not a dask array")
    if float(np.ptp(shot[..., :3])) == 0:
        raise SystemExit("the rendered canvas is blank: the first frame was not displayed")

    step = _step(viewer, process, steps, shot)
    stepped = memory.peak_increase()
    from napari_cdinn._reader import read_layers

    t0 = time.perf_counter()
    read_layers(str(path))
    t_reader = time.perf_counter() - t0
    # the same open again: napari's and the plugin's one-time costs (importing dask.array and
    # scipy, napari's units registry on the first layer) are paid; what is left is per file
    t0 = time.perf_counter()
    viewer.open(str(path), plugin="napari-cdinn")
    _render(viewer, process)
    t_again = time.perf_counter() - t0
    result = {
        "layers": [layer.name for layer in layers],
        "data": f"{type(image.data).__module__}.{type(image.data).__name__} "
        f"{image.data.shape} {image.data.dtype} chunks {image.data.chunksize}",
        "contrast_limits": list(image.contrast_limits),
        "heavy_modules": heavy,
        "t_layers_s": t_layers,
        "t_open_s": t_shown,
        **opened,
        "t_reader_s": t_reader,
        "t_again_s": t_again,
        **step,
        "peak_increase_after_steps_mb": stepped["peak_increase_mb"],
    }
    viewer.close()
    return result


def child_eager(path: Path, steps: list[int]) -> dict:
    import h5py

    viewer, process = _viewer()
    memory = Memory()
    start = time.perf_counter()
    with h5py.File(path, "r") as h5:
        array = h5[DATASET][()]
    t_read = time.perf_counter() - start
    read = memory.peak_increase()
    viewer.add_image(array, name="eager", colormap="magma")
    shot = _render(viewer, process)
    t_shown = time.perf_counter() - start
    opened = memory.peak_increase()
    result = {
        "how": f"h5py dataset[()] -> numpy {array.shape} {array.dtype}, then viewer.add_image",
        "t_read_s": t_read,
        "read_peak_increase_mb": read["peak_increase_mb"],
        "t_open_s": t_shown,
        **opened,
        **_step(viewer, process, steps, shot),
    }
    viewer.close()
    return result


def child_eager_plugin(path: Path) -> dict:
    from napari.layers import Layer

    from napari_cdinn._layers import layers_for_dataset
    from napari_cdinn.core import io

    viewer, process = _viewer()
    memory = Memory()
    start = time.perf_counter()
    for data, kwargs, kind in layers_for_dataset(io.read(path, lazy=False)):
        viewer.add_layer(Layer.create(data, kwargs, kind))
    _render(viewer, process)
    result = {
        "how": "napari-cdinn reader with lazy=False (float32 + log display in memory)",
        "t_open_s": time.perf_counter() - start,
        **memory.peak_increase(),
    }
    viewer.close()
    return result


def run_child(mode: str, path: Path, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--path", str(path)]
    command += ["--steps", ",".join(map(str, args.step_frames))]
    env = {**os.environ, "NAPARI_CONFIG": str(args.workdir / "napari_settings.yaml")}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"the {mode} child failed (exit code {proc.returncode})")
    return json.loads(lines[-1].removeprefix("RESULT "))


# -- the report ------------------------------------------------------------------------------------
def _median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def _spread(runs: list[dict], key: str, scale: float = 1.0, fmt: str = ".2f") -> str:
    values = [run[key] * scale for run in runs]
    text = f"{statistics.median(values):{fmt}}"
    if len(values) > 1:
        text += f"  ({min(values):{fmt}} .. {max(values):{fmt}})"
    return text


def _load() -> str:
    """The 1-minute load average: the machine is shared, so say how busy it was."""
    return f"{os.getloadavg()[0]:.1f}"


def _ms(runs: list[dict], key: str) -> str:
    values = [ms for run in runs for ms in run[key]]
    return f"median {statistics.median(values):.1f}, max {max(values):.1f}"


def report(args, path: Path, lazy: list[dict], eager: list[dict], plugin: list[dict]) -> bool:
    size_gb = path.stat().st_size / 1e9
    open_s = _median(lazy, "t_open_s")
    memory_mb = max(run["peak_increase_mb"] for run in lazy)
    eager_s = _median(eager, "t_open_s")
    eager_mb = _median(eager, "peak_increase_mb")
    lazy_step = statistics.median(ms for run in lazy for ms in run["step_ms"])
    eager_step = statistics.median(ms for run in eager for ms in run["step_ms"])
    ok_time = open_s < OPEN_LIMIT_S
    ok_memory = memory_mb < MEMORY_LIMIT_MB
    warm = "not warmed" if args.no_warm else "warmed before the runs (both loads read from memory)"

    print()
    print(f"file          {path}  ({size_gb:.2f} GB = {size_gb / 1.073741824:.2f} GiB)")
    print(f"lazy layer    {lazy[0]['data']}")
    print(f"              layers {lazy[0]['layers']}, contrast {lazy[0]['contrast_limits']}")
    print(f"              modules loaded after the open: {lazy[0]['heavy_modules']}")
    print(f"eager         {eager[0]['how']}")
    print(f"page cache    {warm}")
    print(f"runs          {len(lazy)} lazy + {len(eager)} eager, each in a fresh process")
    print(f"baseline RSS  {_median(lazy, 'rss_before_mb'):.0f} MB (napari imported, viewer shown)")
    if not all(run["hwm_reset"] for run in lazy + eager):
        print("              (could not reset VmHWM: memory is the rise of the old peak mark)")
    print(f"load average  {args.load_before} before, {_load()} after (cores: {os.cpu_count()})")
    print("figures       median (min .. max) over the runs")
    print()
    rows = [
        ("measure", "lazy (napari-cdinn)", "eager (in memory)", "lazy/eager"),
        (
            "open until first frame shown (s)",
            _spread(lazy, "t_open_s"),
            _spread(eager, "t_open_s"),
            f"{open_s / eager_s:.3f}",
        ),
        ("  viewer.open returned (s)", _spread(lazy, "t_layers_s"), "", ""),
        ("  h5py dataset[()] alone (s)", "", _spread(eager, "t_read_s"), ""),
        ("  plugin reader alone, warm (s)", _spread(lazy, "t_reader_s", fmt=".3f"), "", ""),
        ("  second open, same viewer (s)", _spread(lazy, "t_again_s"), "", ""),
        (
            "peak RSS increase, open (MB)",
            _spread(lazy, "peak_increase_mb", fmt=".0f"),
            _spread(eager, "peak_increase_mb", fmt=".0f"),
            f"{memory_mb / eager_mb:.4f}",
        ),
        (
            "ru_maxrss increase, open (MB)",
            _spread(lazy, "maxrss_increase_mb", fmt=".0f"),
            _spread(eager, "maxrss_increase_mb", fmt=".0f"),
            "",
        ),
        (
            f"peak RSS increase + {len(args.step_frames)} steps (MB)",
            _spread(lazy, "peak_increase_after_steps_mb", fmt=".0f"),
            "",
            "",
        ),
        (
            "frame step: set_point + render (ms)",
            _ms(lazy, "step_ms"),
            _ms(eager, "step_ms"),
            f"{lazy_step / eager_step:.2f}",
        ),
        ("  of which set_point/slicing (ms)", _ms(lazy, "slice_ms"), _ms(eager, "slice_ms"), ""),
    ]
    if plugin:
        rows.append(
            (
                "plugin reader lazy=False (s, MB)",
                "",
                f"{_median(plugin, 't_open_s'):.2f}, {_median(plugin, 'peak_increase_mb'):.0f}",
                "",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for n, row in enumerate(rows):
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
        if n == 0:
            print("  ".join("-" * width for width in widths))
    changed = min(run["frames_changed"] for run in lazy)
    print(
        f"\nframes stepped: {args.step_frames}; the rendered image changed on "
        f"{changed}/{len(args.step_frames)} steps"
    )
    print()
    print(f"open time  {open_s:.2f} s  < {OPEN_LIMIT_S:g} s    {'PASS' if ok_time else 'FAIL'}")
    print(
        f"memory     {memory_mb:.0f} MB  < {MEMORY_LIMIT_MB:g} MB  {'PASS' if ok_memory else 'FAIL'}"
        "   (largest of the lazy runs)"
    )
    print(
        f"lazy opens {eager_s / open_s:.1f}x faster than the eager load and uses "
        f"{eager_mb / max(memory_mb, 1):.0f}x less memory"
    )
    return ok_time and ok_memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "napari-cdinn-bench",
        help="where the test stack is written and cached (default: %(default)s)",
    )
    parser.add_argument(
        "--dtype", default="float32", choices=("float32", "uint16", "uint32", "int32")
    )
    parser.add_argument("--size", type=int, default=256, help="frame side in pixels")
    parser.add_argument(
        "--gib", type=float, default=2.0, help="stack size in GiB (frames = this / frame bytes)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="fresh processes per measurement")
    parser.add_argument("--no-warm", action="store_true", help="do not pre-read the file")
    parser.add_argument(
        "--eager-plugin",
        action="store_true",
        help="also time the plugin's reader with lazy=False (needs ~3x the stack in RAM)",
    )
    parser.add_argument(
        "--child", choices=("lazy", "eager", "eager-plugin"), help=argparse.SUPPRESS
    )
    parser.add_argument("--path", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--steps", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        steps = [int(s) for s in args.steps.split(",")]
        if args.child == "lazy":
            result = child_lazy(args.path, steps)
        elif args.child == "eager":
            result = child_eager(args.path, steps)
        else:
            result = child_eager_plugin(args.path)
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        print(
            "no display: run under xvfb, e.g.\n"
            '  xvfb-run -a -s "-screen 0 1400x900x24" python benchmarks/bench_lazy_open.py',
            file=sys.stderr,
        )
        return 2
    args.workdir = args.workdir.resolve()
    if args.workdir == REPO or REPO in args.workdir.parents:
        print(f"--workdir {args.workdir} is inside the repository; use /tmp", file=sys.stderr)
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    itemsize = np.dtype(args.dtype).itemsize
    frames = round(args.gib * 2**30 / (args.size * args.size * itemsize))
    path = args.workdir / f"stack_{frames}x{args.size}x{args.size}_{args.dtype}.h5"
    make_stack(path, frames, args.size, args.dtype)
    args.step_frames = [1, 2, 3, 4, 5, frames // 4, frames // 2, 3 * frames // 4, frames - 1, 7]
    if not args.no_warm:
        print(f"warming the page cache: read the file in {warm_page_cache(path):.1f} s")

    args.load_before = _load()
    lazy, eager, plugin = [], [], []
    for n in range(args.repeat):
        print(f"run {n + 1}/{args.repeat}: lazy ...", end="", flush=True)
        lazy.append(run_child("lazy", path, args))
        print(f" {lazy[-1]['t_open_s']:.2f} s; eager ...", end="", flush=True)
        eager.append(run_child("eager", path, args))
        print(f" {eager[-1]['t_open_s']:.2f} s", flush=True)
    if args.eager_plugin:
        print("plugin reader with lazy=False ...", flush=True)
        plugin.append(run_child("eager-plugin", path, args))
    return 0 if report(args, path, lazy, eager, plugin) else 1


if __name__ == "__main__":
    sys.exit(main())
