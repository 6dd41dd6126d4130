"""Wide-angle single shots, the calls both faces use: the network, the forward fit, and the
network-started fit (refine); the cluster as a mesh and the pattern re-simulated from an answer.

Shots reach the network as 128 x 128 log images in [0, 1] (``simulate.wideangle.log_image``):
intensities (counts, any file format) are mapped there; 8-bit display images such as the FLASH
shots of Barke et al. are taken to be that scale already (value / 255): they are log-scaled
renderings of unknown floor and gamma, which the training's display-scaling augmentation
covers.  Pixels at 0 are "no signal" (outside the detector, beam stop, gaps) and are left out
of the fit's comparison.

Each long call is a generator yielding ``(done, total)`` and returning its result (see
``core.progress``).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import gaussian_filter, median_filter
from scipy.optimize import minimize

from . import icosahedral
from .data import DiffractionStack, OrientationResult, Provenance, ShotSet, at_limit
from .device import resolve_device
from .errors import InputError, InputWarning
from .io.checks import frames_in_memory
from .nn import registry
from .nn.registry import load_model
from .nn.wideangle import inference_network, predict
from .simulate.wideangle import RADII, Detector, Simulator, log_image

METHODS = ("nn", "fit", "refine")
LABELS = {"nn": "NN", "fit": "simplex fit", "refine": "NN + simplex"}
PIXELS = 128  # the network's and the simulator's detector grid
# fewer of the network's eight flips agreeing than this: an unsure answer (on the benchmark's
# held-out shots the median misorientation is 2.7 deg at 6 of 8 agreeing, 3.7 at 5, 5.2 at 4)
UNSURE_BELOW = 6
# a fit's provenance parameters that hold one value per shot fitted (in this order in
# ``fit_steps``): the shot's index, 1 - its misfit, the beam's offset (rows, columns) and the
# detector blur that fitted best, both in pixels of the 128-pixel detector
PER_SHOT = ("shots", "similarity", "beam_offsets_px", "blur_sigmas_px")
MIN_FIT_PIXELS = 20  # binned pixels with signal a fit needs (it has five parameters)
BLURS = (0.0, 0.5, 1.0, 2.0)  # Gaussian sigmas (binned pixels) the fit tries for the detector
Steps = Generator[tuple[int, int], None, OrientationResult]


def default_model() -> Path:
    return registry.default_model("wideangle")


def shot_names(data: ShotSet | DiffractionStack, shots: Any) -> str:
    """Shots as the user knows them: their frame in what was read (the meta's ``frames``, when
    a selection of it is inverted) and, for a stack read from several files, the file."""
    files = data.meta.extra.get("files")
    names = []
    for frame in data.meta.frame_numbers(list(shots)[:5]):
        named = files is not None and frame < len(files)
        names.append(f"{frame} ({files[frame]})" if named else f"{frame}")
    return ", ".join(names) + (" ..." if len(shots) > 5 else "")


def flat(values: np.ndarray) -> bool:
    """Whether ``values`` (a shot's pixels with signal) are one value to float precision:
    saturated, or a blank grey image, with no pattern that any cluster could be told from."""
    if not values.size:
        return False
    peak = float(np.abs(values).max())
    return float(np.ptp(values)) <= 1e-6 * max(peak, 1e-30)


def unusable(images: np.ndarray) -> np.ndarray:
    """Per shot of ``shot_images``' output, whether it holds nothing to invert: no signal (all
    zero: blank, all NaN, a missed shot), or one value over at least half the detector and in
    every pixel with signal (``flat``: saturated, a blank grey image).  A 1-bit or thresholded
    pattern, or a shot of single photons, is also one value where it has signal, but over a
    minority of the pixels: its pattern is where they lie, and it is inverted."""
    return np.array(
        [
            not (lit := image > 0).any() or (lit.mean() >= 0.5 and flat(image[lit]))
            for image in images
        ],
        bool,
    )


def radius_limit_note(radius: float, limits: tuple[float, float] | None = RADII) -> str:
    """For a radius pinned at an end of the model's range ``limits`` (where the network and the
    fit clip their answers, so it is no measurement): "at the model's limit (30-160 nm): the
    cluster may be larger" (or smaller); else ""."""
    if limits is None or not at_limit(radius, limits):
        return ""
    low, high = limits
    bigger = "larger" if radius > (low + high) / 2 else "smaller"
    return f"at the model's limit ({low:g}-{high:g} nm): the cluster may be {bigger}"


def shot_images(data: ShotSet | DiffractionStack) -> np.ndarray:
    """(N, 128, 128) float32 log images in [0, 1] from shots as read; refuses what the network
    cannot take (wrong size, no shots), naming the file; NaN and infinite pixels become 0 (no
    signal), with a warning naming the shots."""
    source = data.meta.source
    if isinstance(data, ShotSet):
        images = np.asarray(data.images, np.float32)
    elif isinstance(data, DiffractionStack):
        frames, mask = frames_in_memory(data)
        if mask is not None:
            frames = np.where(mask, frames, 0)
        # NaN and +-Inf as no signal (an Inf left as 3e38 would be the peak of the log scale)
        frames = np.nan_to_num(frames, nan=0.0, posinf=0.0, neginf=0.0)
        images = log_image(frames) if frames.size else frames
    else:
        raise InputError(source, "holds no single-shot images for the wide-angle mode")
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or len(images) == 0:
        raise InputError(source, "no shots: the file holds no images")
    if images.shape[-2:] != (PIXELS, PIXELS) and images.shape[:2] == (PIXELS, PIXELS):
        raise InputError(
            source,
            f"shots of shape {images.shape}: the frames seem to lie along the last axis; the "
            f"wide-angle mode takes them along the first, (N, {PIXELS}, {PIXELS}) (move the axis, "
            "e.g. numpy.moveaxis(shots, -1, 0))",
        )
    if images.shape[-2:] != (PIXELS, PIXELS):
        raise InputError(
            source,
            f"shots are {images.shape[-2]} x {images.shape[-1]} pixels; the wide-angle mode "
            f"takes {PIXELS} x {PIXELS} images on its detector grid (see the README): resample "
            "them first",
        )
    bad = ~np.isfinite(images)
    if bad.any():
        shots = np.flatnonzero(bad.any(axis=(1, 2)))
        warnings.warn(
            InputWarning(f"{source}: NaN or infinite pixels in shot(s) "
                         f"{shot_names(data, shots)} taken as no signal"),
            stacklevel=2,
        )  # fmt: skip
        images = np.where(bad, 0, images)
    return np.clip(images, 0, 1).astype(np.float32)


def kept_shots(data: ShotSet | DiffractionStack, images: np.ndarray) -> np.ndarray:
    """The shots worth inverting (indices), those left out (``unusable``) named in a warning,
    as the CDI mode leaves out a missed pattern; refuses a stack where none is left."""
    left_out = np.flatnonzero(unusable(images))
    if len(left_out) == len(images):
        raise InputError(
            data.meta.source,
            f"shot(s) {shot_names(data, left_out)} hold no signal (all zero) or the same value "
            "in every pixel with signal (saturated, or a blank image); nothing to invert",
        )
    if len(left_out):
        warnings.warn(
            InputWarning(
                f"{data.meta.source}: shot(s) {shot_names(data, left_out)} hold no signal (all "
                "zero) or the same value in every pixel with signal (saturated, or a blank "
                "image): left out, their answers NaN"
            ),
            stacklevel=3,
        )
    return np.setdiff1d(np.arange(len(images)), left_out)


def _spread(result: OrientationResult, kept: np.ndarray, n: int) -> OrientationResult:
    """``result`` for the ``kept`` shots as rows for all ``n``: the others' quaternions and
    radii NaN, their flips agreeing 0, so that rows still match the shots."""
    quaternions = np.full((n, 4), np.nan)
    radii = np.full(n, np.nan)
    quaternions[kept], radii[kept] = result.quaternions, result.radii_nm
    agreeing = None
    if result.flips_agreeing is not None:
        agreeing = np.zeros(n, np.asarray(result.flips_agreeing).dtype)
        agreeing[kept] = result.flips_agreeing
    return replace(result, quaternions=quaternions, radii_nm=radii, flips_agreeing=agreeing)


def network_steps(
    data: ShotSet | DiffractionStack,
    model: Path | str | None = None,
    device: str = "auto",
    batch_size: int = 64,
) -> Steps:
    """Orientation and radius of every shot from the network: the consensus of its answers
    for the eight exact flips/transposes of each image (``nn.wideangle.consensus``)."""
    start = time.perf_counter()
    all_images = shot_images(data)
    kept = kept_shots(data, all_images)
    images = all_images[kept]
    path = Path(model) if model is not None else default_model()
    torch_device = resolve_device(device)
    net, card = load_model(path, torch_device)
    registry.require_mode(card, "wideangle", path)
    net = inference_network(net)
    quaternions, radii, agreeing = [], [], []
    for lo in range(0, len(images), batch_size):
        q, r, agree = predict(net, images[lo : lo + batch_size], torch_device, agreement=True)
        quaternions.append(q)
        radii.append(r)
        agreeing.append(agree)
        yield lo + len(q), len(images)
    provenance = Provenance(
        method=LABELS["nn"],
        model_name=card.get("name"),
        model_version=card.get("version"),
        parameters={"model_path": str(path), "test_time_flips": 8, "radius_range_nm": [*RADII]},
        wall_time_s=time.perf_counter() - start,
        source=data.meta.source,
    )
    result = OrientationResult(
        np.concatenate(quaternions), np.concatenate(radii), provenance, np.concatenate(agreeing)
    )
    return _spread(result, kept, len(all_images))


def answers_steps(
    data: ShotSet | DiffractionStack, model: Path | str | None = None, device: str = "auto"
) -> Generator[tuple[int, int], None, tuple[OrientationResult, np.ndarray]]:
    """The network's answers for every shot, then each answer's pattern re-simulated (with
    the shot's no-signal pixels left out) to show beside it; returns both."""
    result = yield from network_steps(data, model, device)
    images = shot_images(data)
    simulated = np.empty_like(images)
    for n, image in enumerate(images):
        if np.isfinite(result.radii_nm[n]):  # a shot left out has no answer to show: zeros
            simulated[n] = simulated_image(result.quaternions[n], result.radii_nm[n], like=image)
        else:
            simulated[n] = 0
        yield n + 1, len(images)
    return result, simulated


@dataclass
class FitRecipe:
    """Monte-Carlo simplex: ``starts`` random starts (one, from the network, for refine), each a
    Nelder-Mead search of at most ``evaluations`` simulations over orientation (a rotation
    vector) and radius, on the detector binned to ``pixels``."""

    starts: int = 8
    evaluations: int = 150
    pixels: int = 64
    seed: int = 0


class ShotFit:
    """The forward model and misfit for one measured shot: 1 - the Pearson correlation of the
    measured and simulated log images over the pixels with signal (correlation, since the
    measured image's scaling is unknown), at the best beam-centre offset of up to
    ``max_shift`` binned pixels each way and the best of a few detector blurs (``BLURS``).  The
    measured image is median-filtered (3 x 3) first, against salt-and-pepper pixels.  The
    offset matters most: a beam a few pixels off the detector's centre moves the whole pattern,
    and without it the search turned and resized the cluster to follow it (refine made the
    network's answers worse); a blurred shot's fringes, too, were matched by a wrong cluster."""

    def __init__(self, image: np.ndarray, pixels: int = 64, max_shift: int = 2):
        cleaned = np.where(image > 0, median_filter(image, 3), 0)
        factor = image.shape[-1] // pixels
        blocks = cleaned.reshape(pixels, factor, pixels, factor)
        valid = (blocks > 0).all(axis=(1, 3))
        border = np.zeros_like(valid)
        border[max_shift : pixels - max_shift, max_shift : pixels - max_shift] = True
        self.valid = valid & border  # a shifted simulation still covers every valid pixel
        centred = blocks.mean(axis=(1, 3))[self.valid]
        # one value everywhere (saturated, a blank grey image): no pattern; the centring would
        # leave rounding residues that the normalisation blows up into a "pattern"
        self.flat = flat(centred)
        centred -= centred.mean() if centred.size else 0.0  # none: fit_steps refuses the shot
        self.measured = centred / max(np.linalg.norm(centred), 1e-30)  # for the correlation
        self.max_shift = max_shift
        self.simulator = Simulator(Detector(pixels=pixels))
        self.evaluations = 0
        # the lowest misfit seen, with its offset (rows, columns) and blur in binned pixels
        self.lowest, self.best_shift, self.best_blur = np.inf, (0, 0), 0.0

    def misfit(self, orientation: np.ndarray, radius: float) -> float:
        self.evaluations += 1
        simulated = log_image(self.simulator.intensity(radius, orientation))
        blurred = np.stack([gaussian_filter(simulated, b) if b else simulated for b in BLURS])
        s = self.max_shift
        # windows[k, a, b]: blur k, the simulation moved by (s - a, s - b) pixels
        padded = np.pad(blurred, ((0, 0), (s, s), (s, s)))
        windows = sliding_window_view(padded, simulated.shape, axis=(1, 2))[..., self.valid]
        windows = windows - windows.mean(axis=-1, keepdims=True)
        norms = np.maximum(np.linalg.norm(windows, axis=-1), 1e-30)
        correlation = windows @ self.measured / norms
        k, a, b = np.unravel_index(np.argmax(correlation), correlation.shape)
        misfit = 1.0 - float(correlation[k, a, b])
        if misfit < self.lowest:
            self.lowest, self.best_blur = misfit, BLURS[k]
            self.best_shift = (s - int(a), s - int(b))
        return misfit


def similarity(measured: np.ndarray, simulated: np.ndarray) -> float:
    """Pearson correlation of two log images (flattened pixels with signal)."""
    a, b = measured - measured.mean(), simulated - simulated.mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-30))


def _turned(base: np.ndarray, rotation_vector: np.ndarray) -> np.ndarray:
    """``base`` turned by a rotation vector (radians) in the cluster's frame."""
    return icosahedral.multiply(base, icosahedral.from_rotation_vector(rotation_vector))


SIMULATIONS_BETWEEN_YIELDS = 500  # a Cancel waits at most this many simulations


def _simplex_search(
    fit: ShotFit,
    orientation: np.ndarray,
    radius: float,
    scale: tuple[float, float],
    limit: int,
    progress: tuple[int, int],
) -> Generator[tuple[int, int], None, tuple[np.ndarray, float, float]]:
    """One Nelder-Mead run from (orientation, radius); returns the best found and its misfit.
    A long run goes in pieces of ``SIMULATIONS_BETWEEN_YIELDS``, each resuming from the last
    one's simplex, yielding ``progress`` between them so that Cancel works within seconds (a
    run of the default length is one piece)."""
    low, high = RADII

    def objective(x: np.ndarray) -> float:
        return fit.misfit(_turned(orientation, x[:3]), float(np.clip(x[3], low, high)))

    angle, size = scale
    start = np.array([0.0, 0.0, 0.0, radius])
    simplex = np.vstack([start, start + np.diag([angle, angle, angle, size])])
    used, x, misfit = 0, start, np.inf
    while used < limit:
        found = minimize(
            objective, simplex[0], method="Nelder-Mead",
            options={"initial_simplex": simplex, "xatol": 1e-4, "fatol": 1e-6,
                     "maxfev": min(SIMULATIONS_BETWEEN_YIELDS, limit - used)},
        )  # fmt: skip
        used += found.nfev
        if found.fun < misfit:
            x, misfit = found.x, float(found.fun)
        if found.success:  # converged
            break
        simplex = found.final_simplex[0]
        yield progress
    best = icosahedral.reduced(_turned(orientation, x[:3]))
    return best, float(np.clip(x[3], low, high)), misfit


def fit_steps(
    data: ShotSet | DiffractionStack,
    recipe: FitRecipe | None = None,
    start: OrientationResult | None = None,
    shots: np.ndarray | None = None,
    finished: list[tuple[int, OrientationResult]] | None = None,
) -> Steps:
    """The forward fit of ``shots`` (indices, default all but those ``kept_shots`` leaves out,
    or that ``start`` has no answer for): from ``recipe.starts`` random orientations and
    radii, or (refine) from ``start``'s answer for each shot.  Only the shots fitted are
    checked: one blank shot does not stop the fit of another.  Each shot's answer is appended
    to ``finished`` (shot, result of that shot) as soon as it is found, so a fit cancelled
    after hours keeps the shots it finished."""
    recipe = recipe or FitRecipe()
    began = time.perf_counter()
    images = shot_images(data)
    if shots is None and start is not None:  # the network left out (and named) the others
        shots = np.flatnonzero(np.isfinite(start.radii_nm))
    elif shots is None:
        shots = kept_shots(data, images)
    shots = np.asarray(shots, int)
    rng = np.random.default_rng(recipe.seed)
    starts = 1 if start is not None else recipe.starts
    total = len(shots) * starts
    fits = [ShotFit(images[shot], recipe.pixels) for shot in shots]
    for shot, fit in zip(shots, fits, strict=True):  # all before any work, not hours into it
        if not (images[shot] > 0).any():
            raise InputError(
                data.meta.source,
                f"shot {shot_names(data, [shot])}: no signal (all zero), nothing to fit",
            )
        if start is not None and not np.isfinite(start.radii_nm[shot]):
            raise InputError(
                data.meta.source,
                f"shot {shot_names(data, [shot])}: the network left it out; nothing to refine from",
            )
        if fit.valid.sum() < MIN_FIT_PIXELS:  # a correlation over nothing: any answer fits
            raise InputError(
                data.meta.source,
                f"shot {shot_names(data, [shot])}: {int(fit.valid.sum())} binned pixels with "
                f"signal, too few to fit (at least {MIN_FIT_PIXELS}; a shot of very few photons?)",
            )
        if fit.flat:  # one value everywhere: every cluster fits it alike
            raise InputError(
                data.meta.source,
                f"shot {shot_names(data, [shot])}: the same value in every pixel with signal "
                "(saturated, or a blank image), no pattern to fit",
            )
    quaternions, radii, misfits, offsets, blurs, evaluations = [], [], [], [], [], 0
    for n, (shot, fit) in enumerate(zip(shots, fits, strict=True)):
        best = (None, None, np.inf)
        for k in range(starts):
            if start is not None:
                q0, r0 = start.quaternions[shot], float(start.radii_nm[shot])
                scale = (0.05, 3.0)  # the network is within a few degrees and nanometres
            else:
                q0 = icosahedral.random_orientations(1, rng)[0]
                r0, scale = float(rng.uniform(*RADII)), (0.3, 15.0)
            found = yield from _simplex_search(
                fit, q0, r0, scale, recipe.evaluations, (n * starts + k, total)
            )
            if found[2] < best[2]:
                best = found
            if k + 1 < starts:  # the shot's last step is yielded once its answer is handed over
                yield n * starts + k + 1, total
        quaternions.append(best[0])
        radii.append(best[1])
        misfits.append(best[2])
        offsets.append([d * PIXELS // recipe.pixels for d in fit.best_shift])
        blurs.append(fit.best_blur * PIXELS / recipe.pixels)
        evaluations += fit.evaluations
        if finished is not None:
            answer = (quaternions[-1:], radii[-1:], misfits[-1:], offsets[-1:], blurs[-1:])
            settings = {**vars(recipe), "starts": starts, "simulations": fit.evaluations}
            finished.append((int(shot), _fitted(shots[n : n + 1], *answer, settings, start, data)))
        yield (n + 1) * starts, total  # a Cancel here keeps this shot
    settings = {**vars(recipe), "starts": starts, "simulations": evaluations}
    answers = (quaternions, radii, misfits, offsets, blurs)
    result = _fitted(shots, *answers, settings, start, data)
    return replace(
        result, provenance=replace(result.provenance, wall_time_s=time.perf_counter() - began)
    )


def _fitted(
    shots: np.ndarray,
    quaternions: list,
    radii: list,
    misfits: list,
    offsets: list,
    blurs: list,
    settings: dict,
    start: OrientationResult | None,
    data: ShotSet | DiffractionStack,
) -> OrientationResult:
    """A fit's answers for ``shots`` as a result, with its per-shot parameters."""
    similarity = [round(1 - m, 5) for m in misfits]
    per_shot = dict(zip(PER_SHOT, (shots.tolist(), similarity, offsets, blurs), strict=True))
    provenance = Provenance(
        method=LABELS["refine" if start is not None else "fit"],
        parameters={**settings, "radius_range_nm": [*RADII], **per_shot},
        source=data.meta.source,
    )
    return OrientationResult(np.array(quaternions), np.array(radii), provenance)


def merged(fits: list[OrientationResult]) -> OrientationResult:
    """Fits of single shots (or a few) as one result, in the order given: their rows and
    per-shot parameters joined, their simulations summed, a setting that differs between them
    (starts, evaluations) given per row (the dock's answers, saved as one)."""
    first = fits[0].provenance
    parameters = dict(first.parameters)
    for name in PER_SHOT:
        parameters[name] = [v for fit in fits for v in fit.provenance.parameters[name]]
    for name in set(parameters) - {*PER_SHOT, "simulations"}:  # a setting changed: one per row
        values = [fit.provenance.parameters.get(name) for fit in fits]
        if any(value != values[0] for value in values):
            parameters[name] = [
                v for fit, v in zip(fits, values, strict=True) for _ in fit.radii_nm
            ]
    parameters["simulations"] = sum(fit.provenance.parameters["simulations"] for fit in fits)
    return OrientationResult(
        np.concatenate([fit.quaternions for fit in fits]),
        np.concatenate([fit.radii_nm for fit in fits]),
        replace(first, parameters=parameters, wall_time_s=None),
    )


def unsure_shots(result: OrientationResult, below: int = UNSURE_BELOW) -> np.ndarray:
    """The shots whose network answer fewer than ``below`` of its eight flips agree with: the
    ones worth refining (none for a result without the count, such as a fit's)."""
    if result.flips_agreeing is None:
        return np.zeros(0, int)
    answered = np.isfinite(result.radii_nm)  # not the shots left out (NaN, 0 flips agreeing)
    return np.flatnonzero((np.asarray(result.flips_agreeing) < below) & answered)


def simulated_image(orientation: np.ndarray, radius: float, like: np.ndarray | None = None):
    """The log image of the answer (orientation, radius), with ``like``'s no-signal pixels
    (its zeros) left out (0), for showing beside the measured shot."""
    image = log_image(Simulator().intensity(radius, orientation))
    return image if like is None else np.where(like > 0, image, 0).astype(np.float32)


def cluster_mesh(orientation: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (12, 3) in nm as (z, y, x) (napari's axis order; the beam along z) and faces
    (20, 3) of the icosahedron of circumradius ``radius`` in ``orientation``."""
    vertices, faces = icosahedral.icosahedron(radius)
    turned = vertices @ icosahedral.rotation_matrix(orientation).T  # (x, y, z)
    return turned[:, ::-1].astype(np.float32), faces


def facing_the_detector(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Which faces (bool per face) of a convex mesh with (z, y, x) vertices face +z, the
    detector: drawn seen from there, they tile the silhouette without overlapping."""
    corners = vertices[faces][..., ::-1]  # (F, 3, 3) as (x, y, z)
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    outward = np.sign(np.einsum("fi,fi->f", normals, corners.mean(axis=1)))
    return normals[:, 2] * outward > 0
