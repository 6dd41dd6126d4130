"""Bragg CDI mode: simulator, metrics, iterative retrieval, bundled network, refinement, bad input."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from napari_cdinn.core import cdi, metrics, postprocess
from napari_cdinn.core.data import DiffractionStack, Metadata
from napari_cdinn.core.errors import CdinnError, InputError, InputWarning
from napari_cdinn.core.nn.registry import default_model as registry_default
from napari_cdinn.core.nn.registry import load_model, save_model
from napari_cdinn.core.progress import run_to_end
from napari_cdinn.core.retrieval import cdi as retrieval_cdi
from napari_cdinn.core.retrieval import projections
from napari_cdinn.core.retrieval.cdi import RetrievalRecipe, outside_update, run_retrieval
from napari_cdinn.core.simulate.cdi import far_field_intensity, simulate_cdi


def simple_object(size: int = 64) -> np.ndarray:
    """A rectangle-ish crystal with a gentle phase ramp, well inside the central half."""
    y, x = np.mgrid[:size, :size]
    inside = (abs(y - size / 2) < 7) & (abs(x - size / 2 - 1) < 10) & (x + y < size + 12)
    return (inside * np.exp(0.8j * (x - size / 2) / 10)).astype(np.complex64)


def test_simulator_pattern_is_ft_squared_of_its_object():
    stack = simulate_cdi(6, size=64, seed=11)
    direct = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(stack.truth, axes=(1, 2))), axes=(1, 2))
    np.testing.assert_allclose(stack.intensities, np.abs(direct) ** 2, rtol=1e-4, atol=1e-2)
    amplitude = np.abs(stack.truth)
    assert amplitude.max() <= 1.0 + 1e-6
    outside = np.ones((64, 64), bool)
    outside[12:52, 12:52] = False  # central half plus the 1-px blur rim stays inside this box
    assert amplitude[:, outside].max() < 1e-3
    phase = np.angle(stack.truth)[amplitude > 0.5]
    assert np.abs(phase).max() <= np.pi
    assert not np.allclose(simulate_cdi(2, seed=12).truth, simulate_cdi(2, seed=13).truth)
    np.testing.assert_array_equal(simulate_cdi(2, seed=12).truth, simulate_cdi(2, seed=12).truth)


def test_poisson_noise_counts_photons():
    stack = simulate_cdi(3, seed=1, photons=1e5)
    assert np.all(stack.intensities == np.round(stack.intensities))
    np.testing.assert_allclose(stack.intensities.sum(axis=(1, 2)), 1e5, rtol=0.02)


def test_registered_metrics_ignore_translation_twin_and_global_phase():
    truth = simulate_cdi(4, seed=2).truth
    moved = np.roll(metrics.twin(truth), (3, -5), axis=(1, 2)) * np.exp(1.3j)
    np.testing.assert_allclose(metrics.registered_correlation(moved, truth), 1.0, atol=1e-5)
    np.testing.assert_allclose(metrics.phase_rms(moved, truth), 0.0, atol=1e-4)
    other = simulate_cdi(4, seed=3).truth
    assert np.all(metrics.registered_correlation(other, truth) < 0.95)


def test_chi2_is_zero_for_truth_and_scale_free():
    stack = simulate_cdi(3, seed=4)
    assert np.all(metrics.chi2(stack.truth * 7.0, stack.intensities) < 1e-10)
    assert np.all(metrics.chi2(np.abs(stack.truth), stack.intensities) > 1e-3)  # phase lost


def test_er_hio_recovers_a_simple_object(device):
    truth = simple_object()[None]
    stack = DiffractionStack(far_field_intensity(truth), meta=Metadata(source="simple"))
    result = run_to_end(cdi.iterative_steps(stack, device=device))
    assert metrics.registered_correlation(result.objects, truth)[0] > 0.99
    assert result.chi2[0] < 1e-3
    assert result.provenance.method == "ER/HIO"


def test_masked_pixels_are_ignored(device):
    truth = simple_object()[None]
    intensities = far_field_intensity(truth)
    mask = np.ones((64, 64), bool)
    mask[30:34, :] = False  # a detector gap across the pattern (not the centre column)
    mask[32, 32] = True
    corrupted = intensities.copy()
    corrupted[:, ~mask] = 1e9  # garbage where the detector did not measure
    recipe = RetrievalRecipe(n_starts=2)
    objects, _, errors = run_to_end(run_retrieval(corrupted, mask, recipe=recipe, device=device))
    assert metrics.registered_correlation(objects, truth)[0] > 0.98
    assert errors[0] < 1e-2


@pytest.mark.parametrize("algorithm", ["ER", "HIO", "RAAR"])
def test_fused_cpu_projections_match_the_torch_ones(algorithm, monkeypatch):
    """The numba loops (CPU) and the torch expressions (GPU) are the same projections."""
    generator = torch.Generator().manual_seed(3)
    shape = (6, 32, 48)
    spectrum = torch.randn(shape, dtype=torch.complex64, generator=generator)
    spectrum[0, 0, 0] = 0  # a dark pixel keeps a finite value
    magnitudes = torch.rand(shape, generator=generator)
    measured = torch.rand(shape, generator=generator) > 0.2
    support = torch.rand(shape, generator=generator) > 0.5
    previous = torch.randn(shape, dtype=torch.complex64, generator=generator)
    a, b = outside_update(algorithm, 0.9)

    def project(valid):
        projected = spectrum.clone()
        error = float(projections.set_modulus_(projected, magnitudes, valid, with_error=True))
        return projected, error, projections.mix_(projected.clone(), previous, support, a, b)

    fused = [project(valid) for valid in (None, measured)]
    monkeypatch.setattr(projections, "fused", lambda tensor: False)
    reference = [project(valid) for valid in (None, measured)]
    for (spectrum_f, error_f, mixed_f), (spectrum_r, error_r, mixed_r) in zip(
        fused, reference, strict=True
    ):
        assert torch.isfinite(spectrum_f).all()
        torch.testing.assert_close(spectrum_f, spectrum_r, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(mixed_f, mixed_r, rtol=1e-5, atol=1e-6)
        assert error_f == pytest.approx(error_r, rel=1e-4)
        assert torch.equal(mixed_f[support], spectrum_f[support])


def test_refinement_from_a_perturbed_start_improves_it(device):
    stack = simulate_cdi(4, seed=21)
    rng = np.random.default_rng(0)
    start = stack.truth * np.exp(0.6j * rng.standard_normal(stack.truth.shape))
    start = postprocess.zero_phase_outside(start).astype(np.complex64)
    result = run_to_end(cdi.refine_steps(stack, start, iterations=50, device=device))
    before = metrics.registered_correlation(start, stack.truth)
    after = metrics.registered_correlation(result.objects, stack.truth)
    assert np.median(after) > np.median(before)
    assert np.median(after) > 0.95


def test_refinement_does_not_depend_on_the_intensity_units(device):
    """The network answers amplitudes near 1 whatever the data's units; refinement from that
    start used to leave, outside the support, more of the start than the data (here 0.980
    against 0.998 for the same patterns times 1e-9, and 0.5 to 0.8 at 1e-12). Now the start
    is scaled to the counts first."""
    stack = simulate_cdi(4, seed=3, photons=None)
    rng = np.random.default_rng(1)
    start = stack.truth * np.exp(0.3j * rng.standard_normal(stack.truth.shape))
    start = postprocess.zero_phase_outside(start).astype(np.complex64)
    scores = []
    for units in (1.0, 1e-9):
        scaled = DiffractionStack(stack.intensities * units, None, stack.meta)
        result = run_to_end(cdi.refine_steps(scaled, start, iterations=50, device=device))
        scores.append(np.median(metrics.registered_correlation(result.objects, stack.truth)))
    assert scores[0] > 0.99
    assert abs(scores[1] - scores[0]) < 2e-3, scores


def test_postprocess_centres_and_zeroes_phase_outside():
    truth = simple_object()
    shifted = np.roll(truth, (9, -6), axis=(0, 1)) * np.exp(0.5j)
    clean = postprocess.canonical(shifted)
    assert np.all(np.abs(postprocess.center_of_mass_shift(clean[None])) <= 1)
    assert np.all(np.angle(clean)[np.abs(clean) <= 0.1] == 0)


def test_bundled_model_loads_and_scores_on_fresh_patterns(device):
    stack = simulate_cdi(64, seed=123_456)
    result = run_to_end(cdi.network_steps(stack, device=device))
    assert result.objects.shape == (64, 64, 64)
    correlation = metrics.registered_correlation(result.objects, stack.truth)
    assert np.median(correlation) > 0.85
    assert result.provenance.model_name == "cdi_nn"


def test_bad_input_single_pattern_and_odd_non_square_sizes(device):
    truth = simulate_cdi(1, size=72, seed=5).truth
    pattern = far_field_intensity(truth)[0, :71, 1:72]  # 71 x 71, odd: cropped by one
    single = DiffractionStack(pattern[None], meta=Metadata(source="odd.npy"))
    result = run_to_end(cdi.network_steps(single, device=device))
    assert result.objects.shape == (1, 64, 64)
    assert result.provenance.parameters["object_pixel_scale"] == pytest.approx((71 / 64, 71 / 64))
    wide = DiffractionStack(far_field_intensity(simulate_cdi(1, size=64, seed=6).truth)[:, 8:56, :])
    wide.meta.source = "wide.h5"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = run_to_end(cdi.network_steps(wide, device=device))
    assert out.objects.shape == (1, 64, 64)
    assert any(issubclass(w.category, InputWarning) and "48x64" in str(w.message) for w in caught)
    # the network saw 64 detector pixels each way: its object pixels are 48/64 of the 48 x 64
    # pattern's along y and 1 along x, so its layer overlays the iterative one (not one scale)
    assert out.provenance.parameters["object_pixel_scale"] == pytest.approx((48 / 64, 1.0))


@pytest.mark.parametrize("shape", [(129, 129), (128, 128), (65, 64), (64, 71), (63, 63), (40, 41)])
def test_fitting_a_pattern_to_the_network_keeps_its_zero_frequency_in_the_middle(shape):
    """Cropped or padded, odd or even, square or not: the zero frequency (pixel n // 2 of n)
    lands on the network's middle pixel (32 of 64); one pixel off is a phase ramp of 2 pi."""
    pattern = np.zeros((1, *shape), np.float32)
    pattern[0, shape[0] // 2, shape[1] // 2] = 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)  # non-square: cropped, with a warning
        fitted, _, _ = cdi.fit_to_network(pattern, None, 64, "test")
    assert np.unravel_index(fitted[0].argmax(), fitted[0].shape) == (32, 32)


def test_bad_input_all_zero_pattern_is_refused_alone_and_left_out_of_a_stack(device):
    intensities = far_field_intensity(simulate_cdi(3, seed=7).truth)
    intensities[1] = 0
    stack = DiffractionStack(intensities, meta=Metadata(source="zeros.cxi"))
    with pytest.raises(InputError, match=r"zeros.cxi: 1 frame\(s\) \[1\] hold no measured"):
        run_to_end(cdi.network_steps(stack, device=device))
    with pytest.raises(InputError, match="hold no measured signal"):
        run_to_end(cdi.iterative_steps(stack, device=device))
    # a missed shot in a series: the others invert, it is named (as the file numbers it)
    numbered = DiffractionStack(
        intensities, meta=Metadata("zeros.cxi", extra={"frames": [5, 6, 7]})
    )
    with pytest.warns(InputWarning, match=r"zeros.cxi: 1 frame\(s\) \[6\] hold no measured"):
        results = run_to_end(cdi.invert_steps(numbered, ["nn", "refine"], device=device))
    for result in results.values():
        assert len(result.objects) == 3 and not result.objects[1].any()
        assert np.isnan(result.chi2[1]) and (result.chi2[[0, 2]] < 0.5).all(), result.chi2
    alone = run_to_end(cdi.network_steps(stack.subset([0, 2]), device=device))
    np.testing.assert_allclose(results["nn"].objects[[0, 2]], alone.objects, atol=1e-5)
    blank = DiffractionStack(np.zeros((2, 64, 64), np.float32), meta=Metadata("blank.npy"))
    with pytest.raises(InputError, match=r"blank.npy: 2 frame\(s\) \[0, 1\] hold no"):
        run_to_end(cdi.invert_steps(blank, ["nn"], device=device))


def test_bad_input_nan_pixels_are_masked_by_the_reader(tmp_path, device):
    from napari_cdinn.core import io

    intensities = far_field_intensity(simple_object()[None])
    intensities[0, 10, 10] = np.nan
    np.save(tmp_path / "nan.npy", intensities)
    with pytest.warns(InputWarning, match="1 NaN/Inf"):
        stack = io.read(tmp_path / "nan.npy")
    assert not stack.mask[10, 10]
    result = run_to_end(cdi.network_steps(stack, device=device))
    assert np.isfinite(result.objects).all()


def test_corrupt_or_mismatched_model_files_are_refused(tmp_path, device):
    from napari_cdinn.core.nn.cdi_net import CDINet

    weights = tmp_path / "bad.safetensors"
    weights.write_bytes(b"not a safetensors file at all")
    card = {"name": "bad", "version": "0", "mode": "cdi", "architecture": "CDINet", "arguments": {}}
    weights.with_suffix(".json").write_text(json.dumps(card))
    with pytest.raises(InputError, match=r"bad\.safetensors: not a readable safetensors file"):
        load_model(weights)
    small = save_model(CDINet(width=8), tmp_path / "small.safetensors", card)
    with pytest.raises(InputError, match="weights do not match the architecture"):
        load_model(small)  # card says width 16 (default), file holds width 8
    (tmp_path / "nocard.safetensors").write_bytes(small.read_bytes())
    with pytest.raises(InputError, match=r"model card nocard\.json is missing"):
        load_model(tmp_path / "nocard.safetensors")
    model, _ = load_model(
        save_model(
            CDINet(width=8), tmp_path / "ok.safetensors", {**card, "arguments": {"width": 8}}
        )
    )
    assert model.width == 8
    ptycho_model = registry_default("ptycho")
    with pytest.raises(InputError, match=r"ptycho_nn\.safetensors: a ptycho model, not a CDI"):
        run_to_end(cdi.network_steps(simulate_cdi(1, seed=2), ptycho_model, device=device))
    # cards that are not objects, or whose sizes are not whole positive numbers
    for bad_card, message in (
        (5, "not a JSON object"),
        ({**card, "arguments": {"size": -4}}, "'size' is -4"),
        ({**card, "arguments": {"size": "64"}}, "'size' is '64'"),
        ({**card, "arguments": {"width": 0}}, "'width' is 0"),
        (
            {**card, "mode": "wideangle"},
            "says mode 'wideangle', but its architecture CDINet is a CDI",
        ),
    ):
        (tmp_path / "ok.json").write_text(json.dumps(bad_card))
        with pytest.raises(InputError, match=rf"ok\.json: .*{message}"):
            load_model(tmp_path / "ok.safetensors")


def test_a_model_whose_card_cannot_be_written_leaves_the_old_pair(tmp_path, monkeypatch):
    """Weights and card replace their files together or not at all."""
    from napari_cdinn.core.nn import registry
    from napari_cdinn.core.nn.cdi_net import CDINet

    card = {"name": "m", "version": "1", "mode": "cdi", "architecture": "CDINet", "arguments": {}}
    path = save_model(CDINet(), tmp_path / "m.safetensors", card)
    before = path.read_bytes(), (tmp_path / "m.json").read_text()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(registry.json, "dumps", full_disk)
    with pytest.raises(CdinnError, match=r"m\.json: could not be written"):
        save_model(CDINet(), path, {**card, "version": "2"})
    assert (path.read_bytes(), (tmp_path / "m.json").read_text()) == before


def test_refine_of_resampled_patterns_is_refused_before_the_iterative_run(device):
    """128 x 128 patterns: the network sees them binned to 64, so refine cannot start from its
    objects; that is said before any work (not after the network, nor the 620 iterations), in
    words for both faces."""
    stack = DiffractionStack(np.ones((1, 128, 128), np.float32), meta=Metadata(source="big.h5"))
    steps = cdi.invert_steps(stack, ["nn", "iterative", "refine"], device=device)
    with pytest.raises(InputError, match=r"big\.h5: refine needs patterns of the network's own "
                       r"size \(64 x 64\).*128 x 128 \(use the iterative method\)"):  # fmt: skip
        next(steps)


def test_refine_with_a_missing_model_or_one_of_another_mode_says_so(tmp_path):
    """The size check read the card first: a wide-angle model was refused for the patterns'
    size, a missing file for its missing card."""
    from napari_cdinn.core.nn.registry import default_model

    stack = simulate_cdi(1, seed=2)
    with pytest.raises(InputError, match=r"nope\.safetensors: model file not found"):
        next(cdi.invert_steps(stack, ["refine"], model_path=tmp_path / "nope.safetensors"))
    with pytest.raises(InputError, match=r"wide-angle|wideangle"):
        next(cdi.invert_steps(stack, ["refine"], model_path=default_model("wideangle")))


def test_nan_pixels_of_a_lazily_read_stack_are_masked_when_it_is_loaded():
    import dask.array as da

    frames = simulate_cdi(2, seed=3).intensities.copy()
    frames[1, 5, 7] = np.inf
    stack = DiffractionStack(da.from_array(frames), None, Metadata("big.h5"))
    with pytest.warns(InputWarning, match=r"big\.h5: 1 NaN/Inf"):
        intensities, mask = cdi.checked_patterns(stack)
    assert np.isfinite(intensities).all() and not mask[1, 5, 7] and mask.sum() == mask.size - 1


def test_a_lazy_stack_is_read_once_in_pieces_that_progress_and_can_be_stopped(device):
    """All methods from one read (each read the file again), the read itself yielding progress
    so Cancel acts during a long one, its NaN masked once."""
    import dask.array as da

    frames = simulate_cdi(70, seed=3).intensities.copy()
    frames[1, 5, 7] = np.nan
    reads = []
    lazy = da.from_array(frames, chunks=(10, 64, 64)).map_blocks(
        lambda block: reads.append(len(block)) or block, dtype=np.float32
    )
    stack = DiffractionStack(lazy, None, Metadata("big.h5"))
    steps = cdi.invert_steps(stack, ["nn", "refine"], refine_iterations=2, device=device)
    assert next(steps) == (40, 70)  # the first piece read (whole chunks), before any method
    with pytest.warns(InputWarning, match=r"big\.h5: 1 NaN/Inf") as caught:
        results = run_to_end(steps)
    assert len([w for w in caught if "NaN" in str(w.message)]) == 1
    assert sum(reads) == 70  # read once for both methods
    assert np.isfinite(results["refine"].objects).all()
    stopped = cdi.invert_steps(stack, ["nn"], device=device)
    next(stopped)
    stopped.close()  # what Cancel does between pieces


def test_the_networks_chi2_leaves_out_masked_pixels_as_the_iterative_one_does(device):
    """A beam stop masked: the network's chi2 is taken over the measured pixels only (it was
    counting the masked ones as measured zeros), the same measure the iterative methods use."""
    stack = simulate_cdi(4, seed=11)
    mask = np.ones((64, 64), bool)
    mask[28:36, 28:36] = False
    masked = DiffractionStack(stack.intensities, mask, Metadata("stop.cxi"))
    result = run_to_end(cdi.network_steps(masked, device=device))
    expected = metrics.chi2(result.objects, stack.intensities, mask)
    np.testing.assert_allclose(result.chi2, expected, rtol=1e-5)
    assert not np.allclose(expected, metrics.chi2(result.objects, stack.intensities))


def test_iterative_supports_still_outline_their_objects_after_canonical_form(device):
    """The objects are centred, twinned and shifted onto the network's; their shrink-wrap
    supports are moved the same way (they were saved where retrieval left them)."""
    stack = simulate_cdi(6, seed=21)
    result = run_to_end(cdi.iterative_steps(stack, cdi.scaled_recipe(120), device=device))
    power = np.abs(result.objects) ** 2
    inside = (power * result.support).sum(axis=(1, 2)) / power.sum(axis=(1, 2))
    assert (inside > 0.98).all(), inside  # 0.36 to 0.97 before


def test_an_iterative_results_chi2_is_that_of_the_objects_it_stores(device):
    """The canonical form zeroes the phase outside the object, which changes the low
    frequencies: the chi2 stored is the stored objects' (it was the raw iterate's, 1.5 to 2 x
    lower), computed as the network's is."""
    from napari_cdinn.core import metrics

    stack = simulate_cdi(2, seed=31, photons=1e6)
    result = run_to_end(cdi.iterative_steps(stack, cdi.scaled_recipe(60), device=device))
    np.testing.assert_allclose(
        result.chi2, metrics.chi2(result.objects, stack.intensities), rtol=1e-5
    )


def test_a_zero_starting_object_is_refined_from_the_box_not_left_at_zero(device):
    """A start of zero amplitude gave an empty support, and the iterate stayed zero (chi2 1)
    without a word; now it starts from the initial box, as an unseeded run does."""
    stack = simulate_cdi(2, seed=5)
    zeros = np.zeros(stack.intensities.shape, np.complex64)
    result = run_to_end(cdi.refine_steps(stack, zeros, iterations=200, device=device))
    assert result.support.any(axis=(1, 2)).all()
    assert (result.chi2 < 0.5).all(), result.chi2


@pytest.mark.parametrize("iterations", [1, 5, 7, 10, 40, 99, 100, 619, 621, 1000])
def test_the_recipe_scaled_to_n_iterations_runs_n_with_shrink_wraps(iterations, monkeypatch):
    """Each of the 7 stages was rounded on its own (1, 5 and 10 asked for ran 7, 7 and 13),
    and a run under 20 iterations never shrink-wrapped. Shrink-wraps counted by running the
    retrieval, which does them after every ``shrinkwrap_every`` iterations, not after the last."""
    recipe = cdi.scaled_recipe(iterations)
    assert recipe.n_iterations == iterations
    assert all(n >= 1 for _, n in recipe.schedule)
    assert recipe.average_last <= recipe.schedule[-1][1]
    if iterations <= 100:
        calls = []
        real = retrieval_cdi.shrinkwrap
        monkeypatch.setattr(
            retrieval_cdi, "shrinkwrap", lambda *a, **k: calls.append(1) or real(*a, **k)
        )
        recipe.n_starts = 1
        run_to_end(run_retrieval(far_field_intensity(simple_object())[None], None, recipe=recipe))
        assert len(calls) >= min(4, iterations - 1), (len(calls), recipe.shrinkwrap_every)


def test_one_reference_serves_a_whole_stack():
    """A single (H, W) reference against N objects: one score per object (it was one argmax
    over the whole stack: correlations above 1, and an IndexError in the canonical form)."""
    stack = simulate_cdi(3, seed=1)
    scores = metrics.registered_correlation(stack.truth, stack.truth[0])
    assert scores.shape == (3,) and scores[0] == pytest.approx(1.0, abs=1e-5)
    assert (scores <= 1 + 1e-5).all()
    assert postprocess.canonical(stack.truth, stack.truth[0]).shape == stack.truth.shape
