"""Our MSFT simulator against pyMSFT (the Rostock group's reference code, PyPI ``pymsft``,
CC-BY-4.0) on the same icosahedra and the same detector points, side by side.

pyMSFT's wheel asks for Python >= 3.12; its code runs on 3.11 unpacked from the wheel, with
scipy < 1.17 and pyfftw, in a venv of its own (it is not a dependency of this project):

    python -m venv .peer-pymsft
    .peer-pymsft/bin/pip install numpy "scipy<1.17" pyfftw tqdm
    .peer-pymsft/bin/pip download --no-deps --python-version 3.12 --only-binary=:all: pymsft \\
        -d .peer-pymsft/wheel
    python -m zipfile -e .peer-pymsft/wheel/pymsft-*.whl .peer-pymsft/src
    python benchmarks/peer_pymsft.py --python .peer-pymsft/bin/python --src .peer-pymsft/src

pyMSFT voxelises the cluster (binary voxels of ``--voxel`` nm, refractive index n - 1 =
-delta + i beta inside) and propagates it slice by slice with FFTs; its detector grid is the
FFT's, so ours is evaluated at exactly those k_perp points (``Detector(axis=...)``), inside our
detector's square.  Printed: the rms of log10 intensity (each image over its own maximum,
floored 5 decades down) and the time per pattern of each.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_cdinn.core import icosahedral
from napari_cdinn.core.simulate import wideangle as simulate

CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[2])
import os
os.environ["pyMSFT_FORCE_CPU"] = "True"
from pyMSFT.simulation.simulation import MSFTSimulation
job = json.load(open(sys.argv[1]))
normals, offsets = np.array(job["normals"]), np.array(job["offsets"])
n, step = job["npix_real"], job["voxel"]
axis = (np.arange(n) - (n - 1) / 2) * step
x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")  # pyMSFT: axes (x, y, z), beam along z
inside = np.ones(x.shape, bool)
for (nx, ny, nz), d in zip(normals, offsets):
    inside &= nx * x + ny * y + nz * z <= d
index = complex(-job["delta"], job["beta"]) * inside
sim = MSFTSimulation(npix_fft=job["npix_fft"], npix_real=n, box_size=(n - 1) * step,
                     k=job["k0"], pool_size=1, fftw_plan="FFTW_ESTIMATE")
start = time.perf_counter()
image = sim.get_diffraction_image(index)
seconds = time.perf_counter() - start
q_x, q_y = (np.asarray(a) for a in sim.get_qaxes()[:2])
np.savez(sys.argv[3], image=np.asarray(image), q_axis=q_x[:, 0], seconds=seconds)
"""


def run_pymsft(python: str, src: str, radius: float, q: np.ndarray, voxel: float, work: Path):
    """pyMSFT's pattern of the icosahedron on its own grid: (image (rows x, columns y), q axis,
    seconds)."""
    detector = simulate.Detector()
    material = simulate.Material()
    k0 = detector.k0
    dk = detector.k_axis[1] - detector.k_axis[0]
    npix_fft = round(2 * np.pi / (dk * voxel))  # the FFT grid's step near ours
    normals, offsets = simulate.turned_planes(radius, q)
    npix_real = int(np.ceil(2 * radius / voxel)) + 3
    npix_real += (npix_real - npix_fft) % 2  # pyMSFT pads symmetrically: same parity
    job = {
        "normals": normals.tolist(), "offsets": offsets.tolist(), "voxel": voxel,
        "npix_real": npix_real, "npix_fft": npix_fft, "k0": k0,
        "delta": material.refractive_decrement, "beta": 1 / (2 * material.absorption_length * k0),
    }  # fmt: skip
    (work / "job.json").write_text(json.dumps(job))
    (work / "child.py").write_text(CHILD)
    out = work / "out.npz"
    subprocess.run([python, work / "child.py", work / "job.json", src, out], check=True)
    with np.load(out) as data:
        return data["image"], data["q_axis"], float(data["seconds"])


def compare(pymsft_image: np.ndarray, q_axis: np.ndarray, radius: float, q: np.ndarray):
    """rms of log10 intensity between pyMSFT and ours at pyMSFT's points inside our detector."""
    edge = np.abs(simulate.Detector().k_axis).max()
    keep = np.abs(q_axis) <= edge
    axis = q_axis[keep]
    simulator = simulate.Simulator(simulate.Detector(axis=tuple(axis)))
    simulator.intensity(radius, q)  # compiled and its interpolation weights made: then timed
    start = time.perf_counter()
    ours = simulator.intensity(radius, q)
    seconds = time.perf_counter() - start
    theirs = pymsft_image[np.ix_(keep, keep)].T  # pyMSFT rows are x: ours are y
    a, b = (np.log10(np.maximum(x / x.max(), 1e-5)) for x in (ours, theirs))
    return float(np.sqrt(np.mean((a - b) ** 2))), seconds, len(axis)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--python", default=".peer-pymsft/bin/python", help="pyMSFT's venv")
    parser.add_argument("--src", default=".peer-pymsft/src", help="the unpacked pymsft wheel")
    parser.add_argument("--voxel", type=float, default=1.0, help="pyMSFT's voxel size (nm)")
    args = parser.parse_args()
    if not Path(args.python).exists():
        raise SystemExit(f"no pyMSFT venv at {args.python}: see this script's docstring")
    rng = np.random.default_rng(4_444)
    with tempfile.TemporaryDirectory() as folder:
        for radius in (30.0, 90.0, 160.0):
            q = icosahedral.random_orientations(1, rng)[0]
            image, q_axis, t_theirs = run_pymsft(
                args.python, args.src, radius, q, args.voxel, Path(folder)
            )
            rms, t_ours, n = compare(image, q_axis, radius, q)
            print(f"radius {radius:5.0f} nm: rms log10 ours vs pyMSFT {rms:.4f} over {n} x {n} "
                  f"points; pyMSFT {t_theirs:.2f} s ({args.voxel:g} nm voxels), ours "
                  f"{t_ours * 1e3:.0f} ms: {t_theirs / t_ours:.0f} x")  # fmt: skip


if __name__ == "__main__":
    main()
