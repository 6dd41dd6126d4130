"""Ptychography core: ePIE, its fused CPU steps, geometry, stitching, retraining, bad input."""

from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_cdinn.core import metrics, ptycho
from napari_cdinn.core.data import DiffractionStack, ObjectResult, Provenance, PtychoScan
from napari_cdinn.core.errors import InputError, InputWarning
from napari_cdinn.core.nn.ptycho import (
    FineTuning,
    featureless_loss,
    levelled,
    patch_loss,
    probe_weight,
    sample_patches,
    stitch,
)
from napari_cdinn.core.nn.ptycho_net import PtychoNet
from napari_cdinn.core.nn.registry import list_models, load_model
from napari_cdinn.core.progress import run_to_end
from napari_cdinn.core.retrieval import patches, projections
from napari_cdinn.core.retrieval.ptycho import SUBPIXEL, EpieRecipe, ObjectGrid, check_span
from napari_cdinn.core.simulate.cdi import far_field_intensity
from napari_cdinn.core.simulate.ptycho import exit_waves, focused_probe, simulate_ptycho


@pytest.fixture(scope="module")
def small_scan() -> PtychoScan:
    return simulate_ptycho((128, 128), 64, 8, photons=None, seed=4, textures=("camera", "brick"))


def truth_on_grid(result, scan: PtychoScan) -> tuple[np.ndarray, np.ndarray]:
    """The true object on the result's grid, and the well-scanned pixels."""
    shape = result.objects.shape
    truth = ptycho.on_grid(scan.truth, result.origin, shape)
    seen = ptycho.scanned_region(scan.positions, scan.stack.frame_shape[0], result.origin, shape)
    return truth, seen


def test_epie_reconstructs_a_small_noiseless_scan(small_scan, device):
    result = run_to_end(ptycho.epie_steps(small_scan, EpieRecipe(epochs=40), device=device))
    truth, seen = truth_on_grid(result, small_scan)
    amplitude, phase = metrics.object_ssim(result.objects, truth, seen)
    assert amplitude > 0.9 and phase > 0.9
    errors = result.provenance.parameters["fourier_error"]
    assert errors[-1] < 0.01 * errors[0]
    assert result.provenance.method == "ePIE"


def test_nan_pixels_of_a_lazily_read_scan_are_masked_when_it_is_loaded(small_scan, device):
    """A large stack stays lazy (dask) when read, unrepaired; its NaN pixels are masked, with
    a warning naming the file, when ePIE or the network loads it (they made all-NaN images)."""
    import dask.array as da

    from napari_cdinn.core.data import Metadata
    from napari_cdinn.core.errors import InputWarning

    frames = small_scan.stack.frames().copy()
    frames[3, 10, 12] = np.nan
    stack = DiffractionStack(da.from_array(frames, chunks=(8, 64, 64)), None, Metadata("big.h5"))
    scan = PtychoScan(stack, small_scan.positions, small_scan.probe)
    with pytest.warns(InputWarning, match=r"big\.h5: 1 NaN"):
        result = run_to_end(ptycho.epie_steps(scan, EpieRecipe(epochs=2), device=device))
    assert np.isfinite(result.objects).all()
    with pytest.warns(InputWarning, match="1 NaN"):
        data = ptycho.network_input(scan, 64)
    assert np.isfinite(data.patterns).all() and data.patterns[3, 10, 12] == 0


def test_epie_honours_a_mask_per_frame(small_scan, device):
    """Each frame with dead pixels of its own, holding garbage: ePIE leaves out exactly those
    (fitted with another frame's mask it would fit the garbage) and reconstructs as well as
    without them."""
    rng = np.random.default_rng(5)
    frames = small_scan.stack.frames().copy()
    dead = rng.random(frames.shape) < 0.03
    frames[dead] = 10 * frames.max()
    stack = DiffractionStack(frames, ~dead, small_scan.stack.meta)
    scan = PtychoScan(stack, small_scan.positions, small_scan.probe, truth=small_scan.truth)
    result = run_to_end(ptycho.epie_steps(scan, EpieRecipe(epochs=40), device=device))
    truth, seen = truth_on_grid(result, small_scan)
    amplitude, phase = metrics.object_ssim(result.objects, truth, seen)
    assert amplitude > 0.9 and phase > 0.9


@pytest.mark.parametrize("numba_loops", [True, False])
def test_modulus_step_takes_each_frames_own_mask(monkeypatch, numba_loops):
    """A batch of frames 2 and 0 of a stack with a mask per frame: each spectrum takes its
    frame's measured modulus where that frame's mask holds and keeps its value elsewhere, in
    the numba loops (CPU) and in torch (GPU)."""
    if not numba_loops:
        monkeypatch.setattr(projections, "fused", lambda tensor: False)
    rng = np.random.default_rng(0)
    magnitudes = torch.as_tensor(rng.uniform(1, 2, (3, 8, 8)).astype(np.float32))
    valid = torch.as_tensor(rng.random((3, 8, 8)) < 0.5)
    waves = rng.normal(size=(2, 8, 8)) + 1j * rng.normal(size=(2, 8, 8))
    spectrum = torch.as_tensor(waves.astype(np.complex64))
    before = spectrum.clone()
    frames = torch.tensor([2, 0])
    projections.set_modulus_(spectrum, magnitudes, valid, frames=frames)
    for b, frame in enumerate(frames.tolist()):
        measured = valid[frame]
        assert torch.equal(spectrum[b][~measured], before[b][~measured])
        assert torch.allclose(spectrum[b].abs()[measured], magnitudes[frame][measured], rtol=1e-5)


def test_probe_update_recovers_from_a_wrong_probe(small_scan, device):
    wrong = focused_probe(64, np.random.default_rng(123), defocus=4.0)
    scan = PtychoScan(small_scan.stack, small_scan.positions, wrong, truth=small_scan.truth)
    fixed = run_to_end(ptycho.epie_steps(scan, EpieRecipe(150, probe_update_from=None), device))
    updated = run_to_end(ptycho.epie_steps(scan, EpieRecipe(150, probe_update_from=2), device))
    truth, seen = truth_on_grid(updated, small_scan)
    assert metrics.object_ssim(updated.objects, truth, seen)[1] > 0.9
    assert metrics.object_ssim(fixed.objects, truth, seen)[1] < 0.8
    errors = [r.provenance.parameters["fourier_error"][-1] for r in (fixed, updated)]
    assert errors[1] < 0.2 * errors[0]


def test_epie_from_the_network_image_beats_a_flat_start_at_equal_epochs(device):
    scan = simulate_ptycho((160, 160), 64, 10, photons=1e6, seed=7, textures=("camera", "coins"))
    recipe = EpieRecipe(epochs=3)
    flat = run_to_end(ptycho.epie_steps(scan, recipe, device=device))
    refined = run_to_end(ptycho.refine_steps(scan, recipe=recipe, device=device))
    truth, seen = truth_on_grid(refined, scan)
    flat_phase = metrics.object_ssim(flat.objects, truth, seen)[1]
    refined_phase = metrics.object_ssim(refined.objects, truth, seen)[1]
    assert refined_phase > flat_phase + 0.05, (refined_phase, flat_phase)  # 0.57 against 0.47
    assert refined.provenance.method == "NN+ePIE"
    assert refined.provenance.model_name == "ptycho_nn" and refined.probe is not None
    assert len(refined.provenance.parameters["fourier_error"]) == 3


def test_a_starting_object_off_the_grid_or_with_nan_is_refused(small_scan, device):
    grid = ObjectGrid.around(small_scan.positions, small_scan.stack.frame_shape)
    for start, message in ((np.ones((5, 5)), "grid"), (np.full(grid.shape, np.nan), "non-finite")):
        with pytest.raises(ValueError, match=message):
            run_to_end(ptycho.epie_steps(small_scan, EpieRecipe(epochs=1), device, start=start))


def test_grid_places_sub_pixel_positions():
    positions = np.array([[-3.2, 10.0], [5.51, 7.126]])
    grid = ObjectGrid.around(positions, (16, 16), margin=2)
    assert grid.origin == (-6.0, 5.0)
    corners, bins = grid.corners(positions)
    assert corners.tolist() == [[2, 5], [11, 2]]
    fractions = np.stack([bins // SUBPIXEL, bins % SUBPIXEL], -1) / SUBPIXEL
    assert np.allclose(corners + fractions + grid.origin, positions, atol=0.5 / SUBPIXEL)
    assert (corners + 16 <= np.asarray(grid.shape)).all()


def test_fused_cpu_steps_match_the_torch_ones(monkeypatch):
    """The numba loops (CPU) and the torch expressions (GPU) compute the same batch update."""
    generator = torch.Generator().manual_seed(5)
    obj = torch.randn((40, 50), dtype=torch.complex64, generator=generator)
    bank = torch.randn((SUBPIXEL**2, 16, 16), dtype=torch.complex64, generator=generator)
    power = projections.intensity(bank)
    corners = torch.tensor([[0, 0], [3, 5], [20, 30], [24, 34], [3, 6]])  # overlapping patches
    bins = torch.tensor([0, 9, SUBPIXEL**2 - 1, 9, 1])
    magnitudes = torch.rand((5, 16, 16), generator=generator)
    measured = torch.rand((5, 16, 16), generator=generator) > 0.1

    def one_batch() -> tuple[torch.Tensor, ...]:
        current = obj.clone()
        workers = patches.probe_sum_workers(obj.device) if patches.fused(obj) else 1
        numerator = torch.zeros((workers, *bank.shape), dtype=bank.dtype)
        denominator = torch.zeros((workers, *bank.shape))
        waves = patches.exit_waves(current, corners, bank, bins)
        spectrum = torch.fft.fft2(waves, norm="ortho")
        error = projections.set_modulus_(spectrum, magnitudes, measured, True, correction=True)
        change = torch.fft.ifft2(spectrum, norm="ortho")
        sums = (numerator, denominator)
        patches.update_(current, sums, corners, bank, power, bins, change, 0.1, float(power.max()))
        return (
            waves,
            torch.tensor(float(error)),
            change,
            numerator.sum(0),
            denominator.sum(0),
            current,
        )

    fused = one_batch()
    for module in (patches, projections):
        monkeypatch.setattr(module, "fused", lambda tensor: False)
    reference = one_batch()
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    untouched = torch.ones(obj.shape, dtype=torch.bool)
    untouched[:19, :22] = untouched[20:40, 30:50] = False
    assert torch.equal(fused[-1][untouched], obj[untouched])


def test_bad_scans_are_refused_with_the_reason(small_scan, device):
    stack, positions = small_scan.stack, small_scan.positions
    zeros = replace(stack, intensities=np.zeros(stack.shape, np.float32))
    unmeasured = replace(stack, mask=np.zeros(stack.frame_shape, bool))
    huge = stack.intensities / stack.intensities.max() * 1e37  # finite, but sums overflow
    cases = [
        ("positions for", PtychoScan(stack, positions[:-1], small_scan.probe)),
        ("one position", PtychoScan(stack.subset([0]), positions[:1], small_scan.probe)),
        ("NaN", PtychoScan(stack, np.where(positions == positions[3], np.nan, positions))),
        ("probe is", PtychoScan(stack, positions, small_scan.probe[:32, :32])),
        ("no signal", PtychoScan(zeros, positions)),
        ("no signal", PtychoScan(unmeasured, positions, small_scan.probe)),
        (
            "overflow single precision",
            PtychoScan(replace(stack, intensities=huge.astype(np.float32)), positions),
        ),
    ]
    stray = positions.copy()
    stray[5] += 1e4  # one position far off, or all in micrometres: gigabytes of object array
    holed = small_scan.probe.copy()
    holed[3, 3] = np.nan
    unusable = [
        ("a stray position", PtychoScan(stack, stray, small_scan.probe)),
        ("another unit", PtychoScan(stack, positions * 1e6, small_scan.probe)),
        ("probe holds 1 NaN", PtychoScan(stack, positions, holed)),
        ("zero everywhere", PtychoScan(stack, positions, np.zeros_like(small_scan.probe))),
    ]
    line = np.column_stack([np.arange(100) * 32.0, np.arange(100) * 32.0])  # real, if odd
    check_span(line, (64, 64), "line.cxi")  # a diagonal line: a 3232^2 array, allowed
    check_span(np.array([[0.0, 0.0], [870.0, 870.0]]), (64, 64), "two.cxi")  # 934^2
    metres = PtychoScan(stack, positions * 1e-7, small_scan.probe)  # all within one pixel
    with pytest.raises(InputError, match="all lie within one object pixel"):
        run_to_end(ptycho.epie_steps(metres, EpieRecipe(epochs=1), device=device))
    for words, scan in cases + unusable:
        with pytest.raises(InputError, match=words):
            run_to_end(ptycho.epie_steps(scan, EpieRecipe(epochs=1), device=device))
    for words, scan in unusable:  # the network's path too, before any array is made
        with pytest.raises(InputError, match=words):
            run_to_end(ptycho.network_steps(scan, device=device))
    one = run_to_end(ptycho.network_steps(cases[1][1], device=device))  # needs no overlap
    assert min(one.objects.shape) >= 64 and np.isfinite(one.objects).all()


def test_epie_warns_when_the_frames_do_not_overlap(small_scan, device):
    """Positions a frame or more apart: ePIE runs but says it cannot join the patches."""
    apart = small_scan.positions * 10  # steps of 80 pixels for frames of 64
    scan = PtychoScan(small_scan.stack, apart, small_scan.probe)
    with pytest.warns(InputWarning, match="the frames do not overlap"):
        run_to_end(ptycho.epie_steps(scan, EpieRecipe(epochs=1), device=device))
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)  # an overlapping scan: no warning
        run_to_end(ptycho.epie_steps(small_scan, EpieRecipe(epochs=1), device=device))


def stitching_case(scan: PtychoScan, size: int = 64):
    """The scan's grid, probe weights, well-scanned pixels and the truth on the grid."""
    grid = ObjectGrid.around(scan.positions, (size, size))
    weight = probe_weight(scan.probe, size, size)
    seen = ptycho.scanned_region(scan.positions, size, grid.origin, grid.shape)
    return grid, weight, seen, ptycho.on_grid(scan.truth, grid.origin, grid.shape)


def test_stitching_the_true_patches_returns_the_true_object(small_scan):
    size = 64
    grid, weight, seen, truth = stitching_case(small_scan, size)
    whole = np.round(small_scan.positions)  # whole pixels: sampling and splatting are exact
    patches = sample_patches(small_scan.truth, (0.0, 0.0), whole, size)
    stitched = stitch(patches, whole, weight, grid.origin, grid.shape)
    np.testing.assert_allclose(stitched[seen], truth[seen], atol=1e-5)
    patches = sample_patches(small_scan.truth, (0.0, 0.0), small_scan.positions, size)
    stitched = stitch(patches, small_scan.positions, weight, grid.origin, grid.shape)
    assert metrics.object_ssim(stitched, truth, seen)[1] > 0.95  # sub-pixel: bilinear, twice


def test_a_network_of_central_patches_sees_the_middle_of_each_window(small_scan):
    """A model predicting 32 x 32 patches: they are the middle of each 64-pixel window, and the
    true middles stitched at the corners network_input gives return the true object."""
    model = PtychoNet(size=64, width=8, mixing=4, patch=32)
    amplitude, phase = model(torch.zeros(2, 1, 64, 64))
    assert amplitude.shape == phase.shape == (2, 32, 32)
    whole = PtychoScan(small_scan.stack, np.round(small_scan.positions), small_scan.probe)
    data = ptycho.network_input(whole, 64, 32)
    np.testing.assert_allclose(data.corners, whole.positions + 16)
    assert data.weight.shape == (32, 32) and data.weight.max() == 1
    patches = sample_patches(small_scan.truth, (0.0, 0.0), data.corners, 32)
    stitched = stitch(patches, data.corners, data.stitch_weight, data.grid.origin, data.grid.shape)
    truth = ptycho.on_grid(small_scan.truth, data.grid.origin, data.grid.shape)
    seen = np.abs(stitched) > 0
    assert seen.sum() > 0.3 * seen.size
    np.testing.assert_allclose(stitched[seen], truth[seen], atol=1e-5)


def test_stitching_sets_each_patch_constant_phase_from_its_neighbours(small_scan):
    """A diffraction pattern cannot fix its patch's constant phase; the overlaps must."""
    grid, weight, seen, truth = stitching_case(small_scan)
    whole = np.round(small_scan.positions)
    patches = sample_patches(small_scan.truth, (0.0, 0.0), whole, 64)
    turns = np.exp(1j * np.random.default_rng(3).uniform(-np.pi, np.pi, len(patches)))
    turned = (patches * turns[:, None, None]).astype(np.complex64)
    stitched = stitch(turned, whole, weight, grid.origin, grid.shape)
    aligned = metrics.matched(stitched, truth, seen)  # one global phase stays free
    np.testing.assert_allclose(aligned[seen], truth[seen], atol=1e-4)
    unsynchronised = stitch(turned, whole, weight, grid.origin, grid.shape, synchronise=False)
    assert metrics.object_ssim(unsynchronised, truth, seen)[1] < 0.9


def test_levelling_gives_each_patch_the_transmission_its_counts_measure(small_scan):
    """Patches whose amplitudes are off by a factor each (as a network's are) get back their
    true levels, up to one common factor, from the patterns' total counts."""
    whole = np.round(small_scan.positions)  # whole pixels: the probe is not shifted
    patterns = far_field_intensity(exit_waves(small_scan.truth, small_scan.probe, whole))
    scan = PtychoScan(DiffractionStack(patterns), whole, small_scan.probe)
    data = ptycho.network_input(scan, 64)
    truth = sample_patches(small_scan.truth, (0.0, 0.0), data.corners, 64)
    off = np.random.default_rng(5).uniform(0.5, 2.0, len(truth))
    levelled_patches = levelled(truth * off[:, None, None], data.counts, data.lit)
    ratio = np.abs(levelled_patches).sum(axis=(1, 2)) / np.abs(truth).sum(axis=(1, 2))
    np.testing.assert_allclose(ratio / np.median(ratio), 1.0, rtol=1e-4)
    assert np.std(np.log(off)) > 0.3  # the patches really were off


def test_a_mask_per_frame_keeps_levelling_on_the_pixels_all_frames_measure(small_scan):
    """One pixel masked in one frame (a saturated pixel, a NaN) does not stop levelling: the
    counts compared are those over the pixels every frame measures, so the frame with the
    extra masked pixel is levelled like the others."""
    whole = np.round(small_scan.positions)
    patterns = far_field_intensity(exit_waves(small_scan.truth, small_scan.probe, whole))
    mask = np.ones(patterns.shape, bool)
    mask[2, 32, 32] = False  # the brightest pixel of one frame
    stack = replace(DiffractionStack(patterns), mask=mask)
    data = ptycho.network_input(PtychoScan(stack, whole, small_scan.probe), 64)
    assert data.lit is not None
    truth = sample_patches(small_scan.truth, (0.0, 0.0), data.corners, 64)
    off = np.random.default_rng(6).uniform(0.5, 2.0, len(truth))
    ratio = np.abs(levelled(truth * off[:, None, None], data.counts, data.lit)).sum(
        axis=(1, 2)
    ) / np.abs(truth).sum(axis=(1, 2))
    np.testing.assert_allclose(ratio / np.median(ratio), 1.0, rtol=2e-2)
    # masks that differ everywhere (2 % of the pixels, at random, in each frame) share too few
    # pixels to compare counts by: not levelled, and said
    scattered = np.random.default_rng(7).random(patterns.shape) > 0.02
    stack = replace(DiffractionStack(patterns), mask=scattered)
    with pytest.warns(InputWarning, match="not levelled to their counts"):
        data = ptycho.network_input(PtychoScan(stack, whole, small_scan.probe), 64)
    assert data.lit is None


def test_the_network_weighs_by_the_probe_given_or_the_scan_own(small_scan, device):
    """Levelling needs a probe: the one given (ePIE's, in the dock), else the scan's; without
    either the patches are only stitched; a probe of another size is refused by name."""
    bare = PtychoScan(small_scan.stack, small_scan.positions, None)
    model = list_models("ptycho")[0]
    for scan, probe, expected in (
        (bare, None, (None, False)),
        (bare, small_scan.probe, ("given", True)),
        (small_scan, None, ("scan's", True)),
    ):
        result = run_to_end(ptycho.network_steps(scan, model, device, probe=probe))
        used = result.provenance.parameters
        assert (used["probe"], used["levelled_to_counts"]) == expected
    with pytest.raises(InputError, match="not a probe of these frames"):
        run_to_end(ptycho.network_steps(bare, model, device, probe=small_scan.probe[:32, :32]))


def test_the_patch_loss_ignores_each_patch_constant_phase():
    generator = torch.Generator().manual_seed(0)
    target = torch.polar(torch.rand(3, 8, 8, generator=generator) + 0.5,
                         torch.rand(3, 8, 8, generator=generator) * 2 - 1)  # fmt: skip
    weight = torch.rand(8, 8, generator=generator)
    amplitude, phase = target.abs(), target.angle()
    shifted = phase + torch.tensor([0.0, 2.0, -3.0])[:, None, None]  # one constant per patch
    assert float(patch_loss(amplitude, shifted, target, weight)) < 1e-5
    assert float(patch_loss(amplitude, phase + 0.3 * torch.rand(3, 8, 8), target, weight)) > 0.01


def test_a_region_selects_exactly_the_positions_whose_patches_lie_inside(small_scan):
    data = ptycho.network_input(small_scan, 64)
    grid = data.grid
    y0, y1, x0, x1 = rectangle = (-1.0, 100.0, -1.0, 110.0)  # in scan coordinates
    region = ptycho.region_mask(grid, rectangle=rectangle)
    chosen = ptycho.positions_in_region(data, region, 64)
    low, high = data.corners, data.corners + 64 + 1  # bilinear patches touch one more pixel
    inside = (
        (np.floor(low[:, 0]) >= y0) & (np.floor(low[:, 1]) >= x0)
        & (np.floor(low[:, 0]) + 65 <= y1) & (np.floor(low[:, 1]) + 65 <= x1)
    )  # fmt: skip
    assert set(chosen) == set(np.flatnonzero(inside)) and 0 < len(chosen) < len(low)
    assert (high[chosen] <= [y1 + 1, x1 + 1]).all()
    triangle = np.array([[y0, x0], [y1 + 60, x0], [y0, x1 + 60]])
    in_triangle = ptycho.positions_in_region(data, ptycho.region_mask(grid, polygon=triangle), 64)
    assert set(in_triangle) < set(chosen)


def tiny_model() -> PtychoNet:
    torch.manual_seed(0)
    return PtychoNet(size=64, width=8, mixing=4)


def epie_like_reference(scan: PtychoScan) -> ObjectResult:
    """The truth as a stitched result on the scan's grid (a perfect teacher, fast)."""
    grid = ObjectGrid.around(scan.positions, scan.stack.frame_shape)
    objects = ptycho.on_grid(scan.truth, grid.origin, grid.shape)
    return ObjectResult(objects, Provenance("truth"), probe=scan.probe, origin=grid.origin)


def test_fine_tuning_lowers_the_validation_loss_and_stop_keeps_the_best(small_scan, device):
    reference = epie_like_reference(small_scan)
    grid = ObjectGrid.around(small_scan.positions, (64, 64))
    region = np.ones(grid.shape, bool)
    run = FineTuning(load_model(ptycho.default_model())[0])  # as the dock does: from the bundled
    steps = ptycho.retrain_steps(
        small_scan, reference, region, run, 600, device, max_epochs=4, simulated=300
    )
    run_to_end(steps)
    losses = [h["validation"] for h in run.history]
    assert len(losses) == 4 and min(losses[1:]) < losses[0]
    assert run.source["positions"] == len(small_scan.positions)
    assert run.source["simulated_pairs"] == 300

    stopped = FineTuning(tiny_model())
    steps = ptycho.retrain_steps(small_scan, reference, region, stopped, seconds=600, device=device)
    while len(stopped.history) < 1:
        next(steps)
    steps_in_an_epoch = 0  # Stop acts at the next yield: one after every batch, not epoch
    while len(stopped.history) < 2:
        next(steps)
        steps_in_an_epoch += 1
    assert steps_in_an_epoch >= 10  # an epoch here is some 70 batches of 32 pairs
    next(steps)
    steps.close()  # what Stop does (the worker quits at its next yield)
    assert len(stopped.history) == 2 and stopped.best_state is not None
    amplitude, _ = stopped.best_model()(torch.zeros(1, 1, 64, 64, device=device))
    assert torch.isfinite(amplitude).all()


def test_the_retrained_model_is_averaged_with_its_base_unless_the_probe_was_new(small_scan, device):
    reference = epie_like_reference(small_scan)
    region = np.ones(ObjectGrid.around(small_scan.positions, (64, 64)).shape, bool)
    model = tiny_model()
    start = {name: value.to(device, copy=True) for name, value in model.state_dict().items()}
    run = FineTuning(model)
    run_to_end(ptycho.retrain_steps(small_scan, reference, region, run, 60, device, 1, 0))
    assert run.share == 0.5 and run.source["fine_tuned_share"] == 0.5
    weight = "amplitude_decoder.1.0.weight"
    final = run.best_model().state_dict()[weight]
    expected = (start[weight] + run.best_state[weight]) / 2
    torch.testing.assert_close(final, expected)
    assert not torch.allclose(run.best_state[weight], start[weight])  # it did learn

    # an untrained network knows no probe: batch statistics adapt and nothing is averaged
    new_probe = FineTuning(tiny_model())
    run_to_end(ptycho.retrain_steps(small_scan, reference, region, new_probe, 60, device, 1, 64))
    assert new_probe.source["adapted_batch_statistics"] and new_probe.share == 1
    torch.testing.assert_close(
        new_probe.best_model().state_dict()[weight], new_probe.best_state[weight]
    )


def test_retraining_takes_a_scan_with_a_mask_per_frame(tmp_path, small_scan, device):
    """Dead pixels of its own in each frame: the simulated pairs are masked where any frame is
    dead, and retraining runs (it broadcast the stack's mask onto the pairs and failed). The
    saved model's card names the device it learnt on."""
    dead = np.random.default_rng(2).random(small_scan.stack.shape) < 0.02
    stack = DiffractionStack(small_scan.stack.frames(), ~dead, small_scan.stack.meta)
    scan = PtychoScan(stack, small_scan.positions, small_scan.probe, truth=small_scan.truth)
    region = np.ones(ObjectGrid.around(scan.positions, (64, 64)).shape, bool)
    run = FineTuning(tiny_model())
    reference = epie_like_reference(small_scan)
    run_to_end(ptycho.retrain_steps(scan, reference, region, run, 60, device, 1, 48))
    assert run.source["simulated_pairs"] == 48 and len(run.history) == 1  # 48: not the frames' 64
    card = load_model(ptycho.save_fine_tuned(run, tmp_path / "m", {}, "all"))[1]["training"]
    assert card["device"].startswith(device) and ("GPU" in card["machine"]) == (device == "cuda")


def test_a_model_name_with_dots_keeps_them_when_saved(tmp_path):
    from napari_cdinn.core.nn.registry import weights_path

    assert weights_path(tmp_path / "scan_v1.2_retrained").name == "scan_v1.2_retrained.safetensors"
    assert weights_path(tmp_path / "mine.safetensors").name == "mine.safetensors"


def test_pairs_simulated_from_a_reference_are_its_own_patterns_turned():
    """Few-shot retraining adds pairs simulated from the reference and its probe: at a scan
    position, unturned, they are the scan's own pattern and patch; a turned window's target is
    the turned patch."""
    scan = simulate_ptycho((128, 128), frame=64, step=8, photons=None, seed=2)
    corners = np.floor(scan.positions[:6]).astype(int)
    measured = far_field_intensity(exit_waves(scan.truth, scan.probe, corners.astype(float)))
    intensity, targets = ptycho.windowed_pairs(
        scan.truth, scan.probe, corners, np.zeros(6, int), 32
    )
    np.testing.assert_allclose(intensity, measured, rtol=1e-3, atol=1e-3 * measured.max())
    (y, x), truth = corners[0] + 16, scan.truth
    np.testing.assert_array_equal(targets[0], truth[y : y + 32, x : x + 32])
    for turn, turned in (
        (1, targets[:, ::-1]),
        (2, targets[:, :, ::-1]),
        (4, targets.transpose(0, 2, 1)),
    ):
        _, got = ptycho.windowed_pairs(scan.truth, scan.probe, corners, np.full(6, turn), 32)
        np.testing.assert_array_equal(got, turned)


@pytest.mark.parametrize("photons", [1e5, None])
def test_simulated_pairs_have_the_scans_counts_and_its_noise(small_scan, photons):
    """Whole-number patterns are photon counts: the pairs get Poisson noise at the scan's mean
    counts. Patterns in other units (here normalised to a sum of 1) are simulated noiseless:
    Poisson noise at a "count" of 1 left them blank."""
    frames = small_scan.stack.frames()
    frames = frames / frames.sum(axis=(-2, -1), keepdims=True)
    if photons:
        frames = np.random.default_rng(0).poisson(frames * photons).astype(np.float32)
    scan = replace(small_scan, stack=replace(small_scan.stack, intensities=frames))
    data = ptycho.network_input(scan, 64)
    region = np.ones(data.grid.shape, bool)
    teacher = epie_like_reference(small_scan).objects
    chosen = np.arange(len(data.corners))
    patterns, _ = run_to_end(
        ptycho.resimulated_pairs(teacher, small_scan.probe, data, chosen, region, 40, 64)
    )
    sums = patterns.sum(axis=(-2, -1))
    np.testing.assert_allclose(sums.mean(), frames.sum(axis=(-2, -1)).mean(), rtol=0.01)
    assert np.all(np.mod(patterns, 1) == 0) == bool(photons)
    assert np.count_nonzero(patterns) > 0.5 * patterns.size


def test_the_featureless_level_lies_between_the_right_answer_and_its_twin():
    """Retraining adapts the batch statistics while the network does no better than a
    featureless answer (a probe unlike its pretraining's); the right answer scores below that
    level and the twin image (the conjugate) above it."""
    torch.manual_seed(0)
    targets = torch.polar(
        1 + 0.2 * torch.rand(6, 16, 16), torch.pi / 2 * (torch.rand(6, 16, 16) - 0.5)
    )
    weight = torch.ones(16, 16)
    level = featureless_loss(targets, weight)
    flat = targets.abs().mean((-2, -1), keepdim=True).expand_as(targets)
    assert level == pytest.approx(float(patch_loss(flat, 0 * flat, targets, weight)))
    assert float(patch_loss(targets.abs(), targets.angle(), targets, weight)) < 1e-6 < level
    twin = targets.conj()
    assert float(patch_loss(twin.abs(), twin.angle(), targets, weight)) > level


def test_saved_models_load_back_identical_and_damaged_ones_are_refused(
    tmp_path, small_scan, device
):
    run = FineTuning(tiny_model())
    card = {"name": "base", "version": "1", "architecture": "PtychoNet"}
    path = ptycho.save_fine_tuned(run, tmp_path / "mine", card, "y 0:10, x 0:10")
    loaded, saved_card = load_model(path)
    assert saved_card["mode"] == "ptycho" and saved_card["training"]["region"] == "y 0:10, x 0:10"
    x = torch.rand(2, 1, 64, 64)
    for a, b in zip(run.best_model()(x), loaded(x), strict=True):
        torch.testing.assert_close(a, b)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(InputError, match="safetensors"):
        load_model(path)
    cdi_model = sorted(p for p in list_models("cdi"))[0]
    with pytest.raises(InputError, match="not a ptychography"):
        run_to_end(ptycho.network_steps(small_scan, cdi_model, device=device))


def test_odd_frames_work_in_epie_and_are_refused_by_the_network(device):
    scan = simulate_ptycho((96, 96), frame=33, step=6, photons=None, seed=1)
    result = run_to_end(ptycho.epie_steps(scan, EpieRecipe(epochs=3), device=device))
    assert np.isfinite(result.objects).all()
    with pytest.raises(InputError, match="33 pixels wide"):
        ptycho.network_input(scan, 64)


def test_the_scanned_region_of_oblong_frames_follows_each_axis():
    """Frames 16 high and 8 wide at one position: the well-scanned pixels are their central
    half along each axis, 8 x 4 (a square of the height's half reached beyond the frame)."""
    region = ptycho.scanned_region(np.array([[0.0, 0.0]]), (16, 8), (0.0, 0.0), (20, 20))
    rows, columns = np.nonzero(region)
    assert (rows.min(), rows.max(), columns.min(), columns.max()) == (4, 11, 2, 5)
    square = ptycho.scanned_region(np.array([[0.0, 0.0]]), 8, (0.0, 0.0), (20, 20))
    assert square.sum() == 16


def test_a_wholly_masked_frame_is_left_out_and_blanks_no_simulated_pattern(small_scan, device):
    """A frame of NaN becomes a wholly masked one: the network leaves it out (its patch would
    be a guess from nothing), and the simulated training pairs keep every pixel the measuring
    frames share instead of none."""
    mask = np.ones(small_scan.stack.shape, bool)
    mask[3] = False
    mask[:, 0, 0] = False
    masked = PtychoScan(
        replace(small_scan.stack, mask=mask), small_scan.positions, small_scan.probe
    )
    with pytest.warns(InputWarning, match=r"1 frame\(s\) hold no measured counts.*frames \[3\]"):
        data = ptycho.network_input(masked, 64)
    assert len(data.patterns) == len(small_scan.positions) - 1
    assert data.grid == ptycho.network_input(small_scan, 64).grid  # still ePIE's grid
    assert data.lit is not None  # the others share one mask: their counts still level
    # frames named as the file numbers them (--frames 100:), through a further selection too
    n = len(small_scan.positions)
    numbered = replace(
        masked.stack, meta=replace(masked.meta, extra={"frames": [*range(100, 100 + n)]})
    )
    part = PtychoScan(numbered, small_scan.positions, small_scan.probe).subset(slice(2, None))
    with pytest.warns(InputWarning, match=r"frames \[103\]"):
        ptycho.network_input(part, 64)
    shared = ptycho.measured_everywhere(mask)
    assert shared.sum() == shared.size - 1 and not shared[0, 0]
    with pytest.warns(InputWarning):
        result = run_to_end(ptycho.network_steps(masked, device=device))
    assert np.isfinite(result.objects).all()


def test_a_reference_is_refused_under_its_own_name(small_scan, device):
    """The reference's file (or layer) is named when its probe or grid does not fit the scan,
    not the scan it was made from."""
    reference = epie_like_reference(small_scan)
    region = np.ones(ObjectGrid.around(small_scan.positions, (64, 64)).shape, bool)
    small_probe = replace(reference, probe=reference.probe[:32, :32])
    shifted_grid = replace(reference, origin=(reference.origin[0] + 3, reference.origin[1]))
    for bad, words in ((small_probe, "probe is 32 x 32"), (shifted_grid, "object array")):
        with pytest.raises(InputError, match=f"^recon.h5: .*{words}"):
            run_to_end(
                ptycho.retrain_steps(
                    small_scan, bad, region, FineTuning(tiny_model()), device=device,
                    reference_name="recon.h5",
                )
            )  # fmt: skip


def test_a_reference_of_another_scan_is_refused(small_scan, device):
    other = simulate_ptycho((160, 160), frame=64, step=8, photons=None, seed=5)
    with pytest.raises(InputError, match="not a reconstruction of this scan"):
        run_to_end(
            ptycho.retrain_steps(
                small_scan, epie_like_reference(other), np.ones((10, 10), bool),
                FineTuning(tiny_model()), device=device,
            )
        )  # fmt: skip


def test_a_reference_from_another_file_warns_and_a_region_off_the_scan_says_where_it_is(
    small_scan, device
):
    """A repeated scan shares the grid, so the grid check passes: the reference's own record
    of its source file is what tells; a region that misses the scan names the scan's extent."""
    reference = epie_like_reference(small_scan)
    scan = replace(small_scan, stack=replace(small_scan.stack, meta=replace(
        small_scan.meta, source="/data/scan_0002.cxi")))  # fmt: skip
    other = replace(
        reference, provenance=replace(reference.provenance, source="/data/scan_0001.cxi")
    )
    grid = ObjectGrid.around(small_scan.positions, (64, 64))
    off = np.zeros(grid.shape, bool)  # a region holding no position
    with (
        pytest.warns(InputWarning, match="reconstructed from /data/scan_0001.cxi, not from this"),
        pytest.raises(InputError, match=r"holds 0 scan positions.*the patches span rows"),
    ):
        run_to_end(ptycho.retrain_steps(scan, other, off, FineTuning(tiny_model()), device=device))


def test_retraining_without_a_probe_says_the_simulated_pairs_are_left_out(small_scan, device):
    bare = PtychoScan(small_scan.stack, small_scan.positions, None)
    reference = replace(epie_like_reference(small_scan), probe=None)
    region = np.ones(ObjectGrid.around(small_scan.positions, (64, 64)).shape, bool)
    run = FineTuning(tiny_model())
    with pytest.warns(InputWarning, match="the 100 asked for are left out"):
        run_to_end(ptycho.retrain_steps(bare, reference, region, run, 600, device, max_epochs=1,
                                        simulated=100))  # fmt: skip
    assert run.source["simulated_pairs"] == 0


def test_a_reference_with_nan_or_a_probe_of_another_size_is_refused(small_scan, device):
    grid = ObjectGrid.around(small_scan.positions, (64, 64))
    region = np.ones(grid.shape, bool)
    reference = epie_like_reference(small_scan)
    holed = reference.objects.copy()
    holed[40, 40] = np.nan
    for bad, problem in (
        (replace(reference, objects=holed), "1 non-finite"),
        (replace(reference, probe=np.ones((32, 32), np.complex64)), "32 x 32 pixels"),
    ):
        with pytest.raises(InputError, match=problem):
            run_to_end(
                ptycho.retrain_steps(small_scan, bad, region, FineTuning(tiny_model()), 5, device)
            )


def test_a_reference_with_nan_where_the_simulated_frames_reach_is_refused(small_scan, device):
    """The pairs simulated from the reference are whole frames around patches inside the
    region: a model of 32-pixel patches in 64-pixel frames reads 16 pixels past the region."""
    grid = ObjectGrid.around(small_scan.positions, (64, 64))
    region = np.zeros(grid.shape, bool)
    region[:100, :100] = True
    reference = epie_like_reference(small_scan)
    holed = reference.objects.copy()
    holed[108, 50] = np.nan  # outside the region, within the frames' reach
    with pytest.raises(InputError, match=r"1 non-finite .* within 16 pixels"):
        run_to_end(
            ptycho.retrain_steps(
                small_scan, replace(reference, objects=holed), region,
                FineTuning(PtychoNet(size=64, width=8, mixing=4, patch=32)), 5, device,
            )
        )  # fmt: skip


def test_scores_ignore_the_linear_phase_ramp_ptychography_cannot_fix(small_scan):
    truth = small_scan.truth.astype(np.complex128)
    yy, xx = np.indices(truth.shape)
    ramped = 0.7 * truth * np.exp(1j * (0.02 * yy - 0.03 * xx + 1.0))  # object e^(i g.r)
    np.testing.assert_allclose(metrics.object_ssim(ramped, truth), (1.0, 1.0), atol=1e-6)
    curvature = 2.0 * ((yy - 64) ** 2 + (xx - 64) ** 2) / 64**2
    curved = truth * np.exp(1j * curvature)  # a phase error that is not a ramp
    assert metrics.object_ssim(curved, truth)[1] < 0.95


def test_a_checkpoint_of_another_network_is_refused_by_name(tmp_path):
    """Pretraining resumes from its work folder; one left by a run with other arguments (here
    the patch size) must not be loaded into, or mistaken for, this run's network."""
    from napari_cdinn.core.nn.training import Log, resume, save_checkpoint

    checkpoint = tmp_path / "checkpoint.pt"
    log = Log(tmp_path / "log.txt")
    model = tiny_model()
    state = {"epoch": 3, "elapsed_s": 60.0, "history": []}
    save_checkpoint(checkpoint, model, torch.optim.Adam(model.parameters()), state)
    same = tiny_model()
    assert resume(checkpoint, same, torch.optim.Adam(same.parameters()), log)["epoch"] == 3
    other = PtychoNet(size=64, width=8, mixing=4, patch=32)
    with pytest.raises(InputError, match="another --workdir"):
        resume(checkpoint, other, torch.optim.Adam(other.parameters()), log)


def test_a_checkpoint_of_another_recipe_is_refused_and_its_own_resumes(tmp_path):
    """A quick try (another seed or data size) left in the work folder must not lend its
    model to the full run, which would write it under a card describing the full recipe."""
    from napari_cdinn.core.nn.training import Log, resume, save_checkpoint

    checkpoint = tmp_path / "checkpoint.pt"
    log = Log(tmp_path / "log.txt")
    model = tiny_model()
    optimizer = torch.optim.Adam(model.parameters())
    quick = {"seed": 1, "n_scans": 20, "batch": 64}
    state = resume(checkpoint, model, optimizer, log, quick)  # nothing yet: a fresh start
    state["epoch"] = 2
    save_checkpoint(checkpoint, model, optimizer, state)
    same = tiny_model()
    assert resume(checkpoint, same, torch.optim.Adam(same.parameters()), log, quick)["epoch"] == 2
    with pytest.raises(InputError, match=r"'seed': 1.*not.*'seed': 0"):
        resume(checkpoint, tiny_model(), optimizer, log, {**quick, "seed": 0})
