"""Bragg CDI inversion, the calls both faces use: network, iterative recipe, NN-seeded refinement.

Each method is a generator yielding ``(done, total)`` progress and returning an
:class:`ObjectResult`, so the GUI runs it in a worker with progress and cancel (close the
generator) and the CLI simply runs it to the end.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import postprocess
from .data import DiffractionStack, ObjectResult, Provenance
from .device import resolve_device
from .errors import InputError, InputWarning
from .io.checks import frames_in_memory, loaded
from .metrics import chi2
from .nn import registry
from .nn.cdi import inference_model, predict
from .nn.registry import load_model
from .retrieval.cdi import RetrievalRecipe, run_retrieval

METHODS = ("nn", "iterative", "refine")
LABELS = {"nn": "NN", "iterative": "ER/HIO", "refine": "NN+RAAR/ER"}
Steps = Generator[tuple[int, int], None, ObjectResult]


def default_model() -> Path:
    return registry.default_model("cdi")


def checked_patterns(stack: DiffractionStack) -> tuple[np.ndarray, np.ndarray | None]:
    """The stack's frames in memory and its mask; refuses empty stacks and patterns without
    measured signal (:func:`invert_steps` leaves those out first); NaN/Inf pixels of a lazily
    read stack (repaired only now that it is in memory) masked."""
    intensities, mask = frames_in_memory(stack)
    if intensities.size == 0:
        raise InputError(stack.meta.source, "empty stack: no patterns to invert")
    blank = blank_patterns(intensities, mask)
    if blank.any():
        raise InputError(
            stack.meta.source, f"{_frames_named(stack, blank)} hold no measured signal (all zero "
            "or masked); nothing to invert",
        )  # fmt: skip
    return intensities, mask


def blank_patterns(intensities: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Per pattern: whether its measured pixels hold no counts at all (a missed shot)."""
    valid = mask if mask is not None else np.ones(intensities.shape[-2:], bool)
    return np.where(valid, intensities, 0).sum(axis=(-2, -1)) <= 0


def _frames_named(stack: DiffractionStack, which: np.ndarray) -> str:
    """'frame(s) [3, 7]' as the file numbers them (at most five named)."""
    indices = np.flatnonzero(which)
    return f"{len(indices)} frame(s) {stack.meta.frame_list(indices)}"


def fit_to_network(
    intensities: np.ndarray, mask: np.ndarray | None, size: int, source: object
) -> tuple[np.ndarray, tuple[float, float], np.ndarray | None]:
    """Patterns made ``size`` x ``size`` for the network, the object-pixel scale this implies
    along (y, x), in pixels of the object grid of the patterns as they are, and the measured
    pixels on that grid (None: all; padding is not measured).

    A larger pattern is centre-cropped, a smaller one zero-padded, a non-square one first cropped
    to a square: the network always sees ``size`` detector pixels, so its object pixels are
    h/size and w/size of those of an (h, w) pattern's object.  Masked pixels become 0.
    """
    if mask is not None:
        intensities = np.where(mask, intensities, 0)
    h, w = intensities.shape[-2:]
    side = min(h, w)
    if h != w:
        warnings.warn(
            f"{source}: patterns are {h}x{w}; the network sees the central {side}x{side}",
            InputWarning,
            stacklevel=3,
        )
    fitted = _on_network_grid(intensities, side, size)
    valid = None
    if mask is not None or side < size:
        measured = np.ones((h, w), bool) if mask is None else np.asarray(mask, bool)
        valid = _on_network_grid(measured.reshape(-1, h, w), side, size)
    return fitted, (h / size, w / size), valid


def _on_network_grid(array: np.ndarray, side: int, size: int) -> np.ndarray:
    """(N, H, W) -> (N, size, size): the central ``side`` square, then centre-cropped or
    zero-padded to ``size``; the zero frequency of n pixels lies at n // 2 and stays there."""
    h, w = array.shape[-2:]
    y0, x0 = h // 2 - side // 2, w // 2 - side // 2
    square = array[:, y0 : y0 + side, x0 : x0 + side]
    if side >= size:
        lo = side // 2 - size // 2
        return np.ascontiguousarray(square[:, lo : lo + size, lo : lo + size])
    padded = np.zeros((len(square), size, size), array.dtype)
    lo = size // 2 - side // 2
    padded[:, lo : lo + side, lo : lo + side] = square
    return padded


def network_steps(
    stack: DiffractionStack, model_path: str | Path | None = None, device: str = "auto",
    batch_size: int = 256, threshold: float = 0.1,
) -> Steps:  # fmt: skip
    """The network's amplitude and phase for every pattern."""
    start = time.perf_counter()
    intensities, mask = checked_patterns(stack)
    torch_device = resolve_device(device)
    model_path = Path(model_path) if model_path else default_model()
    model, card = load_model(model_path, torch_device)
    registry.require_mode(card, "cdi", model_path)
    size = card["arguments"]["size"]
    fitted, scale, valid = fit_to_network(intensities, mask, size, stack.meta.source)
    fast = inference_model(model)
    objects = np.empty((len(fitted), size, size), np.complex64)
    for lo in range(0, len(fitted), batch_size):
        objects[lo : lo + batch_size] = predict(
            fast, fitted[lo : lo + batch_size], torch_device, batch_size, threshold
        )
        yield min(len(fitted), lo + batch_size), len(fitted)
    objects = postprocess.canonical(objects, threshold=threshold)
    provenance = Provenance(
        method=LABELS["nn"], model_name=card["name"], model_version=card["version"],
        parameters={"device": str(torch_device), "threshold": threshold, "object_pixel_scale": scale},
        wall_time_s=time.perf_counter() - start, source=stack.meta.source,
    )  # fmt: skip
    return ObjectResult(objects, provenance, chi2=chi2(objects, fitted, valid))


def iterative_steps(
    stack: DiffractionStack, recipe: RetrievalRecipe | None = None, device: str = "auto",
    reference: np.ndarray | None = None, threshold: float = 0.1, seed: int = 0,
) -> Steps:  # fmt: skip
    """The iterative recipe (default: 620 ER/HIO iterations with shrink-wrap, best of starts)."""
    start = time.perf_counter()
    intensities, mask = checked_patterns(stack)
    recipe = recipe or RetrievalRecipe()
    objects, supports, _ = yield from run_retrieval(
        intensities, mask, recipe=recipe, device=device, seed=seed
    )
    objects, supports = postprocess.canonical_with(objects, supports, reference, threshold)
    measured = (intensities, mask)
    return _iterative_result("iterative", objects, supports, recipe, device, start, stack, measured)


def refine_steps(
    stack: DiffractionStack, start_objects: np.ndarray, iterations: int = 50,
    device: str = "auto", threshold: float = 0.1, shrinkwrap_threshold: float = 0.2,
) -> Steps:  # fmt: skip
    """``iterations`` of RAAR/ER with shrink-wrap seeded by the network's objects (Wu et al.)."""
    start = time.perf_counter()
    intensities, mask = checked_patterns(stack)
    if start_objects.shape != intensities.shape:
        raise InputError(
            stack.meta.source,
            f"refinement needs start objects on the pattern grid {intensities.shape}; got "
            f"{start_objects.shape} (the network saw resampled patterns)",
        )
    start_objects = scaled_to_counts(start_objects, intensities, mask)
    recipe = refine_recipe(iterations, shrinkwrap_threshold)
    objects, supports, _ = yield from run_retrieval(
        intensities, mask, start=start_objects, recipe=recipe, device=device
    )
    objects, supports = postprocess.canonical_with(objects, supports, start_objects, threshold)
    measured = (intensities, mask)
    return _iterative_result("refine", objects, supports, recipe, device, start, stack, measured)


def scaled_to_counts(
    objects: np.ndarray, intensities: np.ndarray, mask: np.ndarray | None
) -> np.ndarray:
    """Each object scaled so that its far field carries its pattern's counts over the measured
    pixels (Parseval). The network answers amplitudes near 1 whatever the data's units; from a
    start of the wrong scale, what RAAR keeps of it outside the support outweighs the data, and
    shrink-wrap follows it (the same patterns in other units refined worse)."""
    far_field = np.abs(np.fft.fftshift(np.fft.fft2(objects), axes=(-2, -1))) ** 2
    valid = np.ones(intensities.shape[-2:], bool) if mask is None else mask
    model = np.where(valid, far_field, 0).sum(axis=(-2, -1))
    counts = np.where(valid, intensities, 0).sum(axis=(-2, -1))
    scale = np.sqrt(np.divide(counts, model, out=np.ones_like(model), where=model > 0))
    return (objects * scale[:, None, None]).astype(np.complex64)


def _iterative_result(
    method: str, objects: np.ndarray, supports: np.ndarray, recipe: RetrievalRecipe,
    device: str, start: float, stack: DiffractionStack,
    measured: tuple[np.ndarray, np.ndarray | None],
) -> ObjectResult:  # fmt: skip
    """The result as stored; its chi2 that of the stored objects (after the canonical form,
    whose zeroed phase outside the object changes the low frequencies: on the gold crystal
    0.0032 against 0.0004 for the raw iterate), computed as the network's is, so the methods'
    chi2 compare."""
    provenance = Provenance(
        method=LABELS[method],
        parameters={"device": str(resolve_device(device)), **recipe.as_dict()},  # not "auto"
        wall_time_s=time.perf_counter() - start, source=stack.meta.source,
    )  # fmt: skip
    return ObjectResult(objects, provenance, support=supports, chi2=chi2(objects, *measured))


def refine_recipe(iterations: int, shrinkwrap_threshold: float = 0.2) -> RetrievalRecipe:
    """Short seeded recipe: RAAR, then a tenth of ER whose iterates are averaged.

    RAAR rather than HIO: from a start already near the answer it settled closer to the truth in
    our held-out checks (seeds 999999 and 4242, 200 patterns each; see the issue note).
    """
    er_tail = max(1, iterations // 10)
    schedule = [("RAAR", iterations - er_tail), ("ER", er_tail)] if iterations > 1 else [("ER", 1)]
    return RetrievalRecipe(
        schedule=schedule,
        shrinkwrap_every=10,
        shrinkwrap_sigma=(1.0, 1.0),
        shrinkwrap_threshold=shrinkwrap_threshold,
        average_last=er_tail,
        n_starts=1,
    )


def invert_steps(
    stack: DiffractionStack, methods: list[str], iterations: int | None = None,
    refine_iterations: int = 50, shrinkwrap_threshold: float = 0.2, device: str = "auto",
    model_path: str | Path | None = None,
) -> Generator[tuple[int, int], None, dict[str, ObjectResult]]:  # fmt: skip
    """Run the chosen methods in turn (the network first, as the reference for the others).

    ``iterations`` stretches or shrinks the 620-iteration recipe; refine needs the network's
    output, so asking for it runs the network too.  Returns {method: result}.
    """
    if not methods or set(methods) - set(METHODS):
        raise InputError(None, f"methods must be among {', '.join(METHODS)}; got {methods}")
    if "refine" in methods:  # said before any work
        path = Path(model_path) if model_path else default_model()
        size = registry.checked_card(path, "cdi")["arguments"].get("size")
        if tuple(stack.frame_shape) != (size, size):
            raise InputError(
                stack.meta.source,
                f"refine needs patterns of the network's own size ({size} x {size}), whose "
                f"objects lie on the pattern grid; these are {stack.frame_shape[0]} x "
                f"{stack.frame_shape[1]} (use the iterative method)",
            )
    stack = yield from loaded(stack)  # a lazy stack read once, in pieces, for every method
    blank = blank_patterns(*frames_in_memory(stack)) if stack.n_frames else np.zeros(0, bool)
    if blank.any() and not blank.all():  # a missed shot in a series: the others still invert
        warnings.warn(
            InputWarning(
                f"{stack.meta.source}: {_frames_named(stack, blank)} hold no measured signal "
                "(all zero or masked): left out, their objects zero and chi2 NaN"
            ),
            stacklevel=2,
        )
        kept = np.flatnonzero(~blank)
        results = yield from invert_steps(
            stack.subset(kept), methods, iterations, refine_iterations, shrinkwrap_threshold,
            device, model_path,
        )  # fmt: skip
        return {method: _spread(result, kept, len(blank)) for method, result in results.items()}
    results: dict[str, ObjectResult] = {}
    network = None
    if "nn" in methods or "refine" in methods:
        network = yield from network_steps(stack, model_path, device)
        if "nn" in methods:
            results["nn"] = network
    on_pattern_grid = network is not None and network.objects.shape[1:] == stack.frame_shape
    if "iterative" in methods:
        recipe = scaled_recipe(iterations, shrinkwrap_threshold)
        reference = network.objects if on_pattern_grid else None  # for twin and phase offset
        results["iterative"] = yield from iterative_steps(stack, recipe, device, reference)
    if "refine" in methods:
        results["refine"] = yield from refine_steps(
            stack, network.objects, refine_iterations, device,
            shrinkwrap_threshold=shrinkwrap_threshold,
        )  # fmt: skip
        refined = results["refine"].provenance  # seeded by this model's answer
        refined.model_name = network.provenance.model_name
        refined.model_version = network.provenance.model_version
    return results


def _spread(result: ObjectResult, kept: np.ndarray, n: int) -> ObjectResult:
    """``result`` of the ``kept`` patterns placed among ``n``: the others zero, chi2 NaN."""
    objects = np.zeros((n, *result.objects.shape[1:]), result.objects.dtype)
    objects[kept] = result.objects
    support = None
    if result.support is not None:
        support = np.zeros((n, *result.support.shape[1:]), bool)
        support[kept] = result.support
    chi2 = np.full(n, np.nan)
    chi2[kept] = result.chi2
    return replace(result, objects=objects, support=support, chi2=chi2)


def scaled_recipe(iterations: int | None, shrinkwrap_threshold: float = 0.2) -> RetrievalRecipe:
    """The default ER/HIO recipe, stretched or shrunk to exactly ``iterations`` in total when
    given (each stage in proportion, the rounding spread over the stages; ER alone when there
    are fewer iterations than stages), shrink-wrapping at least four times when it runs more
    than four: at 40 iterations, shrink-wrap every 20 scored a median correlation of 0.946 on
    noisy simulated patterns (16, seed 4242, 1e6 photons), every 9 0.990 (at 100 and more the
    default's 20 stays best)."""
    recipe = RetrievalRecipe(shrinkwrap_threshold=shrinkwrap_threshold)
    if iterations is None or iterations == recipe.n_iterations:
        return recipe
    names = [name for name, _ in recipe.schedule]
    if iterations < len(names):
        recipe.schedule = [("ER", iterations)]
    else:
        exact = np.array([n for _, n in recipe.schedule]) * iterations / recipe.n_iterations
        counts = np.maximum(1, np.floor(exact)).astype(int)
        for i in np.argsort(counts - exact)[: max(0, iterations - counts.sum())]:
            counts[i] += 1  # the largest fractional parts first
        while counts.sum() > iterations:  # the floor of 1 took too many: from the most over
            counts[np.argmax(np.where(counts > 1, counts - exact, -np.inf))] -= 1
        recipe.schedule = [(name, int(n)) for name, n in zip(names, counts, strict=True)]
    recipe.average_last = min(recipe.average_last, recipe.schedule[-1][1])
    # the loop shrink-wraps after iterations every, 2 every, ... short of the last one
    recipe.shrinkwrap_every = min(recipe.shrinkwrap_every, max(1, (iterations - 1) // 4))
    return recipe
