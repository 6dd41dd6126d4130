"""The reader and sample data through a real viewer: layers hold the file's values, bad files are
declined or reported by name."""

from __future__ import annotations

import bz2
import io as _io
import os
import warnings
from concurrent.futures import ThreadPoolExecutor

import h5py
import imageio.v3 as iio
import numpy as np
import pytest
from napari.layers import Image, Labels, Points

from napari_cdinn._reader import get_reader
from napari_cdinn.core.data import DiffractionStack, PtychoScan, ShotSet
from napari_cdinn.core.errors import InputWarning

pytestmark = pytest.mark.napari

PLANCK_J_S = 6.62607015e-34  # written out: the tests do not reuse the code's constants
LIGHT_M_S = 299_792_458.0


def log10_1p(intensities) -> np.ndarray:
    return np.log10(1.0 + np.asarray(intensities, np.float32))


def by_type(layers, kind):
    return [layer for layer in layers if isinstance(layer, kind)]


def cdinn_meta(layer) -> dict:
    meta = layer.metadata.get("cdinn")
    assert meta, f"layer {layer.name!r} carries no napari-cdinn metadata"
    return meta


# -- real files -------------------------------------------------------------------------------
def test_cxi_near_field_ptycho(viewer, real_data):
    path = real_data("cxi/PETRAIII_P25_Near_Field_Ptycho.cxi")
    with h5py.File(path, "r") as h5:
        detector = h5["entry_1/instrument_1/detector_1"]
        frames = detector["data"][()]
        invalid = detector["mask"][()] != 0  # CXI bit mask: non-zero = bad pixel
        distance = float(detector["distance"][()])
        pixel = float(detector["x_pixel_size"][()])
        energy_j = float(h5["entry_1/instrument_1/source_1/energy"][()])
        translation = h5["entry_1/sample_1/geometry_1/translation"][()].astype(np.float64)

    layers = viewer.open(str(path), plugin="napari-cdinn")

    assert len(layers) == 3 and len(viewer.layers) == 3
    (image,) = by_type(layers, Image)
    (labels,) = by_type(layers, Labels)
    (points,) = by_type(layers, Points)
    assert image.data.shape == (200, 100, 100)
    np.testing.assert_allclose(np.asarray(image.data), log10_1p(frames), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(labels.data) != 0, invalid)
    assert invalid.sum() == 5

    # positions: -translation (x, y) / object pixel, object pixel = lambda * z / (N * p)
    wavelength = PLANCK_J_S * LIGHT_M_S / energy_j
    object_pixel = wavelength * distance / (100 * pixel)
    assert len(points.data) == 200
    np.testing.assert_allclose(points.data, -translation[:, [1, 0]] / object_pixel, rtol=1e-5)

    meta = cdinn_meta(image)
    data = meta["data"]
    assert isinstance(data, PtychoScan)
    np.testing.assert_array_equal(data.stack.intensities, frames.astype(np.float32))
    np.testing.assert_array_equal(data.positions, points.data)
    summary = meta["summary"]
    assert summary["kind"] == "PtychoScan"
    assert summary["frames"] == "(200, 100, 100) float32"
    assert summary["mask"] == "(100, 100), 5 invalid pixel(s)"
    assert summary["reader"] == "cxi"
    assert summary["energy_ev"] == pytest.approx(energy_j / 1.602176634e-19, rel=1e-6)


def _load_tike(path) -> tuple[np.ndarray, np.ndarray]:
    with bz2.open(path) as handle:
        archive = np.load(_io.BytesIO(handle.read()), allow_pickle=False)
        # tike keeps the zero frequency at [0, 0]; the reader centres the patterns
        return np.fft.fftshift(archive["data"][0], axes=(-2, -1)), archive["scan"][0]


def test_tike_siemens_star_scan(viewer, real_data):
    path = real_data("ptycho/siemens-star-small.npz.bz2")
    # bz2 releases the GIL: decompress the reference copy while the viewer reads the file
    with ThreadPoolExecutor(1) as pool:
        reference = pool.submit(_load_tike, path)
        layers = viewer.open(str(path), plugin="napari-cdinn")
        frames, scan = reference.result()

    (image,) = by_type(layers, Image)
    (points,) = by_type(layers, Points)
    assert not by_type(layers, Labels)  # no mask in the file, so no invalid-pixel layer
    assert image.data.shape == (516, 128, 128)
    np.testing.assert_allclose(np.asarray(image.data[::50]), log10_1p(frames[::50]), rtol=1e-6)
    assert points.data.shape == (516, 2)
    np.testing.assert_allclose(points.data, scan, rtol=0, atol=1e-6)

    meta = cdinn_meta(image)
    data = meta["data"]
    assert isinstance(data, PtychoScan)
    assert data.stack.intensities is not image.data  # raw intensities, not the display values
    np.testing.assert_array_equal(data.stack.intensities, frames)
    assert data.probe is not None and data.probe.shape == (128, 128)
    assert meta["summary"]["kind"] == "PtychoScan"
    assert meta["summary"]["reader"] == "npz-tike"
    assert meta["summary"]["probe"] == "(128, 128) complex64"


def test_bcdi_gold_npy(viewer, real_data):
    path = real_data("bcdi/gold_ft_crop_64.npy")
    expected = np.load(path)

    layers = viewer.open(str(path), plugin="napari-cdinn")

    assert len(layers) == 1
    (image,) = layers
    assert isinstance(image, Image) and image.data.shape == (64, 64, 64)
    np.testing.assert_allclose(np.asarray(image.data), log10_1p(expected), rtol=1e-6)
    meta = cdinn_meta(image)
    assert isinstance(meta["data"], DiffractionStack)
    np.testing.assert_array_equal(meta["data"].intensities, expected)
    assert meta["summary"]["kind"] == "DiffractionStack"
    assert meta["summary"]["frames"] == "(64, 64, 64) float32"
    assert meta["summary"]["reader"] == "npy"


def test_wideangle_barke_png(viewer, real_data):
    path = real_data("wideangle/barke5.png")
    pixels = iio.imread(path)
    grey = pixels if pixels.ndim == 2 else pixels[..., 0]

    layers = viewer.open(str(path), plugin="napari-cdinn")

    assert len(layers) == 1
    (image,) = layers
    assert isinstance(image, Image) and image.data.shape == (1, 128, 128)
    np.testing.assert_allclose(image.data[0], grey / 255.0, rtol=1e-6)
    meta = cdinn_meta(image)
    assert isinstance(meta["data"], ShotSet)
    assert meta["data"].images is image.data  # a shot set is shown as read: the same array
    assert meta["summary"]["kind"] == "ShotSet"
    assert meta["summary"]["reader"] == "png"
    assert meta["summary"]["files"] == ["barke5.png"]


def test_png_shots_opened_as_a_stack_are_one_layer(viewer, real_data):
    """napari's Open Files as Stack (or a drop with Shift) hands the reader the list: one
    stack of shots in the order given, which the Wide-angle dock then predicts for at once."""
    paths = [str(real_data(f"wideangle/barke{n}.png")) for n in (6, 5)]
    layers = viewer.open(paths, stack=True, plugin="napari-cdinn")
    assert len(layers) == 1
    assert layers[0].data.shape == (2, 128, 128)
    first = iio.imread(paths[0])
    np.testing.assert_allclose(
        layers[0].data[0], (first if first.ndim == 2 else first[..., 0]) / 255.0, rtol=1e-6
    )
    assert cdinn_meta(layers[0])["summary"]["files"] == ["barke6.png", "barke5.png"]
    assert len(viewer.open(paths, plugin="napari-cdinn")) == 2  # without stacking: one each


# -- files written here ------------------------------------------------------------------------
def test_a_lazy_stack_with_nan_gaps_gets_finite_contrast_limits():
    """A lazily read stack is not repaired when opened: its first frame's NaN gaps must not
    make the contrast limits NaN (napari would show nothing)."""
    import dask.array as da

    from napari_cdinn._layers import layers_for_dataset

    frames = np.random.default_rng(0).uniform(1, 100, (2, 8, 8)).astype(np.float32)
    frames[0, 2, :] = np.nan
    (_, kwargs, _), *_ = layers_for_dataset(DiffractionStack(da.from_array(frames)), "gaps")
    low, high = kwargs["contrast_limits"]
    assert np.isfinite([low, high]).all() and high > low
    assert low == pytest.approx(np.log10(1 + np.nanmin(frames)))


def test_a_blank_first_frame_does_not_set_the_contrast():
    """The limits came from frame 0: a missed first shot gave (0, 1), every other frame a
    solid block of saturated colour."""
    from napari_cdinn._layers import layers_for_dataset

    frames = np.random.default_rng(1).poisson(2000, (5, 16, 16)).astype(np.float32)
    frames[0] = 0
    (_, kwargs, _), *_ = layers_for_dataset(DiffractionStack(frames), "series")
    shown = np.log10(1 + frames[1:])
    assert kwargs["contrast_limits"][1] == pytest.approx(shown.max())


def test_a_result_in_memory_takes_its_contrast_from_every_frame():
    """Sampling 8 frames (meant for lazy stacks) left brighter result frames saturated."""
    from napari_cdinn._layers import layers_for_result
    from napari_cdinn.core.data import ObjectResult, Provenance

    objects = np.ones((32, 8, 8), np.complex64)
    objects[1] *= 10  # a frame between the sampled ones
    (_, kwargs, _), _ = layers_for_result(ObjectResult(objects, Provenance("ER/HIO")), "x")
    assert kwargs["contrast_limits"] == (1.0, 10.0)


def test_a_network_result_of_resampled_patterns_is_placed_at_its_pixel_scale():
    """128-pixel patterns binned for the network: its objects' pixels are twice as large, and
    every path that shows them (dock, invert on open, a reopened results file) scales them."""
    from napari_cdinn._layers import layers_for_result
    from napari_cdinn.core.data import ObjectResult, Provenance

    objects = np.ones((2, 64, 64), np.complex64)
    network = ObjectResult(objects, Provenance("NN", parameters={"object_pixel_scale": 2.0}))
    for _, kwargs, _ in layers_for_result(network):
        assert kwargs["scale"] == (1, 2.0, 2.0)
    iterative = ObjectResult(objects, Provenance("ER/HIO"))
    assert all("scale" not in kwargs for _, kwargs, _ in layers_for_result(iterative))


def test_hdf5_without_numeric_data_is_declined(tmp_path):
    path = tmp_path / "no_frames.h5"
    with h5py.File(path, "w") as h5:
        h5["title"] = "a text dataset"
        h5["vector"] = np.arange(10.0)  # 1-D: not a frame stack
        h5.create_group("empty")

    with pytest.warns(InputWarning, match="no numeric dataset"):
        assert get_reader(str(path)) is None


def test_text_file_is_declined(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("1 2 3\n4 5 6\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # declined quietly, without opening it
        assert get_reader(str(path)) is None


def test_corrupt_hdf5_raises_an_error_naming_the_file(viewer, tmp_path):
    path = tmp_path / "corrupt.h5"
    path.write_bytes(np.random.default_rng(0).bytes(4096))

    assert get_reader(str(path)) is not None  # taken, so our message is the one the user sees
    with pytest.raises(Exception) as excinfo:
        viewer.open(str(path), plugin="napari-cdinn")
    messages = []
    err = excinfo.value
    while err is not None:  # napari may wrap the reader's error: look along the chain
        messages.append(str(err))
        err = err.__cause__
    assert any(str(path) in m and "not a readable" in m for m in messages), messages
    assert len(viewer.layers) == 0
    assert os.path.getsize(path) == 4096  # the file is left as it was


# -- sample data ---------------------------------------------------------------------------------
def test_sample_data(viewer):
    cdi = viewer.open_sample("napari-cdinn", "cdi")

    assert [type(layer) for layer in cdi] == [Image]
    (patterns,) = cdi
    assert patterns.data.shape == (32, 64, 64)
    stack = cdinn_meta(patterns)["data"]
    assert isinstance(stack, DiffractionStack)
    np.testing.assert_allclose(patterns.data, log10_1p(stack.intensities), rtol=1e-6)
    assert stack.truth is not None and stack.truth.shape == (32, 64, 64)

    ptycho = viewer.open_sample("napari-cdinn", "ptycho")

    (image,) = by_type(ptycho, Image)
    (points,) = by_type(ptycho, Points)
    assert len(ptycho) == 2
    assert image.data.shape == (169, 64, 64)
    assert points.data.shape == (169, 2)
    scan = cdinn_meta(image)["data"]
    assert isinstance(scan, PtychoScan)
    np.testing.assert_array_equal(points.data, scan.positions)
    # a 13 x 13 raster with a step of 10 object pixels (and sub-pixel jitter)
    assert len(np.unique(np.round(points.data[:, 0] / 10))) == 13
    assert len(np.unique(np.round(points.data[:, 1] / 10))) == 13
    assert list(viewer.layers) == [*cdi, *ptycho]
