"""Ptychography, the calls both faces use: ePIE, the network (stitched), few-shot retraining.

Each long call is a generator yielding ``(done, total)`` progress and returning its result, so the
GUI runs it in a worker (progress, cancel by closing it) and the CLI runs it to the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator

import numpy as np

from .data import ObjectResult, Provenance, PtychoScan
from .retrieval.ptycho import EpieRecipe, run_epie

METHODS = ("nn", "epie")
LABELS = {"nn": "NN", "epie": "ePIE"}
Steps = Generator[tuple[int, int], None, ObjectResult]


def epie_steps(
    scan: PtychoScan,
    recipe: EpieRecipe | None = None,
    device: str = "auto",
    preview: Callable[[np.ndarray, np.ndarray, int], None] | None = None,
) -> Steps:
    """ePIE (mini-batch rPIE with probe update) on the whole scan; see ``retrieval.ptycho``."""
    recipe = recipe or EpieRecipe()
    start = time.perf_counter()
    obj, probe, grid, errors = yield from run_epie(scan, recipe, device, preview)
    provenance = Provenance(
        method=LABELS["epie"],
        parameters={**recipe.as_dict(), "fourier_error": [round(e, 6) for e in errors]},
        wall_time_s=time.perf_counter() - start,
        source=scan.meta.source,
    )
    return ObjectResult(obj, provenance, probe=probe, origin=grid.origin)


def on_grid(image: np.ndarray, origin: tuple[float, float], shape: tuple[int, int]) -> np.ndarray:
    """An image indexed in scan coordinates (pixel [0, 0] at scan coordinate (0, 0), as a
    simulation's true object) cut or zero-padded to a result grid with an integer ``origin``."""
    out = np.zeros(shape, image.dtype)
    spans = []
    for start, have, room in zip((round(v) for v in origin), image.shape, shape, strict=True):
        source, target = max(start, 0), max(-start, 0)
        n = max(0, min(have - source, room - target))
        spans.append((slice(source, source + n), slice(target, target + n)))
    (src_y, dst_y), (src_x, dst_x) = spans
    out[dst_y, dst_x] = image[src_y, src_x]
    return out


def scanned_region(
    positions: np.ndarray, frame: int, origin: tuple[float, float], shape: tuple[int, int]
) -> np.ndarray:
    """Pixels of a result grid inside the central half of some frame: where the scan measured
    the object well (the probe's outskirts see too little to judge a reconstruction)."""
    region = np.zeros(shape, bool)
    corners = np.round(np.asarray(positions) - np.asarray(origin)).astype(int) + frame // 4
    for y, x in corners:
        region[max(y, 0) : y + frame // 2, max(x, 0) : x + frame // 2] = True
    return region
