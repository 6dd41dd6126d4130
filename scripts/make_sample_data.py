"""Regenerate the files in sample_data/ with the project's own simulators (seeded, reproducible).

python scripts/make_sample_data.py
"""

import argparse
from pathlib import Path

from napari_cdinn.core.io.cxi_writer import write_cxi, write_shots
from napari_cdinn.core.simulate.cdi import simulate_cdi
from napari_cdinn.core.simulate.ptycho import simulate_ptycho
from napari_cdinn.core.simulate.wideangle import WAVELENGTH, simulate_intensities

OUT = Path(__file__).resolve().parents[1] / "sample_data"

if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()  # --help must not regenerate
    OUT.mkdir(exist_ok=True)
    write_cxi(OUT / "cdi_crystals.cxi", simulate_cdi(32, size=64, seed=1, photons=1e7))
    write_cxi(OUT / "ptycho_scan.cxi", simulate_ptycho(seed=2, photons=1e6))
    shots, orientations, radii, settings = simulate_intensities(8, seed=2026, photons=1e8)
    write_shots(OUT / "wideangle_shots.cxi", shots, orientations, radii, WAVELENGTH, settings)
    for path in sorted(OUT.glob("*.cxi")):
        print(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB")
