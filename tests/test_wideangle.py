"""Wide-angle mode: icosahedral symmetry and the MSFT simulator."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from napari_cdinn.core import icosahedral as ico
from napari_cdinn.core.simulate import wideangle as wa


def _in_group(q: np.ndarray) -> bool:
    return bool(np.isclose(np.abs(ico.GROUP @ q).max(), 1.0))


def test_group_has_sixty_rotations_and_is_closed():
    assert ico.GROUP.shape == (60, 4)
    assert np.allclose(np.linalg.norm(ico.GROUP, axis=1), 1)
    assert _in_group(np.array([1.0, 0, 0, 0]))
    products = ico.multiply(ico.GROUP[:, None], ico.GROUP[None]).reshape(-1, 4)
    assert all(_in_group(p) for p in products)
    assert all(_in_group(ico.conjugate(g)) for g in ico.GROUP)
    distinct = np.abs(ico.GROUP @ ico.GROUP.T) > 1 - 1e-9  # no element twice (as +-q)
    assert distinct.sum() == 60


def test_group_turns_the_icosahedron_onto_itself():
    vertices, faces = ico.icosahedron(2.0)
    assert vertices.shape == (12, 3) and faces.shape == (20, 3)
    for rotation in ico.rotation_matrix(ico.GROUP):
        turned = vertices @ rotation.T
        nearest = np.linalg.norm(turned[:, None] - vertices[None], axis=-1).min(axis=1)
        assert nearest.max() < 1e-9


def test_reduction_to_the_fundamental_domain():
    rng = np.random.default_rng(0)
    q = ico.normalised(rng.normal(size=(200, 4)))
    r = ico.reduced(q)
    assert (r[:, 0] >= 0).all()
    largest = np.abs(ico.equivalents(q)[..., 0]).max(axis=-1)
    assert np.allclose(r[:, 0], largest)
    assert np.allclose(ico.reduced(r), r)  # idempotent
    assert np.allclose(ico.misorientation(q, r), 0, atol=1e-5)


def test_rotation_vectors_give_their_quaternions():
    """Axis times angle -> (cos(angle / 2), sin(angle / 2) axis); zero is the identity; the
    misorientation from the identity is the angle (below the group's smallest turn)."""
    vectors = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, np.pi / 2], [0.1, -0.2, 0.05]])
    q = ico.from_rotation_vector(vectors)
    assert np.allclose(q[:2], [[1, 0, 0, 0], [np.cos(np.pi / 4), 0, 0, np.sin(np.pi / 4)]])
    identity = np.array([1.0, 0.0, 0.0, 0.0])
    assert np.isclose(ico.misorientation(identity, q[2]), np.degrees(np.linalg.norm(vectors[2])))


def test_misorientation_is_zero_within_the_group_and_symmetric():
    rng = np.random.default_rng(1)
    q = ico.random_orientations(20, rng)
    for g in ico.GROUP:
        assert np.allclose(ico.misorientation(q, ico.multiply(q, g)), 0, atol=1e-5)
    p = ico.random_orientations(20, rng)
    assert np.allclose(ico.misorientation(q, p), ico.misorientation(p, q))
    turn = np.array([np.cos(np.radians(5)), np.sin(np.radians(5)), 0, 0])  # 10 degrees about x
    assert np.allclose(ico.misorientation(q, ico.multiply(q, turn)), 10, atol=1e-6)
    assert np.allclose(ico.misorientation(p, ico.reduced(p)), 0, atol=1e-5)


def test_equivalent_orientations_give_the_same_pattern():
    rng = np.random.default_rng(2)
    q = ico.random_orientations(1, rng)[0]
    simulator = wa.Simulator()
    image = simulator.intensity(60.0, q)
    for g in ico.GROUP[rng.choice(60, 5, replace=False)]:
        other = simulator.intensity(60.0, ico.multiply(q, g))
        assert np.allclose(other, image, rtol=1e-3, atol=1e-6 * image.max())


def _log_rms(a: np.ndarray, b: np.ndarray, floor: float = 1e-5) -> float:
    peak = b.max()
    la, lb = (np.log10(np.maximum(x / peak, floor)) for x in (a, b))
    return float(np.sqrt(np.mean((la - lb) ** 2)))


def test_small_angle_weak_absorption_limit_is_the_projected_density():
    """Hard X-rays, a tiny angle and no absorption: |FT of the projected density|^2, the
    density voxelised here independently of the simulator's chord maps."""
    detector = wa.Detector(pixels=64, max_angle=0.05, wavelength=0.1)
    material = wa.Material(absorption_length=1e12, refractive_decrement=0.0, wavelength=0.1)
    rng = np.random.default_rng(3)
    q = ico.random_orientations(1, rng)[0]
    radius, step = 40.0, 0.5
    simulated = wa.Simulator(detector, material).intensity(radius, q)
    axis = np.arange(-radius, radius + step, step)
    normals, offsets = wa.turned_planes(radius, q)
    projected = np.zeros((axis.size, axis.size))
    for z in axis:
        points = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1)  # (y, x)
        inside = (
            points[..., 1, None] * normals[:, 0]
            + points[..., 0, None] * normals[:, 1]
            + z * normals[:, 2]
            <= offsets
        ).all(-1)
        projected += inside * step
    dft = np.exp(-1j * detector.k_axis[:, None] * axis[None, :])
    expected = np.abs(dft @ projected @ dft.T * step**2) ** 2 * detector.solid_angle_factor
    assert _log_rms(simulated, expected, 1e-4) < 0.02
    assert simulated.sum() == pytest.approx(expected.sum(), rel=0.02)


def test_simulator_agrees_with_the_slice_reference():
    rng = np.random.default_rng(4)
    q = ico.random_orientations(1, rng)[0]
    fast = wa.Simulator().intensity(30.0, q)
    reference = wa.reference_pattern(30.0, q, step=0.25)
    assert _log_rms(fast, reference) < 0.01
    assert fast.max() == pytest.approx(reference.max(), rel=1e-3)
    # absorption matters: without it the pattern differs clearly
    clear = wa.Simulator(material=wa.Material(absorption_length=1e12)).intensity(30.0, q)
    assert _log_rms(clear, reference) > 0.05


def test_log_image_maps_the_dynamic_range_to_unit_interval():
    intensity = np.array([[1e3, 1e1], [1e-9, 0.0]])
    image = wa.log_image(intensity, dynamic_range=4)
    assert image.dtype == np.float32
    assert np.allclose(image, [[1.0, 0.5], [0.0, 0.0]])


def test_each_image_transform_maps_the_label_exactly():
    import torch

    from napari_cdinn.core.nn.wideangle import image_transforms

    q = ico.random_orientations(1, np.random.default_rng(5))[0]
    simulator = wa.Simulator(wa.Detector(pixels=64))
    image = torch.as_tensor(simulator.intensity(70.0, q))
    for apply, turn in image_transforms():
        turned = simulator.intensity(70.0, ico.multiply(turn, q))
        assert np.allclose(apply(image).numpy(), turned, rtol=1e-4, atol=1e-6 * turned.max())
    assert len({tuple(np.round(t, 6)) for _, t in image_transforms()}) == 8


def test_orientation_loss_is_zero_for_every_equivalent_and_grows_with_the_angle():
    import torch

    from napari_cdinn.core.nn.wideangle import orientation_loss

    q = ico.random_orientations(4, np.random.default_rng(6))
    truth = torch.as_tensor(q, dtype=torch.float32)
    for g in ico.GROUP[::7]:
        equivalent = torch.as_tensor(-ico.multiply(q, g), dtype=torch.float32)
        assert orientation_loss(equivalent, truth).max() < 1e-3
    turned = torch.as_tensor(ico.multiply(q, [np.cos(0.05), np.sin(0.05), 0, 0]))
    assert np.allclose(orientation_loss(turned.float(), truth).numpy(), np.sin(0.05), atol=1e-4)


def test_embedding_is_the_same_for_equivalents_and_reads_back_to_the_orientation():
    rng = np.random.default_rng(11)
    q = ico.random_orientations(300, rng)
    e = ico.embedding(q)
    for g in ico.GROUP:
        assert np.abs(ico.embedding(-ico.multiply(q, g)) - e).max() < 1e-12
    assert ico.misorientation(ico.from_embedding(e), q).max() < 0.01
    # distances about half the angle (radians) when small, in every direction
    axes = rng.normal(size=(300, 3))
    turned = ico.multiply(
        ico.from_rotation_vector(0.01 * axes / np.linalg.norm(axes, axis=1)[:, None]), q
    )
    distance = np.linalg.norm(ico.embedding(turned) - e, axis=1)
    assert distance.min() > 0.5 * 0.005 and distance.max() < 2 * 0.005
    # a noisy embedding reads as an orientation near the truth, not a far one
    noisy = e + rng.normal(scale=0.002, size=e.shape)
    assert np.median(ico.misorientation(ico.from_embedding(noisy), q)) < 1.0


def test_embedding_loss_is_zero_for_every_equivalent_and_grows_like_the_angle():
    import torch

    from napari_cdinn.core.nn.wideangle import embedding_loss

    q = ico.random_orientations(64, np.random.default_rng(6))
    truth = torch.as_tensor(q, dtype=torch.float32)
    for g in ico.GROUP[::7]:
        own = torch.as_tensor(ico.embedding(-ico.multiply(q, g)), dtype=torch.float32)
        assert embedding_loss(own, truth).max() < 1e-3
    turned = ico.multiply(q, [np.cos(0.05), np.sin(0.05), 0, 0])
    loss = embedding_loss(torch.as_tensor(ico.embedding(turned), dtype=torch.float32), truth)
    assert 0.5 * np.sin(0.05) < loss.mean() < 1.5 * np.sin(0.05)


def test_blur_matrices_are_the_gaussian_convolution():
    """Augmentation's blur as matrix products equals the separable 25-tap convolution with zero
    padding, and its gain map the bicubic interpolation of the 4 x 4 knots."""
    import torch

    from napari_cdinn.core.nn.wideangle import _smooth_rows, blur_rows

    generator = torch.Generator().manual_seed(0)
    images, sigma = torch.rand((3, 1, 40, 40), generator=generator), torch.tensor([0.0, 1.3, 5])
    taps = torch.arange(-12, 13, dtype=torch.float32)
    kernel = torch.exp(-(taps**2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True))[:, None]
    flat = images.reshape(1, 3, 40, 40)
    flat = torch.nn.functional.conv2d(flat, kernel[..., None], padding=(12, 0), groups=3)
    flat = torch.nn.functional.conv2d(flat, kernel[:, :, None], padding=(0, 12), groups=3)
    rows = blur_rows(sigma, 40)
    assert torch.allclose(rows @ images @ rows.transpose(-2, -1), flat.reshape(3, 1, 40, 40),
                          atol=1e-6)  # fmt: skip
    assert torch.allclose(rows[0, 0], torch.eye(40))  # sigma 0: nothing moves
    knots = torch.randn((2, 1, 4, 4), generator=generator)
    bicubic = torch.nn.functional.interpolate(knots, (40, 40), mode="bicubic", align_corners=True)
    assert torch.allclose(_smooth_rows(40) @ knots @ _smooth_rows(40).T, bicubic, atol=1e-5)


def test_equalised_images_ignore_the_display_scaling():
    """Ranks are unchanged by a gamma (any increasing map that keeps 0 and the levels apart)
    and stay 0 where there is no signal."""
    import torch

    from napari_cdinn.core.nn.wideangle_net import equalised

    images, _, _ = wa.simulate_shots(2, seed=11, simulator=wa.Simulator(wa.Detector(pixels=32)))
    shots = torch.as_tensor(np.round(images * 31) * 8 / 255, dtype=torch.float32)[:, None]
    shots[:, :, :4] = 0  # dead rows
    ranks = equalised(shots)
    assert (ranks[:, :, :4] == 0).all() and ranks.max() <= 1 and ranks[shots > 0].min() > 0
    for gamma in (0.7, 1.4):
        assert torch.allclose(equalised(shots**gamma), ranks, atol=1e-6)
    assert not torch.allclose(equalised(shots.flip(-1)), ranks)


def test_ranking_once_before_the_flips_gives_the_networks_own_answer(device):
    """The inference network ranks each image once and then flips it (ranks of a flipped image
    are the flipped ranks); its outputs for every flip are those of the network that ranks
    every flip.  Compared output by output: an untrained network's eight answers scatter, and
    the consensus of near-ties could pick another medoid on a rounding difference."""
    import torch

    from napari_cdinn.core.nn.wideangle import equalised, image_transforms, inference_network
    from napari_cdinn.core.nn.wideangle_net import WideAngleNet

    images, _, _ = wa.simulate_shots(3, seed=12)
    x = torch.as_tensor(images, dtype=torch.float32)[:, None].to(device)
    for orientation in ("quaternion", "embedding", "both"):
        torch.manual_seed(0)
        net = WideAngleNet(equalise=True, orientation=orientation).eval().to(device)
        fast = inference_network(net)
        assert fast.ranks_input
        with torch.no_grad():
            for apply, _ in image_transforms():
                slow_out = net(apply(x))
                fast_out = fast(apply(equalised(x)).contiguous(memory_format=torch.channels_last))
                for a, b in zip(slow_out, fast_out, strict=True):
                    assert torch.allclose(a, b, atol=1e-4), orientation


def test_consensus_of_the_flips_answers_ignores_outliers_and_equivalents():
    """Eight answers for one shot, given as arbitrary equivalents (q g, -q): six within a
    degree of the truth, two 25 and 40 degrees off. The consensus lands within a degree and
    counts six agreeing, the radius the mean of all eight; the plain mean of all eight
    orientations is pulled away by the two."""
    from napari_cdinn.core.nn.wideangle import consensus

    rng = np.random.default_rng(3)
    truth = ico.random_orientations(1, rng)[0]
    turns = [rng.normal(size=3) * np.radians(0.4) for _ in range(6)]
    turns += [np.radians(25.0) * np.array([1.0, 0, 0]), np.radians(40.0) * np.array([0, 1.0, 0])]
    answers = ico.multiply(ico.from_rotation_vector(np.array(turns)), truth)
    answers = ico.multiply(answers, ico.GROUP[rng.integers(60, size=8)])
    answers *= rng.choice([-1.0, 1.0], size=(8, 1))
    radii = np.array([80.0] * 6 + [130.0, 50.0])
    q, r, agreeing = consensus(answers[None], radii[None])
    assert ico.misorientation(q, truth[None])[0] < 1.0 and r[0] == pytest.approx(82.5)
    assert agreeing.tolist() == [6]
    assert (q[:, 0] >= 0).all() and np.allclose(np.linalg.norm(q, axis=1), 1)
    everything, _, agreeing = consensus(answers[None], radii[None], within=180.0)
    assert agreeing.tolist() == [8]
    assert ico.misorientation(everything, truth[None])[0] > 3.0


def test_unsure_shots_are_those_few_flips_agree_on():
    """The shots few flips agree on are the ones to refine; a fit has no count."""
    from napari_cdinn.core import wideangle
    from napari_cdinn.core.data import OrientationResult, Provenance

    q = ico.random_orientations(4, np.random.default_rng(8))
    network = OrientationResult(q, np.full(4, 90.0), Provenance("NN"), np.array([8, 3, 6, 5]))
    assert wideangle.unsure_shots(network).tolist() == [1, 3]
    assert wideangle.unsure_shots(network, below=9).tolist() == [0, 1, 2, 3]
    fitted = OrientationResult(
        q[:2],
        np.array([70.0, 80.0]),
        Provenance(
            method="NN + simplex",
            parameters={"starts": 1, "shots": [1, 3], "similarity": [0.8, 0.9],
                        "beam_offsets_px": [[0, 2], [-2, 0]], "blur_sigmas_px": [0.0, 2.0]},
        ),
    )  # fmt: skip
    assert wideangle.unsure_shots(fitted).size == 0  # a fit has no count


def test_a_long_fit_yields_between_pieces_so_cancel_is_quick(monkeypatch):
    """A start of many simulations runs in pieces, yielding between them (the worker's Cancel
    acts at a yield); the pieces resume each other, so the fit still finds the cluster."""
    from napari_cdinn.core import wideangle
    from napari_cdinn.core.data import OrientationResult, Provenance

    monkeypatch.setattr(wideangle, "SIMULATIONS_BETWEEN_YIELDS", 25)
    rng = np.random.default_rng(21)
    q, r = ico.random_orientations(1, rng), np.array([80.0])
    image = wa.log_image(wa.Simulator().intensity(r[0], q[0]))[None]
    radii = r
    start = OrientationResult(q, r + 4, Provenance("test"))
    recipe = wideangle.FitRecipe(starts=1, evaluations=150)
    steps = wideangle.fit_steps(_shots(image), recipe, start=start)
    yields = 0
    try:
        while True:
            next(steps)
            yields += 1
    except StopIteration as done:
        refined = done.value
    assert yields >= 4  # 150 simulations in pieces of 25 (fewer if it converged early)
    assert abs(refined.radii_nm[0] - radii[0]) < 2.0


def test_patchify_stem_sees_detail_that_binning_erases():
    """A checkerboard of single pixels averages away in 2 x 2 bins: the pooling stem cannot
    tell it from a flat image, the full-resolution (patchify) stem can."""
    import torch

    from napari_cdinn.core.nn.wideangle_net import WideAngleNet

    flat = torch.full((1, 1, 128, 128), 0.5)
    board = flat + 0.1 * (-1.0) ** (torch.arange(128)[:, None] + torch.arange(128)[None, :])
    torch.manual_seed(0)
    for stem, tells in (("pool", False), ("patchify", True)):
        features = WideAngleNet(stem=stem).eval().features
        with torch.no_grad():
            differs = not torch.allclose(features(flat), features(board), atol=1e-6)
        assert differs == tells, stem


def _shots(images: np.ndarray, source: str = "shots.npy"):
    from napari_cdinn.core.data import Metadata, ShotSet

    return ShotSet(images, Metadata(source=source), scaling="display value / 255")


def test_bad_shots_are_refused_with_the_file_and_the_problem():
    from napari_cdinn.core import wideangle
    from napari_cdinn.core.errors import InputError

    with pytest.raises(InputError, match=r"shots.npy.*64 x 64 pixels.*128 x 128"):
        wideangle.shot_images(_shots(np.ones((2, 64, 64), np.float32)))
    with pytest.raises(InputError, match=r"shots.npy: .*frames seem to lie along the last axis"):
        wideangle.shot_images(_shots(np.ones((128, 128, 4), np.float32)))  # frames last
    images = np.random.default_rng(0).random((3, 128, 128)).astype(np.float32)
    images[1] = 0
    with pytest.raises(InputError, match="no shots"):
        wideangle.shot_images(_shots(np.zeros((0, 128, 128), np.float32)))
    images[1, 5, 5] = 1
    images[2, 0, 0] = np.nan
    with pytest.warns(UserWarning, match=r"NaN .* shot\(s\) 2 taken"):
        cleaned = wideangle.shot_images(_shots(images))
    assert cleaned[2, 0, 0] == 0


def test_a_shot_of_too_few_photons_is_refused_by_the_fit():
    """Isolated photons only: nothing is left with signal after the fit's 3 x 3 median filter,
    and a correlation over no pixels made every candidate fit equally (the random start came
    back as the answer, similarity 0)."""
    from napari_cdinn.core import wideangle
    from napari_cdinn.core.errors import InputError
    from napari_cdinn.core.progress import run_to_end

    sparse = np.zeros((1, 128, 128), np.float32)
    sparse[0, ::7, ::7] = np.random.default_rng(0).uniform(0.2, 0.8, (19, 19))
    with pytest.raises(InputError, match=r"sparse\.npy: shot 0: 0 binned pixels with signal"):
        run_to_end(wideangle.fit_steps(_shots(sparse, "sparse.npy")))
    saturated = np.full((1, 128, 128), 200 / 255, np.float32)  # a grey image: no pattern
    with pytest.raises(InputError, match=r"flat\.npy: shot 0: the same value in every pixel"):
        run_to_end(wideangle.fit_steps(_shots(saturated, "flat.npy"), shots=[0]))
    with pytest.raises(InputError, match=r"flat\.npy: shot\(s\) 0 hold no signal .* the same"):
        run_to_end(wideangle.fit_steps(_shots(saturated, "flat.npy")))  # none left to fit


def test_an_unfittable_shot_is_refused_before_the_others_are_fitted():
    """A long fit must not end, hours in, on a bad shot found at its turn: all are checked
    before the first simplex."""
    from napari_cdinn.core import wideangle
    from napari_cdinn.core.errors import InputError

    good = wa.log_image(
        wa.Simulator().intensity(80.0, ico.random_orientations(1, np.random.default_rng(3))[0])
    )
    sparse = np.zeros((128, 128), np.float32)
    sparse[::7, ::7] = np.random.default_rng(0).uniform(0.2, 0.8, (19, 19))
    steps = wideangle.fit_steps(_shots(np.stack([good, sparse]), "two.npy"))
    with pytest.raises(InputError, match=r"two\.npy: shot 1: 0 binned pixels"):
        next(steps)  # at once, not after shot 0's simplex


def test_blank_or_flat_shots_are_left_out_and_the_others_inverted():
    """One blank (all zero), all-NaN or saturated shot stopped the whole stack ("shot(s) 1 hold
    no signal"), and a saturated one got a confident answer: they are left out with a warning
    naming them, their rows NaN (0 flips agreeing), the others inverted; a fit of a good shot
    works beside a blank one, and a fit of the blank one is refused."""
    from napari_cdinn.core import wideangle
    from napari_cdinn.core.data import DiffractionStack, Metadata
    from napari_cdinn.core.errors import InputError, InputWarning
    from napari_cdinn.core.progress import run_to_end

    good = wa.log_image(
        wa.Simulator().intensity(80.0, ico.random_orientations(1, np.random.default_rng(3))[0])
    )
    images = np.stack([good, np.zeros_like(good), np.ones_like(good), good])
    with pytest.warns(InputWarning, match=r"shots.npy: shot\(s\) 1, 2 hold no signal.*left out"):
        result = run_to_end(wideangle.network_steps(_shots(images)))
    assert np.isnan(result.radii_nm[1:3]).all() and np.isnan(result.quaternions[1:3]).all()
    assert np.isfinite(result.radii_nm[[0, 3]]).all() and (result.flips_agreeing[1:3] == 0).all()
    assert 2 not in wideangle.unsure_shots(result) and 1 not in wideangle.unsure_shots(result)
    intensities = np.stack([np.full((128, 128), 5.0), np.full((128, 128), np.nan)])
    intensities = np.concatenate([intensities, 10 ** (4 * good[None])]).astype(np.float32)
    stack = DiffractionStack(intensities, None, Metadata(source="stack.npy"))
    with pytest.warns(InputWarning, match=r"stack.npy: shot\(s\) 0, 1 hold no signal"):
        assert np.isnan(run_to_end(wideangle.network_steps(stack)).radii_nm[:2]).all()
    recipe = wideangle.FitRecipe(starts=1, evaluations=5)
    fitted = run_to_end(wideangle.fit_steps(_shots(images), recipe, shots=[3]))
    assert fitted.radii_nm.shape == (1,) and np.isfinite(fitted.radii_nm).all()
    with pytest.raises(InputError, match=r"shots.npy: shot 1: no signal \(all zero\)"):
        run_to_end(wideangle.fit_steps(_shots(images), recipe, shots=[1]))
    with pytest.warns(InputWarning, match=r"shot\(s\) 1, 2 hold"):
        fitted = run_to_end(wideangle.fit_steps(_shots(images), recipe))
    assert fitted.provenance.parameters["shots"] == [0, 3]
    # a 1-bit (thresholded) pattern is one value where it has signal, over a fifth of the
    # detector: its pattern is where those pixels lie, so it is inverted, not left out
    binary = np.where(good > np.quantile(good, 0.8), 1.0, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputWarning)
        kept = run_to_end(wideangle.network_steps(_shots(np.stack([binary, good]))))
    assert np.isfinite(kept.radii_nm).all()


def test_colour_png_is_refused(tmp_path):
    import imageio.v3 as iio

    from napari_cdinn.core import io
    from napari_cdinn.core.errors import InputError

    colour = np.zeros((128, 128, 3), np.uint8)
    colour[..., 0] = 200
    iio.imwrite(tmp_path / "shot.png", colour)
    with pytest.raises(InputError, match=r"shot\.png.*colour"):
        io.read(tmp_path / "shot.png")


def test_refine_from_a_nearby_start_finds_the_cluster():
    from dataclasses import replace

    from napari_cdinn.core import wideangle
    from napari_cdinn.core.data import OrientationResult, Provenance
    from napari_cdinn.core.progress import run_to_end

    rng = np.random.default_rng(7)
    q, r = ico.random_orientations(1, rng), np.array([80.0])
    image = wa.log_image(wa.Simulator().intensity(r[0], q[0]))[None]
    off = ico.multiply(q, [np.cos(np.radians(2)), 0, np.sin(np.radians(2)), 0])  # 4 degrees
    start = OrientationResult(off, r + 4, Provenance("test"))
    finished = []  # each shot's answer as soon as it is found (kept by a cancelled fit)
    result = run_to_end(wideangle.fit_steps(_shots(image), start=start, finished=finished))
    assert ico.misorientation(result.quaternions, q)[0] < 1.0
    assert abs(result.radii_nm[0] - r[0]) < 1.0
    assert result.provenance.parameters["similarity"][0] > 0.99
    ((shot, alone),) = finished
    assert shot == 0 and np.array_equal(alone.quaternions, result.quaternions)
    assert alone.provenance.parameters["shots"] == [0]
    assert alone.provenance.method == result.provenance.method == "NN + simplex"
    # a fit cancelled at the step that reports a shot done keeps that shot
    two = OrientationResult(np.repeat(off, 2, axis=0), np.repeat(r + 4, 2), Provenance("test"))
    kept = []
    steps = wideangle.fit_steps(
        _shots(np.repeat(image, 2, axis=0)), wideangle.FitRecipe(evaluations=20), two, None, kept
    )
    while next(steps) != (1, 2):
        pass
    steps.close()  # what Cancel does at that step
    assert [shot for shot, _ in kept] == [0]
    # the dock's fits of single shots saved as one: a setting changed between them per row
    other = wideangle.merged(
        [
            alone,
            replace(
                alone,
                provenance=replace(
                    alone.provenance, parameters={**alone.provenance.parameters, "evaluations": 99}
                ),
            ),
        ]
    )
    assert other.radii_nm.shape == (2,) and other.provenance.parameters["shots"] == [0, 0]
    assert other.provenance.parameters["evaluations"] == [
        alone.provenance.parameters["evaluations"],
        99,
    ]


def test_fit_follows_a_blurred_beam_off_centre_through_salt_and_pepper():
    """A pattern moved by (4, -2) detector pixels, blurred (sigma 2 pixels), with salt-and-
    pepper pixels: refine from 4 degrees off still finds the cluster, and reports the beam's
    offset and the blur."""
    from scipy.ndimage import gaussian_filter

    from napari_cdinn.core import wideangle
    from napari_cdinn.core.data import OrientationResult, Provenance
    from napari_cdinn.core.progress import run_to_end

    rng = np.random.default_rng(5)
    q, r = ico.random_orientations(1, rng), np.array([100.0])
    image = wa.log_image(gaussian_filter(wa.Simulator().intensity(r[0], q[0]), 2))
    image = np.roll(image, (4, -2), (0, 1))
    image.flat[rng.choice(image.size, 160, replace=False)] = rng.choice([0.0, 1.0], 160)
    off = ico.multiply(q, [np.cos(np.radians(2)), np.sin(np.radians(2)), 0, 0])  # 4 degrees
    start = OrientationResult(off, r - 3, Provenance("test"))
    result = run_to_end(wideangle.fit_steps(_shots(image[None]), start=start))
    assert ico.misorientation(result.quaternions, q)[0] < 1.0
    assert abs(result.radii_nm[0] - r[0]) < 1.5
    assert result.provenance.parameters["beam_offsets_px"][0] == [4, -2]
    assert result.provenance.parameters["blur_sigmas_px"][0] == 2.0


def test_cluster_mesh_is_the_turned_icosahedron():
    from napari_cdinn.core import wideangle

    q = ico.random_orientations(1, np.random.default_rng(8))[0]
    vertices, faces = wideangle.cluster_mesh(q, 100.0)
    assert vertices.shape == (12, 3) and faces.shape == (20, 3)
    assert np.allclose(np.linalg.norm(vertices, axis=1), 100.0, rtol=1e-5)
    reference, _ = ico.icosahedron(100.0)
    expected = reference @ ico.rotation_matrix(q).T
    assert np.allclose(vertices, expected[:, ::-1], atol=1e-3)


def test_bundled_model_orients_fresh_shots(device):
    """The issue's check: 64 fresh noiseless shots (8-bit, as the training's), never seen in
    training (seed), median misorientation < 3 degrees; radii within a few nm; answered as
    ``wideangle.network_steps`` answers (the fused network, ranking on the device)."""
    from napari_cdinn.core import wideangle
    from napari_cdinn.core.nn.registry import load_model
    from napari_cdinn.core.nn.wideangle import inference_network, predict

    model, card = load_model(wideangle.default_model(), device)
    assert card["mode"] == "wideangle" and card["architecture"] == "WideAngleNet"
    images, orientations, radii = wa.simulate_shots(64, seed=424_242)
    q, r = predict(inference_network(model), np.round(images * 255) / 255, device)
    assert np.median(ico.misorientation(q, orientations)) < 3.0
    assert np.median(np.abs(r - radii)) < 1.5
    assert np.allclose(np.linalg.norm(q, axis=1), 1) and (q[:, 0] >= 0).all()
    lone = np.zeros((1, *images.shape[1:]), np.float32)  # one lit pixel: nothing to go on
    lone[0, 10, 20] = 1
    *_, agreeing = predict(inference_network(model), lone, device, agreement=True)
    assert agreeing.tolist() == [1]  # its answer's own flip, never "0 of 8 flips agree"


def test_an_infinite_pixel_of_a_lazily_read_shot_is_masked_not_its_peak():
    """A lazily read stack is repaired when a method loads it: one +Inf pixel is masked with a
    warning (it became the shot's peak, leaving one pixel of signal)."""
    import dask.array as da

    from napari_cdinn.core import wideangle
    from napari_cdinn.core.data import DiffractionStack, Metadata
    from napari_cdinn.core.errors import InputWarning

    intensities = wa.Simulator().intensity(80.0, np.array([1.0, 0, 0, 0]))[None].astype(np.float32)
    intensities[0, 0, 0] = np.inf
    stack = DiffractionStack(da.from_array(intensities), None, Metadata(source="inf.h5"))
    with pytest.warns(InputWarning, match="inf.h5"):
        images = wideangle.shot_images(stack)
    assert (images > 0).mean() > 0.9 and images[0, 0, 0] == 0
