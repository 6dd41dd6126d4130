"""Peer comparison: APS's ``cohere-core`` (ER/HIO + shrink-wrap) on our 2-D Bragg CDI patterns.

``run_cohere`` reconstructs each centred pattern of an ``(N, H, W)`` intensity stack with
cohere-core's own phasing engine, driven through its public entry points, the way cohere-ui's
``simple_phasing.py`` / ``run_reconstruction.py`` drive it::

    import cohere_core.controller as rec
    worker = rec.create_rec(params, datafile, pkg, device, debug=True)  # Rec object, loop ready
    worker.iterate()                                                     # the whole sequence
    image = worker.get_image()                                           # complex object

with a configuration dict equivalent to our recipe (``RetrievalRecipe``): 620 iterations as
``3*(20*ER+180*HIO)+20*ER``, HIO beta 0.9, Gaussian shrink-wrap (sigma 1 px, threshold 0.1) every
20 iterations, an initial support of half the field.  cohere reads its data from a file (``.npy``
or ``.tif``) holding the *amplitudes* sqrt(I), centred, as its own preprocessing writes them; one
temporary ``.npy`` per pattern is written.

Install (cohere-core's wheel declares sphinx, sphinx-pyproject and scikit-learn, none of which
phasing imports; torch is required only on macOS)::

    pip install --no-deps cohere-core==4.5.4
    pip install tqdm matplotlib tifffile psutil scipy "numpy>=2"   # if not already there

Notes on the equivalence (see ``run_cohere``):

* 2-D arrays work as they are (no (H, W, 1) padding needed) as long as ``twin_trigger`` is not
  set: cohere's twin operation indexes three axes.
* Starting guess: cohere's numpy back end reseeds NumPy's global generator from the clock and the
  process id, so it cannot be seeded.  With an integer ``seed`` the start is drawn here with the
  same distribution cohere uses (uniform real and imaginary parts in [0, 1), inside the initial
  support) and handed over through cohere's documented ``continue_dir`` parameter (a directory
  with ``image.npy``); ``seed=None`` keeps cohere's own unseeded random start.
* cohere's convention is |IFFT(object)| = amplitudes; ours is |FFT(object)|.  The returned objects
  are complex-conjugated (same |FT| on our side, and a member of the same twin class) and scaled so
  that |FFT(object)| best matches sqrt(I), so ``metrics.chi2`` applies unchanged.
* No detector mask: cohere's modulus constraint replaces the amplitude everywhere (it has no
  "unmeasured pixel" notion; zero data are simply enforced as zero).

Run (4 patterns from our simulator; ``--with-ours`` adds our torch retrieval for reference)::

    python benchmarks/peer_cohere.py
    python benchmarks/peer_cohere.py --n 4 --backend np torch --with-ours
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time
import warnings

import numpy as np

DEFAULT_SEQUENCE = "3*(20*ER+180*HIO)+20*ER"


def cohere_params(
    iterations_sequence: str = DEFAULT_SEQUENCE,
    shrink_wrap_threshold: float = 0.1,
    shrink_wrap_gauss_sigma: float = 1.0,
    shrink_wrap_every: int = 20,
    average_last: int = 0,
    hio_beta: float = 0.9,
) -> dict:
    """cohere's reconstruction configuration (the keys of its ``config_rec``) for our recipe."""
    params = {
        "algorithm_sequence": iterations_sequence,
        "hio_beta": hio_beta,
        # cohere runs the shrink-wrap at the start of the triggered iteration, i.e. after
        # iterations 20, 40, ... have been done, as ours does.
        "shrink_wrap_trigger": [shrink_wrap_every, shrink_wrap_every],
        "shrink_wrap_type": "GAUSS",
        "shrink_wrap_threshold": shrink_wrap_threshold,
        "shrink_wrap_gauss_sigma": shrink_wrap_gauss_sigma,
        "initial_support_area": [0.5, 0.5],
    }
    if average_last:
        # amplitude average over the last iterations (cohere keeps the last phase)
        params["average_trigger"] = [-average_last, 1]
    return params


def _seeded_start(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """cohere's random start (uniform real and imaginary parts) inside its initial support."""
    h, w = shape
    start = (rng.random(shape) + 1j * rng.random(shape)).astype(np.complex64)
    support = np.zeros(shape, bool)
    bh, bw = int(0.5 * h), int(0.5 * w)  # cohere: int(area * dim), padded evenly around
    support[(h - bh) // 2 : (h - bh) // 2 + bh, (w - bw) // 2 : (w - bw) // 2 + bw] = True
    return start * support


def run_cohere(
    intensities: np.ndarray,
    iterations_sequence: str = DEFAULT_SEQUENCE,
    shrink_wrap_threshold: float = 0.1,
    backend: str = "np",
    seed: int | None = 0,
    *,
    shrink_wrap_gauss_sigma: float = 1.0,
    shrink_wrap_every: int = 20,
    average_last: int = 0,
    n_starts: int = 1,
    device: int = -1,
    quiet: bool = True,
) -> tuple[np.ndarray, float]:
    """Reconstruct each centred pattern of ``intensities`` (N, H, W) with cohere-core.

    ``backend``: cohere's ``pkg``, ``"np"`` (numpy/scipy) or ``"torch"`` (``"cp"`` for cupy);
    ``device``: GPU id, -1 for the CPU.  ``n_starts`` > 1 runs that many independent starts per
    pattern and keeps the one with the lowest final cohere error (cohere itself would save them
    all).  Returns ``(objects, seconds)``: (N, H, W) complex64 objects centred like the input, in
    our convention (|FFT(object)| ~ sqrt(I)), and the wall time of the whole loop (temporary data
    files, ``create_rec``, ``iterate`` and read-back of every pattern; imports excluded).
    """
    import cohere_core.controller as rec

    intensities = np.asarray(intensities, np.float32)
    if intensities.ndim == 2:
        intensities = intensities[None]
    n, h, w = intensities.shape
    rng = np.random.default_rng(seed) if seed is not None else None
    objects = np.empty((n, h, w), np.complex64)
    sink = io.StringIO()
    with tempfile.TemporaryDirectory(prefix="cohere-peer-") as tmp:
        start_dir = os.path.join(tmp, "start")
        os.makedirs(start_dir)
        datafile = os.path.join(tmp, "data.npy")
        t0 = time.perf_counter()
        for i in range(n):
            # cohere's phasing input: centred amplitudes (its preprocessing stores sqrt(I))
            amplitudes = np.sqrt(np.maximum(intensities[i], 0))
            np.save(datafile, amplitudes)
            best, best_error = None, np.inf
            for _ in range(max(1, n_starts)):
                params = cohere_params(
                    iterations_sequence,
                    shrink_wrap_threshold,
                    shrink_wrap_gauss_sigma,
                    shrink_wrap_every,
                    average_last,
                )
                if rng is not None:
                    np.save(os.path.join(start_dir, "image.npy"), _seeded_start(rng, (h, w)))
                    params["continue_dir"] = start_dir
                with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
                    worker = rec.create_rec(params, datafile, backend, device, debug=True)
                    if worker is None:
                        raise RuntimeError(
                            f"cohere could not set up pattern {i}: {sink.getvalue()}"
                        )
                    if worker.iterate() < 0:
                        raise RuntimeError(f"cohere failed on pattern {i}: {sink.getvalue()}")
                image = worker.get_image()
                image = image.cpu().numpy() if hasattr(image, "cpu") else np.asarray(image)
                error = float(worker.errs[-1])
                if error < best_error:
                    best, best_error = image, error
                sink.seek(0)
                sink.truncate()
            # cohere: |IFFT(x)| = amplitudes; conj(x) gives |FFT| = amplitudes (our convention)
            obj = np.conj(best).astype(np.complex64)
            model = np.abs(np.fft.fft2(np.fft.ifftshift(obj)))
            magnitudes = np.fft.ifftshift(amplitudes)
            obj *= (model * magnitudes).sum() / max(float((model**2).sum()), 1e-30)
            objects[i] = obj
        seconds = time.perf_counter() - t0
    return objects, seconds


def _run_ours(intensities: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """Our iterative retrieval (default recipe, CPU) on the same patterns, for reference."""
    from napari_cdinn.core.retrieval.cdi import run_retrieval

    t0 = time.perf_counter()
    steps = run_retrieval(intensities, device="cpu", seed=seed)
    try:
        while True:
            next(steps)
    except StopIteration as stop:
        objects, _, _ = stop.value
    return objects, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4, help="number of simulated patterns")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--sim-seed", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="starting-guess seed")
    parser.add_argument("--backend", nargs="+", default=["np"], choices=["np", "torch", "cp"])
    parser.add_argument("--n-starts", type=int, default=1, help="cohere starts per pattern")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave)")
    parser.add_argument("--with-ours", action="store_true", help="also run our retrieval")
    args = parser.parse_args(argv)

    import torch

    from napari_cdinn.core import metrics
    from napari_cdinn.core.simulate.cdi import simulate_cdi

    if args.threads:
        torch.set_num_threads(args.threads)
    import cohere_core.controller  # noqa: F401  (import outside the timed loop)

    # cohere's torch Gaussian filter calls torch.meshgrid without ``indexing``
    warnings.filterwarnings("ignore", message="torch.meshgrid", category=UserWarning)

    s = simulate_cdi(args.n, size=args.size, seed=args.sim_seed)
    rows = []
    for backend in args.backend:
        run_cohere(s.intensities[:1], backend=backend, seed=args.seed)  # warm-up, untimed
        objects, seconds = run_cohere(
            s.intensities, backend=backend, seed=args.seed, n_starts=args.n_starts
        )
        starts = f"{args.n_starts} start" + ("s" if args.n_starts > 1 else "")
        rows.append((f"cohere-core ({backend}, {starts})", objects, seconds))
    if args.with_ours:
        _run_ours(s.intensities[:1], seed=args.seed)  # warm-up, untimed
        objects, seconds = _run_ours(s.intensities, seed=args.seed)
        rows.append(("napari-cdinn (torch cpu, 4 starts)", objects, seconds))
    print(f"{args.n} patterns {args.size}x{args.size}, 620 iterations")
    print(
        f"{'method':38s} {'median corr':>11s} {'median chi2':>11s} {'s/pattern':>10s}  per pattern"
    )
    for name, objects, seconds in rows:
        corr = metrics.registered_correlation(objects, s.truth)
        chi2 = np.median(metrics.chi2(objects, s.intensities))
        each = " ".join(f"{c:.3f}" for c in corr)
        print(f"{name:38s} {np.median(corr):11.4f} {chi2:11.2e} {seconds / args.n:10.3f}  {each}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
