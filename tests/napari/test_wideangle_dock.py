"""The "Wide-angle" dock on the sample shots and on the real FLASH shots: the network's answers
with the re-simulated patterns beside the shots, the cluster in a 3D viewer, the table, and
Fit / Refine of the current shot with Cancel."""

from __future__ import annotations

import time

import numpy as np
import pytest

from napari_cdinn.core import icosahedral, io, wideangle

pytestmark = pytest.mark.napari
NAME = "wideangle_shots"


@pytest.fixture
def wdock(viewer):
    _, widget = viewer.window.add_plugin_dock_widget("napari-cdinn", "Wide-angle")
    viewer.open_sample("napari-cdinn", "wideangle")
    return widget


def wait(dock, qtbot, timeout=180_000):
    qtbot.waitUntil(lambda: dock.worker is None, timeout=timeout)


def test_dock_predicts_shows_cluster_and_simulated_patterns_then_refines(
    viewer, wdock, qtbot, error_messages
):
    assert wdock.shots_combo.currentText() == f"{NAME} diffraction"
    assert wdock.model_combo.count() >= 1
    viewer.canvas.grid.enabled = True  # as the CDI dock leaves it
    wdock.predict()
    wait(wdock, qtbot)
    assert not error_messages()
    assert not viewer.canvas.grid.enabled  # the simulated patterns beside the shots
    shots = viewer.layers[f"{NAME} diffraction"]
    simulated = viewer.layers[f"{NAME} simulated (NN)"]
    assert simulated.data.shape == shots.data.shape
    assert simulated.translate[-1] > shots.data.shape[-1]  # beside the shots
    result = wdock.network[shots.unique_id]
    assert result.quaternions.shape == (8, 4) and (result.radii_nm > 0).all()
    assert wdock.table.rowCount() == 1 and wdock.table.item(0, 0).text() == "NN"
    agreeing = result.flips_agreeing[wdock.current_shot()]
    assert wdock.table.item(0, 2).text() == f"{agreeing} of 8"
    surface = viewer.layers[f"{NAME} cluster"]
    shown = wdock.current_shot()  # the shot the viewer shows
    assert surface.metadata["shot"] == shown
    expected, _ = wideangle.cluster_mesh(result.quaternions[shown], result.radii_nm[shown])
    assert np.allclose(surface.data[0], expected[:, 1:])  # seen along the beam, in nm
    assert np.allclose(surface.data[2], expected[:, 0])  # coloured by depth
    assert 6 <= len(surface.data[1]) <= 14  # the facets facing the detector
    assert surface.translate[-1] > simulated.translate[-1]  # beside the simulated patterns

    viewer.dims.set_current_step(0, 3)  # another shot: the cluster and table follow
    assert surface.metadata["shot"] == 3
    assert surface.metadata["radius_nm"] == pytest.approx(result.radii_nm[3])

    wdock.evaluations.setValue(40)
    wdock.fit("refine")
    wait(wdock, qtbot)
    assert wdock.table.rowCount() == 2
    assert wdock.table.item(1, 0).text() == "NN + simplex"
    assert float(wdock.table.item(1, 5).text()) > 0.5  # similarity of the refined answer
    rows, columns = (int(d) for d in wdock.table.item(1, 6).text().split(","))  # beam offset
    assert max(abs(rows), abs(columns)) <= 4

    wdock.starts.setValue(2)
    wdock.fit("fit")
    wait(wdock, qtbot)
    assert wdock.table.rowCount() == 3
    assert wdock.table.item(0, 4).text() != ""  # misorientation of NN to the fit
    fitted = wdock.fits[(shots.unique_id, 3, "fit")]
    assert icosahedral.misorientation(fitted.quaternions, result.quaternions[3:4]).shape == (1,)

    viewer.layers.remove(f"{NAME} diffraction")  # its answers go with it: a layer opened
    assert not wdock.network and not wdock.fits  # again under its name starts afresh


def test_refine_unsure_refines_the_shots_few_flips_agree_on(
    viewer, wdock, qtbot, error_messages, tmp_path
):
    wdock.predict()
    wait(wdock, qtbot)
    shots = viewer.layers[f"{NAME} diffraction"]
    result = wdock.network[shots.unique_id]
    result.flips_agreeing = np.full(8, 8)
    wdock.refine_unsure()  # every answer sure: nothing to do, and the dock says so
    assert wdock.worker is None and "No unsure shots" in wdock.status.text()
    result.flips_agreeing[[2, 5]] = (3, 5)  # two unsure answers
    wdock.evaluations.setValue(40)
    wdock.refine_unsure()
    wait(wdock, qtbot)
    assert not error_messages()
    refined = {shot for (_, shot, method) in wdock.fits if method == "refine"}
    assert refined == {2, 5} and "2, 5" in wdock.status.text()
    one = wdock.fits[(shots.unique_id, 5, "refine")]
    assert one.quaternions.shape == (1, 4) and one.provenance.parameters["shots"] == [5]
    viewer.dims.set_current_step(0, 5)  # the table shows the refined answer beside the network's
    assert wdock.table.rowCount() == 2 and wdock.table.item(1, 0).text() == "NN + simplex"
    assert float(wdock.table.item(1, 5).text()) > 0.5
    # File > Save Selected Layers on the simulated patterns saves every answer of the shots
    viewer.layers.selection = {wdock.shown["simulated", shots.unique_id]}
    path = tmp_path / "answers.h5"
    viewer.layers.save(str(path), selected=True, plugin="napari-cdinn")
    network, refined = io.read_results(path)
    assert network.quaternions.shape == (8, 4) and network.flips_agreeing is not None
    assert refined.provenance.parameters["shots"] == [2, 5]
    np.testing.assert_array_equal(refined.quaternions[1], one.quaternions[0])


def test_removing_the_shots_while_the_network_runs_keeps_no_answers(
    viewer, wdock, qtbot, error_messages
):
    """The answers of a layer removed while its network ran are dropped (they raised in the
    Qt slot, and came back on the next layer of that name)."""
    wdock.predict()
    viewer.layers.remove(f"{NAME} diffraction")
    wait(wdock, qtbot)
    assert not error_messages() and not wdock.network
    viewer.open_sample("napari-cdinn", "wideangle")  # the same file again
    assert not wdock.network and wdock.table.rowCount() == 0


def test_the_table_follows_the_chosen_layer_and_answers_follow_a_renamed_one(
    viewer, wdock, qtbot, error_messages
):
    wdock.predict()
    wait(wdock, qtbot)
    predicted = viewer.layers[f"{NAME} diffraction"]
    assert wdock.table.rowCount() == 1
    (other,) = viewer.open_sample("napari-cdinn", "wideangle")  # "... [1]": no answers yet
    index = wdock.shots_combo.findData(other.unique_id)
    wdock.shots_combo.setCurrentIndex(index)
    wdock.shots_combo.activated.emit(index)  # as a user's pick
    assert wdock.table.rowCount() == 0  # not the other layer's answer
    predicted.name = "run 12 shots"  # a rename keeps its answers
    index = wdock.shots_combo.findData(predicted.unique_id)
    wdock.shots_combo.setCurrentIndex(index)
    wdock.shots_combo.activated.emit(index)
    assert wdock.table.rowCount() == 1 and predicted.unique_id in wdock.network
    viewer.layers.remove(predicted)  # gone: no rows left for it
    assert wdock.table.rowCount() == 0 and not wdock.network
    wdock.evaluations.setValue(20)
    wdock.fit("refine")  # the remaining layer was never predicted
    assert any("Predict with the network first" in m for m in error_messages())


def test_cancel_keeps_the_shots_a_refine_finished(viewer, wdock, qtbot, error_messages):
    """Refining many unsure shots takes long: cancelled, it keeps the shots it finished."""
    wdock.predict()
    wait(wdock, qtbot)
    shots = viewer.layers[f"{NAME} diffraction"]
    wdock.network[shots.unique_id].flips_agreeing = np.full(8, 2)  # all eight unsure
    wdock.evaluations.setValue(40)
    wdock.refine_unsure()
    qtbot.waitUntil(lambda: wdock.pbar is not None and wdock.pbar.n >= 2, timeout=120_000)
    wdock.stop_work()
    wait(wdock, qtbot, timeout=30_000)
    assert not error_messages()
    kept = sorted(shot for (_, shot, method) in wdock.fits if method == "refine")
    assert 2 <= len(kept) < 8 and kept == list(range(len(kept)))  # in order, from the first
    assert f"Refined {len(kept)} of 8 unsure shot(s)" in wdock.status.text()


def test_cancel_ends_a_fit(viewer, wdock, qtbot):
    wdock.starts.setValue(64)
    wdock.evaluations.setValue(60)
    wdock.fit("fit")
    qtbot.waitUntil(lambda: wdock.pbar is not None and wdock.pbar.n >= 1, timeout=60_000)
    cancelled_at = time.perf_counter()
    wdock.stop_work()
    wait(wdock, qtbot, timeout=20_000)
    assert time.perf_counter() - cancelled_at < 10
    assert not wdock.fits  # cancelled: no answer kept


def test_dock_on_the_real_flash_shots(viewer, qtbot, real_data, error_messages):
    _, dock = viewer.window.add_plugin_dock_widget("napari-cdinn", "Wide-angle")
    viewer.open(str(real_data("wideangle/barke5.png")), plugin="napari-cdinn")
    assert dock.shots_combo.currentText() == "barke5 shots"
    dock.predict()
    wait(dock, qtbot)
    assert not error_messages()
    result = dock.network[viewer.layers["barke5 shots"].unique_id]
    assert 30 <= result.radii_nm[0] <= 160
    assert dock.table.item(0, 1).text() == "160.0 (at limit)"  # clipped: no measurement
    assert "the cluster may be larger" in dock.table.item(0, 1).toolTip()
    simulated = viewer.layers["barke5 simulated (NN)"]
    measured = viewer.layers["barke5 shots"]
    assert simulated.contrast_limits == measured.contrast_limits  # same contrast
    assert ((simulated.data > 0) <= (measured.data > 0)).all()  # no-signal pixels left out


def test_layers_of_the_dock_names_that_it_did_not_make_are_left_alone(
    viewer, qtbot, real_data, error_messages
):
    """A user's layers named as the dock names its own (say from an earlier session's saved
    layers) are neither replaced nor removed: the dock adds its own beside them, and a second
    prediction updates those, found by identity."""
    _, dock = viewer.window.add_plugin_dock_widget("napari-cdinn", "Wide-angle")
    viewer.open(str(real_data("wideangle/barke5.png")), plugin="napari-cdinn")
    mine = viewer.add_image(np.ones((1, 4, 4)), name="barke5 simulated (NN)")
    my_surface = viewer.add_surface(
        (np.eye(3), np.array([[0, 1, 2]]), np.ones(3)), name="barke5 cluster"
    )
    for _ in range(2):
        dock.predict()
        wait(dock, qtbot)
    assert not error_messages()
    assert mine in viewer.layers and mine.data.shape == (1, 4, 4) and (mine.data == 1).all()
    assert my_surface in viewer.layers and len(my_surface.data[0]) == 3
    shots = viewer.layers["barke5 shots"]
    simulated = dock.shown["simulated", shots.unique_id]
    cluster = dock.shown["cluster", shots.unique_id]
    assert simulated is not mine and simulated.data.shape == shots.data.shape
    assert cluster is not my_surface
    assert len(viewer.layers) == 5  # shots, the user's two, the dock's two: none twice


def test_a_blank_shot_is_left_out_and_the_others_predicted_and_fitted(
    viewer, qtbot, tmp_path, error_messages
):
    """One blank shot stopped Predict for the whole stack, and Fit shot on a good one: it is
    left out (its table row says so, no cluster shown for it), the others answered."""
    import imageio.v3 as iio

    from napari_cdinn.core.simulate.wideangle import simulate_shots

    images, _, _ = simulate_shots(3, seed=12)
    folder = tmp_path / "shots"
    folder.mkdir()
    for k, image in enumerate(images):
        iio.imwrite(folder / f"s{k}.png", (255 * image * (k != 1)).astype(np.uint8))  # 1: blank
    _, dock = viewer.window.add_plugin_dock_widget("napari-cdinn", "Wide-angle")
    viewer.open(str(folder), plugin="napari-cdinn")
    viewer.dims.set_current_step(0, 1)  # the blank shot on view when the answers come
    dock.predict()
    wait(dock, qtbot)
    assert not error_messages()
    shots = viewer.layers[dock.shots_combo.currentText()]
    result = dock.network[shots.unique_id]
    assert np.isnan(result.radii_nm[1]) and np.isfinite(result.radii_nm[[0, 2]]).all()
    assert "1 left out" in dock.status.text()
    viewer.dims.set_current_step(0, 1)
    assert dock.table.item(0, 1).text() == "left out"
    assert not dock.shown["cluster", shots.unique_id].visible
    viewer.dims.set_current_step(0, 2)
    assert dock.shown["cluster", shots.unique_id].visible
    dock.starts.setValue(1)
    dock.evaluations.setValue(10)
    dock.fit("fit")
    wait(dock, qtbot)
    assert not error_messages()
    assert (shots.unique_id, 2, "fit") in dock.fits
