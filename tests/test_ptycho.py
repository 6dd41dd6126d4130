"""Ptychography core: ePIE, its fused CPU steps, geometry, stitching, retraining, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cdinn.core import metrics, ptycho
from napari_cdinn.core.data import PtychoScan
from napari_cdinn.core.errors import InputError
from napari_cdinn.core.progress import run_to_end
from napari_cdinn.core.retrieval import patches, projections
from napari_cdinn.core.retrieval.ptycho import SUBPIXEL, EpieRecipe, ObjectGrid
from napari_cdinn.core.simulate.ptycho import focused_probe, simulate_ptycho


@pytest.fixture(scope="module")
def small_scan() -> PtychoScan:
    return simulate_ptycho((128, 128), frame=64, step=8, photons=None, seed=4)


def truth_on_grid(result, scan: PtychoScan) -> tuple[np.ndarray, np.ndarray]:
    """The true object on the result's grid, and the well-scanned pixels."""
    shape = result.objects.shape
    truth = ptycho.on_grid(scan.truth, result.origin, shape)
    seen = ptycho.scanned_region(scan.positions, scan.stack.frame_shape[0], result.origin, shape)
    return truth, seen


def test_epie_reconstructs_a_small_noiseless_scan(small_scan):
    result = run_to_end(ptycho.epie_steps(small_scan, EpieRecipe(epochs=40), device="cpu"))
    truth, seen = truth_on_grid(result, small_scan)
    amplitude, phase = metrics.object_ssim(result.objects, truth, seen)
    assert amplitude > 0.9 and phase > 0.9
    errors = result.provenance.parameters["fourier_error"]
    assert errors[-1] < 0.01 * errors[0]
    assert result.provenance.method == "ePIE"


def test_probe_update_recovers_from_a_wrong_probe(small_scan):
    wrong = focused_probe(64, np.random.default_rng(123), defocus=4.0)
    scan = PtychoScan(small_scan.stack, small_scan.positions, wrong, truth=small_scan.truth)
    fixed = run_to_end(ptycho.epie_steps(scan, EpieRecipe(150, probe_update_from=None), "cpu"))
    updated = run_to_end(ptycho.epie_steps(scan, EpieRecipe(150, probe_update_from=2), "cpu"))
    truth, seen = truth_on_grid(updated, small_scan)
    assert metrics.object_ssim(updated.objects, truth, seen)[1] > 0.9
    assert metrics.object_ssim(fixed.objects, truth, seen)[1] < 0.8
    errors = [r.provenance.parameters["fourier_error"][-1] for r in (fixed, updated)]
    assert errors[1] < 0.2 * errors[0]


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
    bins = torch.tensor([0, 9, 63, 9, 1])
    magnitudes = torch.rand((5, 16, 16), generator=generator)
    measured = torch.rand((5, 16, 16), generator=generator) > 0.1

    def one_batch() -> tuple[torch.Tensor, ...]:
        current = obj.clone()
        numerator = torch.zeros_like(bank)
        denominator = torch.zeros(bank.shape)
        waves = patches.exit_waves(current, corners, bank, bins)
        spectrum = torch.fft.fft2(waves, norm="ortho")
        error = projections.set_modulus_(spectrum, magnitudes, measured, True, correction=True)
        change = torch.fft.ifft2(spectrum, norm="ortho")
        patches.add_probe_gradient_(numerator, denominator, current, corners, bins, change)
        patches.update_object_(current, corners, bank, power, bins, change, alpha=0.1)
        return waves, torch.tensor(error), change, numerator, denominator, current

    fused = one_batch()
    for module in (patches, projections):
        monkeypatch.setattr(module, "fused", lambda tensor: False)
    reference = one_batch()
    for a, b in zip(fused, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    untouched = torch.ones(obj.shape, dtype=torch.bool)
    untouched[:19, :22] = untouched[20:40, 30:50] = False
    assert torch.equal(fused[-1][untouched], obj[untouched])


def test_bad_scans_are_refused_with_the_reason(small_scan):
    stack, positions = small_scan.stack, small_scan.positions
    cases = {
        "positions for": PtychoScan(stack, positions[:-1], small_scan.probe),
        "one position": PtychoScan(stack.subset([0]), positions[:1], small_scan.probe),
        "NaN": PtychoScan(stack, np.where(positions == positions[3], np.nan, positions)),
        "probe is": PtychoScan(stack, positions, small_scan.probe[:32, :32]),
    }
    for words, scan in cases.items():
        with pytest.raises(InputError, match=words):
            run_to_end(ptycho.epie_steps(scan, EpieRecipe(epochs=1), device="cpu"))
