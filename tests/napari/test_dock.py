"""The "Diffraction data" dock: summary of the selected layer, opening files in a worker, errors as
notifications, the HDF5 dataset choice and the compute-device setting."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from napari.layers import Image, Points

from napari_cdinn._sample_data import sample_path
from napari_cdinn.core.data import DiffractionStack, PtychoScan

pytestmark = pytest.mark.napari

WAIT_MS = 20_000


def wait_for_worker(qtbot, dock) -> None:
    """Until the dock's worker has finished (the Open button comes back)."""
    assert dock.worker is not None
    qtbot.waitUntil(lambda: dock.open_button.isEnabled(), timeout=WAIT_MS)


def test_dock_opens_and_summarises_the_selected_layer(viewer, dock):
    plain = viewer.add_image(np.zeros((8, 8)), name="plain")
    # napari hands plugin widgets a proxy of the viewer: compare what it shows, not identity
    assert [layer.name for layer in dock.viewer.layers] == ["plain"]
    names = list(viewer.window.dock_widgets)
    assert any("Diffraction data" in name for name in names), names
    assert dock.info.toPlainText() == ""  # a plain layer has no napari-cdinn summary

    (diffraction,) = viewer.open_sample("napari-cdinn", "cdi")
    summary = diffraction.metadata["cdinn"]["summary"]
    viewer.layers.selection.active = plain
    assert dock.info.toPlainText() == ""
    viewer.layers.selection.active = diffraction  # the selection change fills the box
    text = dock.info.toPlainText()
    assert len(text.splitlines()) == len(summary)
    for key, value in summary.items():
        assert f"{key}: {value}" in text
    assert "kind: DiffractionStack" in text and "(32, 64, 64) float32" in text

    viewer.layers.selection.active = plain  # not ours: the box is emptied, not left stale
    assert dock.info.toPlainText() == ""


def test_open_path_reads_in_a_worker_and_adds_layers(viewer, dock, qtbot, error_messages):
    path = sample_path("ptycho_scan.cxi")
    with h5py.File(path, "r") as h5:
        frames = h5["entry_1/instrument_1/detector_1/data"][()]

    dock.open_path(path)
    qtbot.waitUntil(lambda: len(viewer.layers) == 2, timeout=WAIT_MS)
    wait_for_worker(qtbot, dock)

    image, points = viewer.layers
    assert isinstance(image, Image) and isinstance(points, Points)
    np.testing.assert_allclose(image.data, np.log10(1 + frames), rtol=1e-6)
    scan = image.metadata["cdinn"]["data"]
    assert isinstance(scan, PtychoScan)
    np.testing.assert_array_equal(points.data, scan.positions)
    assert tuple(points.translate) == (32.0, 32.0)  # each frame's middle, where the beam was
    assert dock.path_edit.text() == str(path)
    assert error_messages() == []
    # the new layer is selected, so the dock shows its summary
    viewer.layers.selection.active = image
    assert "kind: PtychoScan" in dock.info.toPlainText()


def test_open_path_shows_a_results_file_as_its_results(viewer, dock, qtbot, tmp_path):
    """Open on a results file shows its results, as a drop does (not its arrays as frames)."""
    from napari_cdinn.core import io
    from napari_cdinn.core.data import ObjectResult, Provenance

    path = tmp_path / "results.h5"
    objects = np.full((2, 16, 16), 0.5 * np.exp(0.3j), np.complex64)
    io.write_results(path, [ObjectResult(objects, Provenance("NN"))])
    dock.open_path(path)
    qtbot.waitUntil(lambda: len(viewer.layers) >= 2, timeout=WAIT_MS)
    wait_for_worker(qtbot, dock)
    amplitude = next(layer for layer in viewer.layers if "amplitude" in layer.name)
    np.testing.assert_allclose(amplitude.data, 0.5, rtol=1e-6)


def test_corrupt_file_in_dock_is_an_error_notification(
    viewer, dock, qtbot, tmp_path, error_messages
):
    bad = tmp_path / "garbage.h5"
    bad.write_bytes(np.random.default_rng(1).bytes(2048))

    dock.open_path(bad)
    wait_for_worker(qtbot, dock)
    qtbot.waitUntil(lambda: bool(error_messages()), timeout=WAIT_MS)

    assert len(viewer.layers) == 0
    messages = error_messages()
    assert any(str(bad) in m and "not a readable HDF5 file" in m for m in messages), messages
    assert bad.read_bytes()[:4] != b"\x89HDF"  # untouched, still garbage


def test_dataset_combo_lists_and_opens_a_chosen_dataset(viewer, dock, qtbot, tmp_path):
    rng = np.random.default_rng(2)
    big = rng.poisson(50, (4, 16, 16)).astype(np.float32)
    small = rng.integers(0, 1000, (3, 8, 8)).astype(np.uint16)
    path = tmp_path / "two_stacks.h5"
    with h5py.File(path, "w") as h5:
        h5["scan/big"] = big
        h5["other/small"] = small
        h5["other/vector"] = np.arange(5.0)  # 1-D: not listed
        h5["other/label"] = "not numeric"  # text: not listed

    dock.path_edit.setText(str(path))
    dock.path_edit.editingFinished.emit()  # what typing a path and leaving the field does

    combo = dock.dataset_combo
    listed = [combo.itemData(i) for i in range(combo.count())]
    assert listed == [None, "scan/big", "other/small"]  # automatic first, then largest first
    assert "(3, 8, 8) uint16" in combo.itemText(2)

    combo.setCurrentIndex(combo.findData("other/small"))
    dock.open_button.click()
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=WAIT_MS)
    wait_for_worker(qtbot, dock)

    (layer,) = viewer.layers
    np.testing.assert_allclose(layer.data, np.log10(1 + small.astype(np.float32)), rtol=1e-6)
    data = layer.metadata["cdinn"]["data"]
    assert isinstance(data, DiffractionStack)
    assert data.meta.dataset == "other/small"
    np.testing.assert_array_equal(data.intensities, small)


def test_device_combo_reads_and_writes_the_plugin_setting(make_napari_viewer):
    from napari.settings import get_plugin_settings

    compute = get_plugin_settings("napari-cdinn").compute
    original = compute.device
    try:
        compute.device = "cpu"
        viewer = make_napari_viewer()
        _, dock = viewer.window.add_plugin_dock_widget("napari-cdinn", "Diffraction data")
        assert dock.device_combo.currentText() == "cpu"  # read at start
        assert [dock.device_combo.itemText(i) for i in range(3)] == ["auto", "cpu", "cuda"]

        dock.device_combo.setCurrentText("cuda")
        assert get_plugin_settings("napari-cdinn").compute.device == "cuda"
        saved = get_plugin_settings("napari-cdinn").config_path
        assert saved is not None and saved.parent.name.startswith("napari-config")  # conftest
        assert "cuda" in saved.read_text()  # persisted (in a temporary folder)
        dock.device_combo.setCurrentText("auto")
        assert compute.device == "auto"
        compute.device = "cpu"  # as the preferences dialog sets it
        assert dock.device_combo.currentText() == "cpu"
    finally:
        compute.device = original
    assert get_plugin_settings("napari-cdinn").compute.device == original


def test_a_worker_faster_than_the_gui_does_not_nest_progress_calls(viewer, qtbot):
    """napari's progress bar processes Qt events while it redraws, so a worker's next step
    arrives inside the call showing the last one; nesting them overflowed the stack (a crash of
    the whole application in ePIE on a fast CPU)."""
    from napari.qt.threading import thread_worker

    from napari_cdinn._widgets import WorkerDock

    dock = WorkerDock()
    shown: list[tuple[int, int]] = []
    dock.on_step = shown.append

    def steps():
        for done in range(1, 20_001):
            yield done, 20_000

    dock.start_work(thread_worker(steps)(), "fast steps", lambda _: None)
    qtbot.waitUntil(lambda: dock.worker is None, timeout=120_000)
    assert len(shown) >= 2 and shown == sorted(shown)  # shown in order, and no crash


def test_opening_a_file_or_the_data_dock_does_not_import_torch():
    """torch takes seconds and some 200 MB to import: only a network run should pay for it
    (the Data dock imported it, through the device choices, and froze napari for ~2 s)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import napari_cdinn._reader, napari_cdinn._writer, napari_cdinn._widgets.data_dock\n"
        "print('torch' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.stdout.strip() == "False", run.stdout + run.stderr


def test_a_typed_home_path_opens(viewer, dock, qtbot, monkeypatch, tmp_path, error_messages):
    """'~/...' typed in the path box was 'file not found'."""
    monkeypatch.setenv("HOME", str(tmp_path))
    np.save(tmp_path / "frames.npy", np.ones((2, 16, 16), np.float32))
    dock.path_edit.setText("~/frames.npy")
    dock._open_clicked()
    qtbot.waitUntil(lambda: len(viewer.layers) == 1, timeout=WAIT_MS)
    wait_for_worker(qtbot, dock)
    assert error_messages() == []


def test_libraries_deprecations_from_a_worker_are_not_notified(notifications):
    """A worker's thread shows every warning: torch's deprecations, imported there, became
    notifications; ours still are."""
    from napari_cdinn._widgets import _relay_warning
    from napari_cdinn.core.errors import InputWarning

    _relay_warning((DeprecationWarning("old api"), DeprecationWarning, "torch.py", 1))
    _relay_warning((InputWarning("x.h5: 3 NaN pixels"), InputWarning, "checks.py", 1))
    assert [str(n.message) for n in notifications()] == ["x.h5: 3 NaN pixels"]
