"""Ptychography, the calls both faces use: ePIE, the network (stitched), ePIE started from the
network's image (refine), few-shot retraining.

Each long call is a generator yielding ``(done, total)`` progress and returning its result, so the
GUI runs it in a worker (progress, cancel by closing it) and the CLI runs it to the end.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Generator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import maximum_filter
from skimage.draw import polygon2mask

from . import metrics
from .data import ObjectResult, Provenance, PtychoScan
from .device import resolve_device
from .errors import InputError, InputWarning
from .io.checks import check_probe
from .nn import registry
from .nn.cdi import inference_model
from .nn.ptycho import (
    STITCH_FLOOR,
    FineTuning,
    fine_tune,
    levelled,
    normalised,
    patch_offset,
    predict_patches,
    probe_weight,
    sample_patches,
    stitch,
)
from .nn.ptycho_net import binned, binning, intensity_scale, preprocess
from .nn.registry import load_model, save_model
from .nn.training import machine
from .retrieval.ptycho import EpieRecipe, ObjectGrid, checked_scan, run_epie
from .retrieval.ptycho import scanned_region as scanned_region  # for benchmarks and tests
from .simulate.cdi import far_field_intensity

METHODS = ("nn", "epie", "refine")
LABELS = {"nn": "NN", "epie": "ePIE", "refine": "NN+ePIE"}
REFINE_EPOCHS = 10  # from the network's image, ePIE's 100 epochs' quality (README, benchmark)
Steps = Generator[tuple[int, int], None, ObjectResult]


def epie_steps(
    scan: PtychoScan,
    recipe: EpieRecipe | None = None,
    device: str = "auto",
    preview: Callable[[np.ndarray, np.ndarray, int], None] | None = None,
    start: np.ndarray | None = None,
) -> Steps:
    """ePIE (mini-batch rPIE with probe update) on the whole scan, from a flat object or from
    ``start`` (on the scan's grid); see ``retrieval.ptycho``."""
    recipe = recipe or EpieRecipe()
    began = time.perf_counter()
    obj, probe, grid, errors = yield from run_epie(scan, recipe, device, preview, start)
    provenance = Provenance(
        method=LABELS["epie"],
        parameters={**recipe.as_dict(), "fourier_error": [round(e, 6) for e in errors]},
        wall_time_s=time.perf_counter() - began,
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


def default_model() -> Path:
    return registry.default_model("ptycho")


@dataclass
class NetworkInput:
    """A scan as the network sees it: binned patterns, their scale, and where patches lie."""

    patterns: np.ndarray  # (N, size, size) binned intensities, masked pixels zero
    scale: float  # the scan's mean pixel intensity (core.nn.ptycho_net.intensity_scale)
    corners: np.ndarray  # (N, 2) scan coordinates of each predicted patch's top-left corner
    weight: np.ndarray  # (patch, patch) probe-intensity weights for the loss
    stitch_weight: np.ndarray  # the same for stitching, with a lower floor
    # the probe intensity under the patch (peak 1), for levelling; None without a probe
    lit: np.ndarray | None
    # (N,) each frame's counts over the detector pixels every frame measures, for levelling
    # (with a mask per frame, counts over each frame's own pixels would not compare)
    counts: np.ndarray
    grid: ObjectGrid  # the ePIE grid of this scan, which stitched results share


def network_input(
    scan: PtychoScan,
    size: int,
    patch: int | None = None,
    probe: np.ndarray | None = None,
    probe_source: object = None,
) -> NetworkInput:
    """Bin the scan's patterns for a network taking ``size`` x ``size`` patterns and giving
    ``patch`` x ``patch`` patches (default ``size``); ``probe`` (default the scan's) weighs
    them, refused, naming ``probe_source`` (default the scan), when it is of another size."""
    intensities, positions, mask, measured = checked_scan(scan, overlap=False)
    frame = intensities.shape[-1]
    if intensities.shape[-2] != frame:
        raise InputError(
            scan.meta.source,
            f"patterns are {intensities.shape[-2:]}; ptychography needs square ones",
        )
    factor = binning(frame, size, scan.meta.source)
    if mask is not None:
        intensities = np.where(mask, intensities, 0)
    patterns = binned(intensities, factor)
    # levelling compares frames' counts: over the pixels all of them measure, if those hold
    # most of what a frame measures (masks that differ everywhere leave too few to compare)
    counts = measured  # one mask for all frames (or none): every measured pixel is shared
    if mask is not None and np.ndim(mask) == 3:  # no copy of the frames: einsum sums in place
        shared = measured_everywhere(np.asarray(mask)).astype(intensities.dtype)
        counts = np.einsum("nij,ij->n", intensities, shared).astype(np.float64)
    comparable = float(counts.sum()) >= 0.5 * float(measured.sum())
    if not comparable:
        warnings.warn(
            InputWarning(
                f"{scan.meta.source}: the detector pixels every frame measures hold "
                f"{100 * counts.sum() / max(measured.sum(), 1e-30):.0f} % of the counts (masks "
                "that differ from frame to frame): too few to compare frames by, so the "
                "network's patches are not levelled to their counts"
            ),
            stacklevel=2,
        )
    grid = ObjectGrid.around(positions, (frame, frame))  # ePIE's, whichever frames are used
    blank = patterns.sum(axis=(-2, -1)) <= 0  # wholly masked (a NaN frame) or no counts
    if blank.any():  # its patch would be a guess from nothing, stitched among the others
        warnings.warn(
            InputWarning(
                f"{scan.meta.source}: {int(blank.sum())} frame(s) hold no measured counts "
                f"(wholly masked or empty; frames {scan.meta.frame_list(np.flatnonzero(blank))})"
                ": the network leaves them out"
            ),
            stacklevel=2,
        )
        patterns, positions, counts = patterns[~blank], positions[~blank], counts[~blank]
        mask = mask[~blank] if mask is not None and np.ndim(mask) == 3 else mask
    if probe is not None:
        named = scan.meta.source if probe_source is None else probe_source
        probe = check_probe(probe, (frame, frame), named)
    probe = probe if probe is not None else scan.probe
    patch = patch or size
    return NetworkInput(
        patterns=patterns,
        scale=intensity_scale(patterns),
        corners=positions + patch_offset(frame, patch),
        weight=probe_weight(probe, frame, patch),
        stitch_weight=probe_weight(probe, frame, patch, STITCH_FLOOR),
        lit=None if probe is None or not comparable else probe_weight(probe, frame, patch, 0.0),
        counts=counts,
        grid=grid,
    )


def network_steps(
    scan: PtychoScan,
    model: Path | str | None = None,
    device: str = "auto",
    loaded: tuple[torch.nn.Module, dict] | None = None,
    probe: np.ndarray | None = None,
) -> Steps:
    """Every pattern through the network, the patches levelled to their counts and stitched on
    the ePIE grid of the scan, both weighted by ``probe`` (e.g. the one ePIE retrieved, which
    retraining prefers too), else by the scan's own probe, else by a Gaussian (no levelling)."""
    start = time.perf_counter()
    torch_device = resolve_device(device)
    if loaded is not None:
        path, (net, card) = "(in memory)", loaded
    else:
        path = Path(model) if model is not None else default_model()
        net, card = load_model(path, torch_device)
    registry.require_mode(card, "ptycho", path)
    data = network_input(scan, net.size, net.patch, probe)
    patches = yield from network_patches(net, data, torch_device)
    image = stitch(patches, data.corners, data.stitch_weight, data.grid.origin, data.grid.shape)
    provenance = Provenance(
        method=LABELS["nn"],
        model_name=card.get("name"),
        model_version=card.get("version"),
        parameters={
            "model_path": str(path),
            "binning": scan.stack.frame_shape[-1] // net.size,
            "probe": "given" if probe is not None else "scan's" if scan.probe is not None else None,
            "levelled_to_counts": data.lit is not None,
            "positions_inverted": len(data.patterns),  # frames without counts are left out
        },
        wall_time_s=time.perf_counter() - start,
        source=scan.meta.source,
    )
    yield len(data.patterns) + 1, len(data.patterns) + 1
    return ObjectResult(image, provenance, origin=data.grid.origin)


def network_patches(
    net: torch.nn.Module, data: NetworkInput, device: torch.device | str = "cpu"
) -> Generator[tuple[int, int], None, np.ndarray]:
    """The network's patch for each of ``data``'s patterns, levelled to its counts where the
    probe is known (``data.lit``), before stitching; yields (patterns done, patterns + 1)."""
    fast = inference_model(net)
    patches = np.empty((len(data.patterns), net.patch, net.patch), np.complex64)
    for lo, batch in predict_patches(fast, data.patterns, data.scale, device):
        patches[lo : lo + len(batch)] = batch
        yield lo + len(batch), len(data.patterns) + 1
    return patches if data.lit is None else levelled(patches, data.counts, data.lit)


def refine_steps(
    scan: PtychoScan,
    model: Path | str | None = None,
    recipe: EpieRecipe | None = None,
    device: str = "auto",
    preview: Callable[[np.ndarray, np.ndarray, int], None] | None = None,
) -> Steps:
    """The network's stitched image as ePIE's first object guess (``REFINE_EPOCHS`` by
    default): the network gives the picture in a blink, a few epochs add what the overlaps
    know and a single pattern does not (CDI NN's refinement, done the ptychographic way)."""
    began = time.perf_counter()
    recipe = recipe or EpieRecipe(epochs=REFINE_EPOCHS)
    network = yield from network_steps(scan, model, device)
    result = yield from epie_steps(scan, recipe, device, preview, start=network.objects)
    provenance = replace(
        result.provenance,
        method=LABELS["refine"],
        model_name=network.provenance.model_name,
        model_version=network.provenance.model_version,
        parameters={**network.provenance.parameters, **result.provenance.parameters},
        wall_time_s=time.perf_counter() - began,
    )
    return replace(result, provenance=provenance)


def matched_to(result: ObjectResult, reference: ObjectResult) -> ObjectResult:
    """``result`` with the global phase offset, linear phase ramp and amplitude scale of
    ``reference`` (same grid), fitted where both have signal, so the two layers share a colour
    scale."""
    if result.objects.shape != reference.objects.shape or result.origin != reference.origin:
        raise ValueError("results on different grids")
    both = (np.abs(result.objects) > 0) & (np.abs(reference.objects) > 0)
    objects = metrics.matched(result.objects, reference.objects, both).astype(np.complex64)
    return replace(result, objects=objects)


def region_mask(
    grid: ObjectGrid,
    rectangle: tuple[float, float, float, float] | None = None,
    polygon: np.ndarray | None = None,
) -> np.ndarray:
    """A region on ``grid`` from a rectangle (y0, y1, x0, x1) or a polygon (K, 2) of (y, x)
    vertices, both in scan coordinates (napari world coordinates of the scan's layers)."""
    if polygon is not None:
        vertices = np.asarray(polygon, float) - np.asarray(grid.origin)
        return polygon2mask(grid.shape, vertices)
    if rectangle is None:
        raise ValueError("give a rectangle or a polygon")
    y0, y1, x0, x1 = (v - o for v, o in zip(rectangle, np.repeat(grid.origin, 2), strict=True))
    mask = np.zeros(grid.shape, bool)
    mask[
        max(int(np.ceil(y0)), 0) : max(int(np.floor(y1)), 0),
        max(int(np.ceil(x0)), 0) : max(int(np.floor(x1)), 0),
    ] = True
    return mask


def positions_in_region(data: NetworkInput, region: np.ndarray, size: int) -> np.ndarray:
    """Indices of the frames whose predicted patch lies wholly inside ``region`` (on data.grid)."""
    local = np.asarray(data.corners) - np.asarray(data.grid.origin)
    inside = []
    for index, (y, x) in enumerate(local):
        y0, x0 = int(np.floor(y)), int(np.floor(x))
        if y0 < 0 or x0 < 0 or y0 + size + 1 > region.shape[0] or x0 + size + 1 > region.shape[1]:
            continue
        if region[y0 : y0 + size + 1, x0 : x0 + size + 1].all():
            inside.append(index)
    return np.asarray(inside, int)


def windowed_pairs(
    image: np.ndarray, probe: np.ndarray, corners: np.ndarray, turns: np.ndarray, patch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Noiseless far-field intensities of ``probe`` times the windows of ``image`` at whole-pixel
    ``corners`` (n, 2), each window first turned by ``turns`` (n,) in 0..7 (bit 0 flips rows,
    bit 1 columns, bit 2 transposes), and the windows' central ``patch`` x ``patch`` patches."""
    frame = probe.shape[-1]
    offset = round(patch_offset(frame, patch))
    cut = sliding_window_view(image, (frame, frame))[corners[:, 0], corners[:, 1]]
    cut = np.where((turns & 1)[:, None, None] > 0, cut[:, ::-1], cut)
    cut = np.where((turns & 2)[:, None, None] > 0, cut[:, :, ::-1], cut)
    cut = np.where((turns & 4)[:, None, None] > 0, cut.transpose(0, 2, 1), cut)
    targets = cut[:, offset : offset + patch, offset : offset + patch].astype(np.complex64)
    return far_field_intensity(probe[None] * cut), targets


def measured_everywhere(mask: np.ndarray) -> np.ndarray:
    """The detector pixels every frame measures: the mask itself, or of a mask per frame the
    pixels that all frames measuring anything measure (a wholly masked frame, say one of NaN,
    measures nothing and would otherwise blank every pixel)."""
    if mask.ndim == 2:
        return mask
    return mask[mask.any(axis=(-2, -1))].all(axis=0)


def resimulated_pairs(
    teacher: np.ndarray,
    probe: np.ndarray,
    data: NetworkInput,
    chosen: np.ndarray,
    region: np.ndarray,
    count: int,
    patch: int,
    mask: np.ndarray | None = None,
    seed: int = 0,
) -> Generator[tuple[int, int], None, tuple[np.ndarray, np.ndarray]]:
    """Training pairs simulated from the teacher itself: ``count`` windows of ``teacher`` (the
    normalised reference on ``data.grid``) at whole-pixel positions within half a scan step of
    the region's scan positions (``chosen``), each turned by one of the eight flips/transposes,
    lit by the reference's ``probe``, far-field intensities at the scan's mean counts, with
    Poisson noise when the patterns are photon counts (whole numbers; data in other units, say
    normalised to a sum of 1, are simulated noiseless: Poisson noise at a "count" of 1 would
    leave blank patterns), masked and binned like the measured patterns; targets the windows'
    patches.

    Why: a region holds a few hundred patterns, too few to teach the network a probe unlike its
    pretraining ones (the tike scan's wide, defocused one), while the reference and its probe
    give the exact forward model for any number of patches of the same material. Yields
    (pairs made, ``count``) so Stop can end it; returns (patterns, complex targets)."""
    rng = np.random.default_rng(seed)
    frame = probe.shape[-1]
    factor = frame // data.patterns.shape[-1]
    offset = round(patch_offset(frame, patch))
    windows = np.round(data.corners[chosen] - offset - np.asarray(data.grid.origin)).astype(int)
    # the median step between positions in scan order: a raster's step; larger for spirals
    # and other orders, whose windows then reach further (within the region all the same)
    step = np.median(np.abs(np.diff(windows, axis=0)).max(axis=1)) if len(windows) > 1 else 2
    reach = max(1, int(step // 2))
    # every whole-pixel window near the region's positions whose patch lies inside the region,
    # marked on the grid of window corners (memory of the grid's size whatever the reach)
    inside = sliding_window_view(region, (patch, patch)).all(axis=(-2, -1))
    corners = np.zeros(np.asarray(teacher.shape) - frame + 1, np.uint8)
    corners[tuple(np.clip(windows, 0, np.asarray(corners.shape) - 1).T)] = 1
    near = np.argwhere(maximum_filter(corners, size=2 * reach + 1, mode="constant") > 0)
    candidates = near[inside[near[:, 0] + offset, near[:, 1] + offset]]
    if not len(candidates):
        return data.patterns[:0], np.zeros((0, patch, patch), np.complex64)
    counts = float(np.mean(data.patterns.sum(axis=(-2, -1))))  # the scan's mean counts
    photons = bool(np.all(np.mod(data.patterns[chosen], 1) == 0))
    chunk = max(8, min(256, 2**22 // frame**2))  # some 32 MB of complex windows at a time
    patterns, targets = [], []
    for start in range(0, count, chunk):
        n = min(chunk, count - start)
        corners = candidates[rng.integers(len(candidates), size=n)]
        intensity, target = windowed_pairs(teacher, probe, corners, rng.integers(8, size=n), patch)
        if mask is not None:  # one per frame: the pixels every frame measures
            intensity = np.where(measured_everywhere(mask), intensity, 0)
        intensity *= counts / max(float(intensity.sum(axis=(-2, -1)).mean()), 1e-30)
        noisy = rng.poisson(intensity) if photons else intensity
        patterns.append(binned(noisy.astype(np.float32), factor))
        targets.append(target)
        yield start + n, count
    return np.concatenate(patterns), np.concatenate(targets)


def _grid_text(grid: ObjectGrid | ObjectResult) -> str:
    """'H x W pixels from (y, x)' of an object array, for messages."""
    shape = grid.shape if isinstance(grid, ObjectGrid) else grid.objects.shape
    origin = (
        "an unknown origin" if grid.origin is None else f"({grid.origin[0]:g}, {grid.origin[1]:g})"
    )
    return f"{shape[-2]} x {shape[-1]} pixels from {origin}"


def _warn_if_made_from_another_file(reference: ObjectResult, scan: PtychoScan, named: object):
    """Warn when the reference says it was reconstructed from another file than the scan: a
    repeated scan on the same grid passes the grid check, and would teach another object."""
    made_from, scan_file = reference.provenance.source, scan.meta.source
    if not made_from or not scan_file or made_from == scan_file:
        return
    if Path(made_from).expanduser().resolve() != Path(scan_file).expanduser().resolve():
        warnings.warn(
            InputWarning(
                f"{named}: the reference was reconstructed from {made_from}, not from this "
                f"scan ({scan_file}); it teaches only if both hold the same object"
            ),
            stacklevel=3,
        )


def retrain_steps(
    scan: PtychoScan,
    reference: ObjectResult,
    region: np.ndarray,
    run: FineTuning,
    seconds: float = 55.0,
    device: str = "auto",
    max_epochs: int = 200,
    simulated: int = 3000,
    reference_name: object = None,
) -> Generator[tuple[int, int], None, FineTuning]:
    """Fine-tune ``run.model`` on the frames whose patches lie inside ``region`` (a mask on the
    reference's grid), with the reference's patches as targets, and on ``simulated`` more pairs
    made from the reference and its probe (``resimulated_pairs``; none without a probe); see
    ``nn.ptycho.fine_tune``. The simulation counts in ``seconds``. ``run`` is updated as
    training goes, so a stopped run still holds its best model.  ``reference_name`` (its file,
    or layer) names the reference in refusals; default the scan it was made from."""
    start = time.perf_counter()
    named = reference_name if reference_name is not None else reference.provenance.source
    probe = reference.probe if reference.probe is not None else scan.probe
    data = network_input(scan, run.model.size, run.model.patch, probe, named)
    if (
        reference.origin is None
        or reference.objects.shape != data.grid.shape
        or tuple(reference.origin) != tuple(data.grid.origin)
    ):
        raise InputError(
            named,
            f"the reference's object array ({_grid_text(reference)}) is not this scan's "
            f"({_grid_text(data.grid)}): not a reconstruction of this scan (another scan, "
            "or a selection of its frames)",
        )
    _warn_if_made_from_another_file(reference, scan, named)
    chosen = positions_in_region(data, region, run.model.patch)
    if len(chosen) < 10:
        low = data.corners.min(axis=0)
        high = data.corners.max(axis=0) + run.model.patch
        raise InputError(
            scan.meta.source,
            f"the region holds {len(chosen)} scan positions with whole patches inside; "
            "draw a larger region (at least 10) over the scanned area (the patches span rows "
            f"{low[0]:.0f}:{high[0]:.0f}, columns {low[1]:.0f}:{high[1]:.0f}, scan coordinates)",
        )
    if simulated and probe is None:
        warnings.warn(
            InputWarning(
                f"{scan.meta.source}: no probe (neither the reference's nor the scan's), so no "
                f"pairs can be simulated (the {simulated} asked for are left out): only the "
                f"{len(chosen)} measured pairs teach"
            ),
            stacklevel=2,
        )
    taught, where = region, "inside the region"
    if simulated and probe is not None:  # the simulated pairs' frames reach past their patches
        reach = round(patch_offset(np.shape(probe)[-1], run.model.patch))
        taught = maximum_filter(region, size=2 * reach + 1) > 0
        if reach:
            where = f"inside the region or within {reach} pixels of it (the frames reach there)"
    bad = int(np.count_nonzero(~np.isfinite(reference.objects[taught])))
    if bad:
        raise InputError(
            named,
            f"the reference has {bad} non-finite (NaN or infinite) pixels {where}",
        )
    torch_device = resolve_device(device)
    teacher = normalised(reference.objects, region)
    targets = sample_patches(teacher, data.grid.origin, data.corners[chosen], run.model.patch)
    extra = None
    if simulated and probe is not None:
        probe = np.asarray(probe, np.complex64)
        probe = probe[0] if probe.ndim == 3 else probe
        patterns, simulated_targets = yield from resimulated_pairs(
            teacher, probe, data, chosen, region, simulated, run.model.patch, scan.stack.mask
        )
        if len(patterns):
            extra = (
                preprocess(torch.as_tensor(patterns), data.scale).to(torch_device),
                torch.as_tensor(simulated_targets).to(torch_device),
            )
    inputs = preprocess(torch.as_tensor(data.patterns[chosen]), data.scale).to(torch_device)
    run.model.to(torch_device)
    run.source = {
        "scan": scan.meta.source,
        "reference": f"{reference.provenance.method} reconstruction of "
        f"{reference.provenance.source}",
        "positions": len(chosen),
        "simulated_pairs": 0 if extra is None else len(extra[0]),
        "device": str(torch_device),
    }
    yield from fine_tune(
        run,
        inputs,
        torch.as_tensor(targets).to(torch_device),
        torch.as_tensor(data.weight).to(torch_device),
        seconds=seconds - (time.perf_counter() - start),
        max_epochs=max_epochs,
        extra=extra,
    )
    return run


def save_fine_tuned(
    run: FineTuning, path: Path | str, base_card: dict, region: str, name: str | None = None
) -> Path:
    """Write the run's best model and a card naming the scan, reference and region it learnt."""
    path = registry.weights_path(path)
    model = run.best_model()
    card = {
        "name": name or path.stem,
        "version": f"{base_card.get('version', '0')}+ft{time.strftime('%Y%m%d%H%M%S')}",
        "mode": "ptycho",
        "architecture": base_card.get("architecture", "PtychoNet"),
        "arguments": model.arguments(),
        "input": base_card.get("input"),
        "output": base_card.get("output"),
        "fine_tuned_from": {"name": base_card.get("name"), "version": base_card.get("version")},
        "training": {
            "recipe": "few-shot: the region's pairs and pairs simulated from the reference, "
            "probe-weighted MAE, Adam 1e-3 halved on plateau, 90/10 split; the best weights "
            "averaged with the base model's (fine_tuned_share of them the fine-tuned)",
            **run.source,
            "region": region,
            "best_validation": run.best_validation,
            "history": run.history,
            "machine": machine(run.source.get("device", "cpu")),
        },
    }
    return save_model(model, path, card)
