"""The "Invert CDI" dock: all three methods on the sample, layers side by side, Cancel, invert on
open, and the dock following the selected dataset."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_cdinn import _settings
from napari_cdinn._sample_data import sample_path

pytestmark = pytest.mark.napari


@pytest.fixture
def cdi_dock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-cdinn", "Invert CDI")
    return widget


def test_dock_runs_all_three_methods_and_makes_layers(viewer, cdi_dock, qtbot):
    (diffraction,) = viewer.open_sample("napari-cdinn", "cdi")
    assert cdi_dock.layer_combo.currentText() == diffraction.name
    for box in cdi_dock.method_boxes.values():
        box.setChecked(True)
    cdi_dock.iterations.setValue(40)
    cdi_dock.refine_iterations.setValue(10)
    cdi_dock.run()
    qtbot.waitUntil(lambda: cdi_dock.run_button.isEnabled(), timeout=120_000)
    names = [layer.name for layer in viewer.layers]
    for method in ("NN", "ER/HIO", "NN+RAAR/ER"):
        for word in ("shape", "phase"):
            name = f"cdi_crystals {word} ({method})"
            assert name in names, names
            assert viewer.layers[name].data.shape == (32, 64, 64)
        phase = viewer.layers[f"cdi_crystals phase ({method})"]
        assert phase.colormap.name == "twilight"
        assert tuple(phase.contrast_limits) == pytest.approx((-np.pi, np.pi))
        assert np.abs(phase.data).max() <= np.pi + 1e-6
    assert viewer.canvas.grid.enabled
    assert "NN:" in cdi_dock.times.text() and "ER/HIO:" in cdi_dock.times.text()
    assert len(cdi_dock.figure.axes[0].lines) == 3  # one chi^2 curve per method


def test_a_workers_warnings_reach_the_user(viewer, cdi_dock, qtbot, notifications, tmp_path):
    """Warnings in a worker thread went to its ``warned`` signal, which nothing showed: a
    missed shot left out (objects zero, chi2 NaN) was not explained, nor NaN pixels masked."""
    from napari.utils.notifications import NotificationSeverity

    from napari_cdinn.core import io

    frames = np.array(io.read(sample_path("cdi_crystals.cxi")).intensities[:3])
    frames[1] = 0  # a missed shot
    frames[0, 0, 0] = np.nan
    path = tmp_path / "series.npy"
    np.save(path, frames)
    data_dock = viewer.window.add_plugin_dock_widget("napari-cdinn", "Diffraction data")[1]
    data_dock.open_path(path)  # read in a worker: its NaN warning
    qtbot.waitUntil(lambda: len(viewer.layers) > 0, timeout=30_000)
    cdi_dock.run()
    qtbot.waitUntil(lambda: cdi_dock.run_button.isEnabled(), timeout=60_000)
    warned = [str(n.message) for n in notifications() if n.severity == NotificationSeverity.WARNING]
    assert any("1 NaN/Inf pixel" in m and "series.npy" in m for m in warned), warned
    assert any("[1] hold no measured signal" in m for m in warned), warned


def test_cancel_stops_a_long_iterative_run(viewer, cdi_dock, qtbot):
    viewer.open_sample("napari-cdinn", "cdi")
    cdi_dock.method_boxes["nn"].setChecked(False)
    cdi_dock.method_boxes["iterative"].setChecked(True)
    cdi_dock.iterations.setValue(5000)  # minutes of work if not cancelled
    progressed = []
    cdi_dock.run()
    cdi_dock.worker.yielded.connect(progressed.append)
    qtbot.waitUntil(lambda: len(progressed) > 0, timeout=30_000)
    cancelled_at = time.perf_counter()
    cdi_dock.stop_work()
    qtbot.waitUntil(lambda: cdi_dock.run_button.isEnabled(), timeout=10_000)
    assert time.perf_counter() - cancelled_at < 10
    assert progressed[-1][0] < progressed[-1][1]  # stopped before the end
    assert not [layer for layer in viewer.layers if "(ER/HIO)" in layer.name]


def test_dock_follows_the_selected_dataset(viewer, cdi_dock, tmp_path):
    first = viewer.open(sample_path("cdi_crystals.cxi"), plugin="napari-cdinn")[0]
    np.save(tmp_path / "second.npy", first.metadata["cdinn"]["data"].intensities[:3])
    second = viewer.open(tmp_path / "second.npy", plugin="napari-cdinn")[0]
    viewer.layers.selection.active = first
    assert cdi_dock.layer_combo.currentText() == first.name
    viewer.layers.selection.active = second
    assert cdi_dock.layer_combo.currentText() == second.name


def test_invert_on_open_adds_network_layers(viewer, cdi_dock):
    cdi_dock.invert_on_open.setChecked(True)
    assert _settings.invert_on_open()
    layers = viewer.open(sample_path("cdi_crystals.cxi"), plugin="napari-cdinn")
    names = [layer.name for layer in layers]
    assert names == [
        "cdi_crystals diffraction",
        "cdi_crystals shape (NN)",
        "cdi_crystals phase (NN)",
    ]
    assert layers[1].data.shape == (32, 64, 64)
    shots = viewer.open(sample_path("wideangle_shots.cxi"), plugin="napari-cdinn")
    assert [layer.name for layer in shots] == ["wideangle_shots diffraction"]  # not CDI's to invert
    sample = viewer.open_sample("napari-cdinn", "cdi")  # File > Open Sample: as a file opened
    names = [layer.name for layer in sample]
    assert names[1:] == ["cdi_crystals shape (NN) [1]", "cdi_crystals phase (NN) [1]"]
    cdi_dock.invert_on_open.setChecked(False)
    assert not _settings.invert_on_open()


def test_invert_on_open_that_fails_keeps_the_data_and_the_box_follows_the_setting(
    viewer, cdi_dock, monkeypatch
):
    """A failure other than ours (a GPU out of memory) lost even the data layers; the box
    kept showing the setting as it was when the dock was made."""
    from napari_cdinn.core import cdi

    _settings.set_invert_on_open(True)  # as the preferences would
    assert cdi_dock.invert_on_open.isChecked()

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(cdi, "invert_steps", out_of_memory)
    with pytest.warns(UserWarning, match="invert on open failed .*CUDA out of memory"):
        layers = viewer.open(sample_path("cdi_crystals.cxi"), plugin="napari-cdinn")
    assert [layer.name for layer in layers] == ["cdi_crystals diffraction"]
    _settings.set_invert_on_open(False)
    assert not cdi_dock.invert_on_open.isChecked()


def test_results_of_a_numbered_layer_are_named_after_it(viewer, cdi_dock, qtbot):
    viewer.open_sample("napari-cdinn", "cdi")
    (second,) = viewer.open_sample("napari-cdinn", "cdi")
    assert second.name == "cdi_crystals diffraction [1]"
    cdi_dock.layer_combo.setCurrentIndex(cdi_dock.layer_combo.findData(second.unique_id))
    assert cdi_dock.selected_layer() is second
    cdi_dock.run()
    qtbot.waitUntil(lambda: cdi_dock.run_button.isEnabled(), timeout=60_000)
    assert "cdi_crystals [1] shape (NN)" in [layer.name for layer in viewer.layers]


def test_frames_of_a_ptychography_scan_get_layers_of_their_own(viewer, cdi_dock, qtbot):
    """The CDI dock on a scan's frames must not replace the Ptychography dock's stitched
    layers, which share the scan's name ("ptycho_scan phase (NN)")."""
    viewer.open_sample("napari-cdinn", "ptycho")
    cdi_dock.layer_combo.setCurrentText("ptycho_scan diffraction")
    cdi_dock.run()
    qtbot.waitUntil(lambda: cdi_dock.run_button.isEnabled(), timeout=120_000)
    names = [layer.name for layer in viewer.layers]
    assert "ptycho_scan frames phase (NN)" in names and "ptycho_scan phase (NN)" not in names


def test_a_renamed_layer_is_listed_and_run_under_its_new_name(viewer, cdi_dock, tmp_path):
    """The list followed only added and removed layers: after a rename, clicking the layer
    left the dock on another dataset, which Run then inverted."""
    (first,) = viewer.open_sample("napari-cdinn", "cdi")
    (second,) = viewer.open_sample("napari-cdinn", "cdi")  # "... [1]"
    second.name = "sample B"
    items = [cdi_dock.layer_combo.itemText(i) for i in range(cdi_dock.layer_combo.count())]
    assert items == [first.name, "sample B"]
    viewer.layers.selection.active = second
    assert cdi_dock.selected_layer() is second
    cdi_dock.layer_combo.setCurrentText(first.name)
    first.name = "sample A"  # the chosen layer renamed: still the chosen one
    assert cdi_dock.layer_combo.currentText() == "sample A"


def test_a_second_run_and_an_opened_result_file_keep_their_layers(
    viewer, cdi_dock, qtbot, tmp_path
):
    from napari_cdinn.core import cdi, io
    from napari_cdinn.core.progress import run_to_end

    (diffraction,) = viewer.open_sample("napari-cdinn", "cdi")
    stack = diffraction.metadata["cdinn"]["data"]
    saved = tmp_path / "cdi_crystals.h5"  # yesterday's network result of these patterns
    io.write_results(saved, [run_to_end(cdi.network_steps(stack, device="cpu"))])
    viewer.open(str(saved), plugin="napari-cdinn")
    opened = {layer.name: layer for layer in viewer.layers if "(NN)" in layer.name}
    assert "cdi_crystals phase (NN)" in opened
    viewer.layers.selection.active = diffraction
    for box in cdi_dock.method_boxes.values():
        box.setChecked(False)
    cdi_dock.method_boxes["nn"].setChecked(True)
    for _ in range(2):
        cdi_dock.run()
        qtbot.waitUntil(lambda: cdi_dock.run_button.isEnabled(), timeout=60_000)
    for name, layer in opened.items():  # neither removed nor changed
        assert viewer.layers[name] is layer
    names = [layer.name for layer in viewer.layers]
    assert {"cdi_crystals shape (NN)", "cdi_crystals shape (NN) [1]"} <= set(names), names
    assert {"cdi_crystals phase (NN) [1]", "cdi_crystals phase (NN) [2]"} <= set(names), names
