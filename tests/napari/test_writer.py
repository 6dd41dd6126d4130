"""Writers through the viewer: result layers -> the documented HDF5 layout and back; one image ->
float32 TIFF; anything else refused with a clear message and nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from napari.layers import Layer

from napari_cdinn._layers import layers_for_result
from napari_cdinn.core import io
from napari_cdinn.core.data import ObjectResult, Provenance
from napari_cdinn.core.errors import CdinnError

pytestmark = pytest.mark.napari


def known_result() -> ObjectResult:
    """Two 16 x 16 complex objects with amplitude and phase known exactly."""
    yy, xx = np.mgrid[:16, :16]
    amplitude = np.stack([(yy + xx) / 30.0, np.where((yy - 8) ** 2 + (xx - 8) ** 2 < 25, 1.0, 0)])
    phase = np.stack([np.linspace(-3.0, 3.0, 256).reshape(16, 16), 0.5 * np.sin(yy / 3.0)])
    objects = (amplitude * np.exp(1j * phase)).astype(np.complex64)
    provenance = Provenance(
        method="HIO+ER",
        model_name="cdi-unet",
        model_version="0.1",
        parameters={"iterations": 200, "beta": 0.9},
        wall_time_s=1.25,
        source="/data/crystals.cxi",
    )
    return ObjectResult(objects, provenance, support=amplitude > 0)


def add_result(viewer, result: ObjectResult) -> list[Layer]:
    layers = [Layer.create(*data) for data in layers_for_result(result)]
    for layer in layers:
        viewer.add_layer(layer)
    return layers


def test_result_layers_saved_as_h5_give_back_the_objects(viewer, tmp_path):
    result = known_result()
    amplitude, phase = add_result(viewer, result)
    viewer.add_image(np.ones((4, 4)), name="unselected plain image")  # must not be written
    viewer.layers.selection = {amplitude, phase}
    path = tmp_path / "results.h5"

    written = viewer.layers.save(str(path), selected=True, plugin="napari-cdinn")

    assert [str(p) for p in written] == [str(path)]
    (back,) = io.read_results(path)  # the amplitude/phase pair is one result, written once
    assert isinstance(back, ObjectResult)
    assert back.objects.dtype == np.complex64
    np.testing.assert_array_equal(back.objects, result.objects)
    np.testing.assert_array_equal(back.support, result.support)
    assert back.provenance == result.provenance


def test_results_file_reopens_as_amplitude_and_phase(viewer, tmp_path):
    result = known_result()
    path = tmp_path / "reopen.h5"
    viewer.layers.selection = set(add_result(viewer, result))
    viewer.layers.save(str(path), selected=True, plugin="napari-cdinn")
    viewer.layers.clear()

    layers = viewer.open(str(path), plugin="napari-cdinn")

    assert len(layers) == 2
    amplitude, phase = layers
    assert "amplitude" in amplitude.name and "HIO+ER" in amplitude.name
    assert "phase" in phase.name
    np.testing.assert_allclose(amplitude.data, np.abs(result.objects), rtol=1e-6)
    np.testing.assert_allclose(phase.data, np.angle(result.objects), atol=1e-6)
    assert phase.colormap.name == "twilight"
    assert tuple(phase.contrast_limits) == pytest.approx((-np.pi, np.pi))
    assert amplitude.data.min() >= 0
    assert list(viewer.layers) == layers
    reread = amplitude.metadata["cdinn_result"]
    assert reread is phase.metadata["cdinn_result"]
    assert reread is not result  # read from the file, not the object saved
    assert reread.provenance == result.provenance


def test_plain_image_saves_as_tiff_but_not_as_results(viewer, tmp_path):
    data = np.arange(6 * 10, dtype=np.int16).reshape(6, 10) - 7
    layer = viewer.add_image(data, name="plain image", scale=(2.0, 0.5))
    viewer.layers.selection = {layer}
    tif = tmp_path / "image.tif"

    written = viewer.layers.save(str(tif), selected=True, plugin="napari-cdinn")

    assert [str(p) for p in written] == [str(tif)]
    with tifffile.TiffFile(tif) as handle:
        back = handle.asarray()
        descriptions = [t.value for t in handle.pages[0].tags if t.name == "ImageDescription"]
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, data.astype(np.float32))
    expected = {"creator": "napari-cdinn", "name": "plain image", "scale": [2.0, 0.5]}
    assert json.loads(descriptions[0]) == expected

    h5 = tmp_path / "refused.h5"
    with pytest.raises(CdinnError) as excinfo:
        viewer.layers.save(str(h5), selected=True, plugin="napari-cdinn")

    message = str(excinfo.value)
    assert str(h5) in message
    assert "'plain image'" in message and "is not a napari-cdinn result" in message
    assert "TIFF" in message  # says what to do instead
    assert not h5.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["image.tif"]  # no half-written file


def test_a_diffraction_layer_saves_its_intensities_not_the_log_display(viewer, tmp_path):
    (layer,) = viewer.open_sample("napari-cdinn", "cdi")
    stack = layer.metadata["cdinn"]["data"]
    viewer.layers.selection = {layer}
    tif = tmp_path / "patterns.tif"
    viewer.layers.save(str(tif), selected=True, plugin="napari-cdinn")
    back = io.read(tif)
    np.testing.assert_allclose(back.intensities, stack.intensities)  # not log10(1 + I)
    assert back.intensities.max() > 100 * layer.data.max()


def test_a_diffraction_layer_saved_as_tiff_keeps_its_mask(viewer, tmp_path):
    """Unmeasured pixels are saved as NaN, which the reader masks again: saved as zeros they
    read back as measured zeros."""
    frames = np.random.default_rng(0).uniform(1, 50, (3, 16, 16)).astype(np.float32)
    frames[:, 4, 5] = np.nan  # a gap in every frame
    frames[1, 9, 9] = np.nan  # and a pixel of one frame
    source = tmp_path / "gaps.npy"
    np.save(source, frames)
    with pytest.warns(UserWarning, match="NaN"):
        layers = viewer.open(str(source), plugin="napari-cdinn")
    (layer,) = [x for x in layers if x.name == "gaps diffraction"]  # beside its mask layer
    viewer.layers.selection = {layer}
    tif = tmp_path / "gaps.tif"
    viewer.layers.save(str(tif), selected=True, plugin="napari-cdinn")
    with pytest.warns(UserWarning, match="4 NaN"):
        back = io.read(tif)
    np.testing.assert_array_equal(np.broadcast_to(back.mask, back.shape), np.isfinite(frames))
    measured = np.isfinite(frames)
    np.testing.assert_array_equal(back.intensities[measured], frames[measured])
