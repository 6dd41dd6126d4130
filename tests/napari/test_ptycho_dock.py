"""The "Ptychography" dock on the sample scan: ePIE with live layers, the network, retraining on a
drawn region (with a Stop that keeps the model), re-inversion, model files, region geometry."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_cdinn._widgets import ptycho_dock
from napari_cdinn.core import ptycho
from napari_cdinn.core.nn import registry

pytestmark = pytest.mark.napari
NAME = "ptycho_scan"


@pytest.fixture
def models(tmp_path, monkeypatch):
    """Fine-tuned models go to a temporary user folder, never the real one."""
    folder = tmp_path / "models"
    monkeypatch.setattr(registry, "user_dir", lambda: folder)
    monkeypatch.setattr(ptycho_dock, "user_dir", lambda: folder)
    return folder


@pytest.fixture
def pdock(viewer, models):
    _, widget = viewer.window.add_plugin_dock_widget("napari-cdinn", "Ptychography")
    viewer.open_sample("napari-cdinn", "ptycho")
    return widget


def wait(dock, qtbot, timeout=180_000):
    qtbot.waitUntil(lambda: dock.worker is None, timeout=timeout)


def reconstruct(dock, qtbot, epochs=40) -> list[bool]:
    """Run ePIE; returns, per progress step, whether the ePIE layers existed yet."""
    seen = []
    dock.epochs.setValue(epochs)
    dock.reconstruct()
    dock.worker.yielded.connect(
        lambda _: seen.append(f"{NAME} amplitude (ePIE)" in dock.viewer.layers)
    )
    wait(dock, qtbot)
    return seen


def draw_left_half(viewer, dock) -> None:
    dock.draw_region()
    shapes = viewer.layers[f"{NAME} training region"]
    scan = ptycho_dock.scan_of(viewer.layers[f"{NAME} diffraction"])
    low, high = scan.positions.min(0) - 2, scan.positions.max(0) + 66
    middle = (low[1] + high[1]) / 2 + 20
    shapes.add_rectangles(np.array([[low[0], low[1]], [high[0], middle]]))


def test_dock_runs_epie_network_and_retraining_then_reinverts(
    viewer, pdock, qtbot, models, error_messages
):
    assert pdock.scan_combo.currentText() == f"{NAME} diffraction"
    seen = reconstruct(pdock, qtbot, epochs=60)
    assert any(seen[:-1]), "ePIE layers should appear while it runs"
    amplitude = viewer.layers[f"{NAME} amplitude (ePIE)"]
    phase = viewer.layers[f"{NAME} phase (ePIE)"]
    assert f"{NAME} probe amplitude (ePIE)" in viewer.layers
    result = amplitude.metadata["cdinn_result"]
    assert len(result.provenance.parameters["fourier_error"]) == 60  # the result, not a preview
    assert tuple(amplitude.translate) == pytest.approx(result.origin)
    assert phase.colormap.name == "twilight"

    pdock.invert()
    wait(pdock, qtbot)
    network = viewer.layers[f"{NAME} amplitude (NN)"]
    assert network.data.shape == amplitude.data.shape
    assert tuple(network.translate) == pytest.approx(tuple(amplitude.translate))
    used = network.metadata["cdinn_result"].provenance.parameters
    assert used["probe"] == "given" and used["levelled_to_counts"]  # ePIE's probe weighs it

    draw_left_half(viewer, pdock)
    pdock.reference_combo.setCurrentText(f"{NAME} amplitude (ePIE)")
    pdock.seconds.setValue(8)
    pdock.retrain()
    pdock.every.setValue(4)  # changed while it trains: the new model still inverts what it learnt
    wait(pdock, qtbot)
    assert "Retrained" in pdock.training_status.text(), error_messages()
    assert pdock.status.text().startswith("NN:")
    wait(pdock, qtbot)  # the re-inversion with the new model
    saved = list(models.glob("*.safetensors"))
    assert len(saved) == 1 and saved[0].with_suffix(".json").exists()
    assert pdock.model_path() == saved[0]
    lines = pdock.figure.axes[0].lines
    assert len(lines) == 2 and len(lines[0].get_xdata()) >= 1  # train and validation curves
    card = registry.read_card(saved[0])
    assert card["training"]["positions"] > 10 and card["mode"] == "ptycho"
    retrained = viewer.layers[f"{NAME} amplitude (NN {saved[0].stem})"]  # beside the base's
    assert retrained.metadata["cdinn_result"].provenance.model_name == saved[0].stem
    assert viewer.layers[f"{NAME} amplitude (NN)"] is network  # the bundled model's, untouched
    assert network.metadata["cdinn_result"].provenance.model_name == "ptycho_nn"
    assert not [layer.name for layer in viewer.layers if "1 in 4" in layer.name]
    pdock.every.setValue(1)
    pdock.from_network.setChecked(True)  # ePIE from the retrained model's image
    reconstruct(pdock, qtbot, epochs=3)
    refined = [layer.name for layer in viewer.layers if "NN+ePIE" in layer.name]
    assert refined and all(saved[0].stem in name for name in refined), refined  # previews too


def test_epie_can_start_from_the_network_image(viewer, pdock, qtbot, error_messages):
    assert pdock.epochs.value() == 100
    pdock.from_network.setChecked(True)
    assert pdock.epochs.value() == 10  # what a start from the network's image needs
    pdock.from_network.setChecked(False)
    assert pdock.epochs.value() == 100
    pdock.epochs.setValue(30)  # the user's own number stays
    pdock.from_network.setChecked(True)
    assert pdock.epochs.value() == 30
    reconstruct(pdock, qtbot, epochs=3)
    amplitude = viewer.layers[f"{NAME} amplitude (NN+ePIE)"]
    result = amplitude.metadata["cdinn_result"]
    assert result.provenance.model_name == "ptycho_nn", error_messages()
    assert len(result.provenance.parameters["fourier_error"]) == 3
    assert f"{NAME} probe amplitude (NN+ePIE)" in viewer.layers
    assert f"{NAME} amplitude (ePIE)" not in viewer.layers  # previews under their own name
    assert pdock.status.text().startswith("NN+ePIE:")


def test_stop_ends_retraining_within_a_second_and_keeps_the_best_model(
    viewer, pdock, qtbot, models
):
    reconstruct(pdock, qtbot, epochs=10)
    draw_left_half(viewer, pdock)
    pdock.reference_combo.setCurrentText(f"{NAME} amplitude (ePIE)")
    pdock.seconds.setValue(600)
    pdock.retrain()
    run = pdock.run
    qtbot.waitUntil(lambda: len(run.history) >= 1, timeout=120_000)
    stopped_at = time.perf_counter()
    pdock.stop_work()
    qtbot.waitUntil(lambda: "Retrained" in pdock.training_status.text(), timeout=10_000)
    assert time.perf_counter() - stopped_at < 2.0
    assert len(run.history) < 50 and run.best_state is not None
    assert len(list(models.glob("*.safetensors"))) == 1
    wait(pdock, qtbot)


def test_a_stopped_second_epie_run_leaves_the_first_result_and_marks_its_own(viewer, pdock, qtbot):
    reconstruct(pdock, qtbot, epochs=5)
    first = viewer.layers[f"{NAME} amplitude (ePIE)"]
    finished = first.metadata["cdinn_result"]
    kept = first.data.copy()
    pdock.epochs.setValue(5000)
    pdock.reconstruct()
    qtbot.waitUntil(lambda: f"{NAME} amplitude (ePIE) [1]" in viewer.layers, timeout=60_000)
    pdock.stop_work()
    wait(pdock, qtbot)
    assert first.metadata["cdinn_result"] is finished and np.array_equal(first.data, kept)
    stopped = viewer.layers[f"{NAME} amplitude (ePIE) [1]"].metadata["cdinn_result"]
    assert stopped.provenance.parameters["stopped"]
    assert pdock.status.text() == f"Stopped at epoch {stopped.provenance.parameters['epochs_done']}"
    assert pdock.reference_combo.currentText() == f"{NAME} amplitude (ePIE) [1]"


def test_a_reconstruction_opened_from_a_file_is_never_changed(viewer, pdock, qtbot, tmp_path):
    from napari_cdinn.core import io

    reconstruct(pdock, qtbot, epochs=3)
    result = viewer.layers[f"{NAME} amplitude (ePIE)"].metadata["cdinn_result"]
    path = tmp_path / f"{NAME}.h5"
    io.write_results(path, [result])
    viewer.layers.clear()
    viewer.open_sample("napari-cdinn", "ptycho")
    viewer.open(str(path), plugin="napari-cdinn")
    opened = {layer.name: layer.data.copy() for layer in viewer.layers if "(ePIE)" in layer.name}
    assert f"{NAME} amplitude (ePIE)" in opened
    reconstruct(pdock, qtbot, epochs=4)
    for name, data in opened.items():
        assert np.array_equal(viewer.layers[name].data, data), name
    assert f"{NAME} amplitude (ePIE) [1]" in viewer.layers


def test_model_files_load_save_and_a_wrong_file_is_refused(pdock, tmp_path, error_messages):
    bundled = pdock.model_path()
    copy = pdock.save_model_as(bundled, tmp_path / "copy")
    assert copy.exists() and pdock.model_path() == copy
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    broken.with_suffix(".json").write_text(copy.with_suffix(".json").read_text())
    pdock.load_model_path(broken)
    assert any("broken.safetensors" in m for m in error_messages())
    assert pdock.model_path() == copy
    gone = tmp_path / "gone.safetensors"  # picked once, deleted since: a message, no traceback
    assert pdock.save_model_as(gone, tmp_path / "again") is None
    assert any("gone.safetensors" in m for m in error_messages())
    assert pdock.model_path() == copy


def test_a_reconstruction_of_a_scan_named_phase_is_offered_as_reference(viewer, pdock):
    from napari.layers import Layer

    from napari_cdinn._layers import layers_for_result
    from napari_cdinn.core.data import ObjectResult, Provenance

    result = ObjectResult(np.ones((40, 40), np.complex64), Provenance("ePIE"), origin=(0.0, 0.0))
    for data, kwargs, kind in layers_for_result(result, "phase_grating"):
        viewer.add_layer(Layer.create(data, kwargs, kind))
    offered = [pdock.reference_combo.itemText(i) for i in range(pdock.reference_combo.count())]
    assert "phase_grating amplitude (ePIE)" in offered
    assert "phase_grating phase (ePIE)" not in offered


def test_an_ellipse_region_is_the_ellipse_and_a_line_encloses_nothing(viewer, pdock):
    scan = ptycho_dock.scan_of(viewer.layers[f"{NAME} diffraction"])
    grid = ptycho.ObjectGrid.around(scan.positions, scan.stack.frame_shape)
    centre = np.array(grid.origin) + np.array(grid.shape) / 2
    shapes = viewer.add_shapes()
    shapes.add_ellipses(np.array([centre, [20, 30]]))  # centre and half-axes (y, x)
    shapes.add_lines(np.array([centre - 10, centre + 10]))
    region = ptycho_dock.region_from_shapes(shapes, grid)
    assert region.sum() == pytest.approx(np.pi * 20 * 30, rel=0.05)  # not the box's 2400


def test_region_from_shapes_follows_the_layer_transform(viewer, pdock):
    scan = ptycho_dock.scan_of(viewer.layers[f"{NAME} diffraction"])
    grid = ptycho.ObjectGrid.around(scan.positions, scan.stack.frame_shape)
    shapes = viewer.add_shapes(scale=(2, 2), translate=(10, 5))
    shapes.add_rectangles(np.array([[0, 0], [20, 30]]))  # data coordinates
    region = ptycho_dock.region_from_shapes(shapes, grid)
    expected = ptycho.region_mask(grid, polygon=np.array([[10, 5], [50, 5], [50, 65], [10, 65]]))
    assert region.sum() > 0
    assert np.array_equal(region, expected)
