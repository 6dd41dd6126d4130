"""The "Ptychography" dock: ePIE with live layers, the network stitched beside it, and few-shot
retraining on a region drawn over the reconstruction, with a live loss plot and a Stop that keeps
the best model so far.  All work runs in napari workers; the dock only moves layers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image, Layer, Shapes
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from .. import _settings
from .._layers import dataset_of, layers_for_result, result_label, source_name
from ..core import ptycho
from ..core.data import ObjectResult, Provenance, PtychoScan
from ..core.nn.registry import (
    list_models,
    load_model,
    read_card,
    require_mode,
    save_model,
    user_dir,
    weights_path,
)
from ..core.retrieval.ptycho import EpieRecipe
from . import RunLayers, WorkerDock, latest_layer, refill, report_error, source_label

EPIE_EPOCHS = 100  # from a flat start; from the network's image ptycho.REFINE_EPOCHS do as well

if TYPE_CHECKING:
    import napari

PREVIEW_EVERY_S = 0.5  # live ePIE layers refresh at most this often


def scan_of(layer: Layer | None) -> PtychoScan | None:
    """The scan behind a diffraction layer napari-cdinn opened (None for other layers)."""
    data = dataset_of(layer.metadata) if isinstance(layer, Image) else None
    return data if isinstance(data, PtychoScan) else None


def stitched_result(layer: Layer | None) -> ObjectResult | None:
    """The stitched reconstruction behind an amplitude/phase layer (ePIE or loaded)."""
    if not isinstance(layer, Image):
        return None
    result = layer.metadata.get("cdinn_result")
    return result if isinstance(result, ObjectResult) and result.origin is not None else None


def region_from_shapes(layer: Shapes, grid: ptycho.ObjectGrid) -> np.ndarray:
    """The union of the layer's areas (rectangles, polygons, ellipses; lines and paths enclose
    none) as a mask on ``grid``; vertices go through the layer's own transform (scale,
    translate, ...) to world = scan coordinates."""
    region = np.zeros(grid.shape, bool)
    for vertices, kind in zip(layer.data, layer.shape_type, strict=True):
        if kind in ("line", "path"):
            continue
        if kind == "ellipse":  # napari keeps an ellipse as the corners of its bounding box
            vertices = ellipse_outline(np.asarray(vertices))
        world = np.array([layer.data_to_world(v) for v in vertices])[:, -2:]
        region |= ptycho.region_mask(grid, polygon=world)
    return region


def ellipse_outline(corners: np.ndarray, points: int = 90) -> np.ndarray:
    """The ellipse inscribed in a (rotated) box given by its four corners in order, as a
    polygon of ``points`` vertices (in the corners' coordinates)."""
    centre = corners.mean(axis=0)
    half_a, half_b = (corners[1] - corners[0]) / 2, (corners[3] - corners[0]) / 2
    angle = np.linspace(0, 2 * np.pi, points, endpoint=False)[:, None]
    return centre + np.cos(angle) * half_a + np.sin(angle) * half_b


class PtychoDock(WorkerDock):
    """Scan -> ePIE / network -> draw a region -> Retrain -> the whole scan by the new model."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.run = None  # the FineTuning in progress
        self._plotted_epochs = 0
        self._preview: tuple | None = None
        self._shown_at = 0.0
        self._run_layers = RunLayers(self.viewer)  # the layers of the latest run

        self.scan_combo = QComboBox()
        self.every = QSpinBox(minimum=1, maximum=16, value=1)
        self.every.setToolTip("Use every k-th scan position (sparse scans)")
        self.epochs = QSpinBox(minimum=1, maximum=5000, value=EPIE_EPOCHS)
        self.probe_update = QCheckBox("Update the probe")
        self.probe_update.setChecked(True)
        self.from_network = QCheckBox("Start from the network's image")
        self.from_network.setToolTip(
            "ePIE's first object guess is the selected model's stitched image instead of a flat "
            "one: on simulated scans 10 epochs then match 100 from a flat start, and sparse "
            "scans converge where a flat start does not (README)."
        )
        self.from_network.toggled.connect(self._suggest_epochs)
        self.epie_button = QPushButton("Reconstruct (ePIE)")
        self.epie_button.clicked.connect(self.reconstruct)
        self.model_combo = QComboBox()
        self.load_button = QPushButton("Load model...")
        self.load_button.clicked.connect(self.load_model_file)
        self.save_button = QPushButton("Save model as...")
        self.save_button.clicked.connect(self.save_model_file)
        self.invert_button = QPushButton("Invert (network)")
        self.invert_button.clicked.connect(self.invert)
        self.reference_combo = QComboBox()
        self.region_button = QPushButton("Draw region")
        self.region_button.clicked.connect(self.draw_region)
        self.seconds = QSpinBox(minimum=5, maximum=3600, value=55)
        self.seconds.setToolTip(
            "Includes simulating 3000 training pairs from the reference and its probe. A probe "
            "unlike the bundled network's training probes (a wide, strongly defocused one) may "
            "need a minute or more before the loss leaves the level of a featureless answer."
        )
        self.retrain_button = QPushButton("Retrain")
        self.retrain_button.clicked.connect(self.retrain)
        self.run_buttons = [self.epie_button, self.invert_button, self.retrain_button]
        self.stop_button.setText("Stop")
        self.stop_message = "Stopping..."
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.training_status = QLabel("")
        self.training_status.setWordWrap(True)
        self.figure = Figure(figsize=(3.2, 2.2), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)

        top = QFormLayout()
        top.addRow("Scan layer", self.scan_combo)
        top.addRow("Every k-th position", self.every)
        epie = QGroupBox("Iterative")
        epie_form = QFormLayout(epie)
        epie_form.addRow("Epochs", self.epochs)
        epie_form.addRow("", self.probe_update)
        epie_form.addRow("", self.from_network)
        epie_form.addRow(self.epie_button)
        network = QGroupBox("Network")
        network_form = QFormLayout(network)
        network_form.addRow("Model", self.model_combo)
        files = QHBoxLayout()
        files.addWidget(self.load_button)
        files.addWidget(self.save_button)
        network_form.addRow(files)
        network_form.addRow(self.invert_button)
        training = QGroupBox("Few-shot retraining")
        training_form = QFormLayout(training)
        training_form.addRow("Reference", self.reference_combo)
        training_form.addRow(self.region_button)
        training_form.addRow("Time budget (s)", self.seconds)
        training_form.addRow(self.retrain_button)
        training_form.addRow(self.training_status)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(epie)
        layout.addWidget(network)
        layout.addWidget(training)
        layout.addWidget(self.stop_button)
        layout.addWidget(self.status)
        layout.addWidget(self.canvas)

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.selection.events.active.connect(self._follow_selection)
        self._refresh_layers()
        self._refresh_models()

    # -- choices ---------------------------------------------------------------------------------
    def _refresh_layers(self, event: object = None) -> None:
        for combo, test in ((self.scan_combo, scan_of), (self.reference_combo, stitched_result)):
            layers = [layer for layer in self.viewer.layers if test(layer) is not None]
            if combo is self.reference_combo:  # one entry per result: its amplitude layer
                layers = [layer for layer in layers if layer.metadata.get("component") != "phase"]
            refill(combo, layers, self._refresh_layers)

    def _follow_selection(self, event: object = None) -> None:
        layer = self.viewer.layers.selection.active
        if scan_of(layer) is not None:
            self.scan_combo.setCurrentText(layer.name)

    def _refresh_models(self, select: Path | None = None) -> None:
        self.model_combo.clear()
        for path in list_models("ptycho"):
            self.model_combo.addItem(path.stem, str(path))
        if select is not None:
            if self.model_combo.findData(str(select)) < 0:
                self.model_combo.addItem(select.stem, str(select))
            self.model_combo.setCurrentIndex(self.model_combo.findData(str(select)))

    def _layer(self, name: str) -> Layer | None:
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401

    def selected_scan(self) -> tuple[str, PtychoScan] | None:
        scan = scan_of(self._layer(self.scan_combo.currentText()))
        if scan is None:
            show_error("Open a ptychography scan first (drag a file onto napari) and pick it.")
            return None
        name = source_label(self.scan_combo.currentText())
        if self.every.value() > 1:
            scan = scan.subset(slice(None, None, self.every.value()))
            name = f"{name} 1 in {self.every.value()}"
        return name, scan

    def model_path(self) -> Path | None:
        data = self.model_combo.currentData()
        return Path(data) if data else None

    # -- work ------------------------------------------------------------------------------------
    def on_step(self, step: tuple[int, int]) -> None:
        if self._preview is not None and time.monotonic() - self._shown_at > PREVIEW_EVERY_S:
            self._show_preview()
        if self.run is not None and len(self.run.history) != self._plotted_epochs:
            self._plot_losses(self.run)  # once per epoch: redrawing per batch slowed the training

    def _suggest_epochs(self, from_network: bool) -> None:
        """The epochs each start needs (100 from a flat object, 10 from the network's image),
        unless the user has chosen another number."""
        suggested = {False: EPIE_EPOCHS, True: ptycho.REFINE_EPOCHS}
        if self.epochs.value() == suggested[not from_network]:
            self.epochs.setValue(suggested[from_network])

    def reconstruct(self) -> None:
        chosen = self.selected_scan()
        if chosen is None:
            return
        name, scan = chosen
        recipe = EpieRecipe(
            epochs=self.epochs.value(),
            probe_update_from=2 if self.probe_update.isChecked() else None,
        )
        method = "refine" if self.from_network.isChecked() else "epie"
        model = self.model_path()
        if method == "refine" and model is None:
            show_error("No ptychography model to start from: load one or retrain.")
            return

        try:  # previews name the model as the result will (its layers' names)
            model_name = read_card(model).get("name") if method == "refine" else None
        except Exception as err:  # the model file gone or damaged since the list was made
            report_error(err)
            return

        def preview(obj: np.ndarray, probe: np.ndarray, epoch: int) -> None:
            self._preview = (name, obj, probe, epoch, method, model_name)  # for the GUI thread

        if method == "refine":
            steps = ptycho.refine_steps, scan, model, recipe
        else:
            steps = ptycho.epie_steps, scan, recipe
        worker = create_worker(*steps, _settings.device_choice(), preview, _ignore_errors=True)
        self._preview = None
        self._grid = ptycho.ObjectGrid.around(scan.positions, scan.stack.frame_shape)
        self._run_layers = RunLayers(self.viewer)
        worker.aborted.connect(self._stopped)
        self.start_work(
            worker,
            f"{ptycho.LABELS[method]} on {name}",
            lambda result: self._show_result(name, result),
            then=self._choose_reference,
        )

    def _show_preview(self) -> None:
        name, obj, probe, epoch, method, model_name = self._preview
        self._preview = None
        self._shown_at = time.monotonic()
        label = ptycho.LABELS[method]
        provenance = Provenance(
            method=label, model_name=model_name, source=name, parameters={"epochs_done": epoch}
        )
        result = ObjectResult(obj, provenance, probe=probe, origin=self._grid.origin)
        self._show_result(name, result, final=False)
        self.status.setText(f"{label} epoch {epoch}")

    def _choose_reference(self) -> None:
        """The reconstruction just made (or stopped) becomes the reference for retraining."""
        for layer in self._run_layers.made.values():
            if layer in self.viewer.layers and stitched_result(layer) is not None:
                index = self.reference_combo.findData(layer.unique_id)
                if index >= 0:
                    self.reference_combo.setCurrentIndex(index)
                    return

    def _stopped(self) -> None:
        """Stop during ePIE: the run's layers keep the latest epoch's object and probe, marked
        as stopped in their provenance; an earlier run's layers were never touched."""
        if self._preview is not None:  # an epoch newer than the one shown
            self._show_preview()
        layers = self._run_layers.made.values()
        results = [
            layer.metadata["cdinn_result"] for layer in layers if "cdinn_result" in layer.metadata
        ]
        for result in results:  # previews, each with the epoch it shows
            result.provenance.parameters["stopped"] = True
        done = max((r.provenance.parameters["epochs_done"] for r in results), default=None)
        self.status.setText(
            "Stopped before the first epoch" if done is None else f"Stopped at epoch {done}"
        )

    def invert(
        self, model: Path | None = None, chosen: tuple[str, PtychoScan] | None = None
    ) -> None:
        """The network on ``chosen`` (name, scan), by default the scan picked in the dock."""
        chosen = chosen or self.selected_scan()
        path = model or self.model_path()
        if chosen is None:
            return
        if path is None:
            show_error("No ptychography model: load one or retrain.")
            return
        name, scan = chosen
        epie = stitched_result(latest_layer(self.viewer, f"{name} amplitude (ePIE)"))
        worker = create_worker(
            ptycho.network_steps, scan, path, _settings.device_choice(),
            probe=None if epie is None else epie.probe,  # the retrieved one, as retraining's
            _ignore_errors=True,
        )  # fmt: skip
        self._run_layers = RunLayers(self.viewer)
        self.start_work(
            worker, f"Network on {name}", lambda result: self._show_result(name, result)
        )

    def _show_result(self, name: str, result: ObjectResult, final: bool = True) -> None:
        if final:  # a preview still pending (the progress bar may deliver the result before
            self._preview = None  # the last step is shown) must not overwrite the result
        self.viewer.canvas.grid.enabled = False  # layers overlay here (the CDI dock's grid off)
        reference = stitched_result(latest_layer(self.viewer, f"{name} amplitude (ePIE)"))
        if (
            result.provenance.method != "ePIE"
            and reference is not None
            and reference.objects.shape == result.objects.shape
            and reference.origin == result.origin  # an ePIE layer of another scan of this name
        ):
            result = ptycho.matched_to(result, reference)  # same phase offset and scale
        for layer_data in layers_for_result(result, name):
            self._run_layers.show(layer_data)
        if result.probe is not None:
            probe_name = f"{name} probe amplitude ({result_label(result.provenance)})"
            settings = {"name": probe_name, "colormap": "magma", "visible": False}
            self._run_layers.show((np.abs(result.probe), settings, "image"))
        if final:
            wall = result.provenance.wall_time_s or 0.0
            self.status.setText(f"{result.provenance.method}: {wall:.2f} s")

    # -- retraining ------------------------------------------------------------------------------
    def draw_region(self) -> None:
        chosen = self.selected_scan()
        if chosen is None:
            return
        name = f"{chosen[0]} training region"
        layer = self._layer(name)
        if layer is None:
            layer = self.viewer.add_shapes(
                name=name, edge_color="yellow", face_color="transparent", edge_width=2
            )
        self.viewer.layers.selection.active = layer
        layer.mode = "add_rectangle"
        show_info("Draw rectangles or polygons over the reconstruction, then press Retrain.")

    def retrain(self) -> None:
        chosen = self.selected_scan()
        reference = stitched_result(self._layer(self.reference_combo.currentText()))
        if chosen is None:
            return
        name, scan = chosen
        region_layer = self._layer(f"{name} training region")
        if reference is None:
            show_error("Reconstruct with ePIE (or open a reconstruction) to learn from first.")
            return
        if not isinstance(region_layer, Shapes) or len(region_layer.data) == 0:
            show_error("Draw the training region first (Draw region).")
            return
        base = self.model_path()
        if base is None:
            show_error("No ptychography model to start from.")
            return
        grid = ptycho.ObjectGrid.around(scan.positions, scan.stack.frame_shape)
        region = region_from_shapes(region_layer, grid)
        try:  # the file may have gone or been damaged since the list was made
            model, card = load_model(base)
        except Exception as err:
            report_error(err)
            return
        self.run = ptycho.FineTuning(model)
        self._base_card = card
        self._reference_name = self.reference_combo.currentText()
        self._trained = (name, scan)
        self.figure.clear()
        worker = create_worker(
            ptycho.retrain_steps, scan, reference, region, self.run, float(self.seconds.value()),
            _settings.device_choice(), reference_name=self._reference_name, _ignore_errors=True,
        )  # fmt: skip
        self.start_work(
            worker, f"Retraining on {name}", lambda run: None, then=self._after_training
        )

    def _plot_losses(self, run: ptycho.FineTuning) -> None:
        history = list(run.history)  # a snapshot: the training thread appends to it
        self._plotted_epochs = len(history)
        self.figure.clear()
        axes = self.figure.add_subplot(111)
        epochs = [h["epoch"] for h in history]
        axes.semilogy(epochs, [h["train"] for h in history], ".-", label="train")
        axes.semilogy(epochs, [h["validation"] for h in history], ".-", label="validation")
        axes.set_xlabel("epoch")
        axes.set_ylabel("loss")
        axes.legend(fontsize="small")
        self.canvas.draw_idle()

    def _after_training(self) -> None:
        """Stopped or done: keep the best model, save it, invert the whole scan with it."""
        run, (name, scan) = self.run, self._trained
        self.run = None  # failed, stopped or done: later work must not plot it
        if run is None or run.best_state is None:
            self.training_status.setText("No epoch finished: the model is unchanged.")
            return
        self._plot_losses(run)
        run.source["reference_layer"] = self._reference_name  # the card names its teacher
        stem = f"{source_name(scan, 'scan')}_retrained_{time.strftime('%Y%m%d_%H%M%S')}"
        region = f"shapes of layer '{name} training region'"
        try:
            path = ptycho.save_fine_tuned(run, user_dir() / stem, self._base_card, region)
        except Exception as err:  # the user models folder not writable, the disk full
            report_error(err)
            return
        self._refresh_models(select=path)
        last = run.history[-1]
        self.training_status.setText(
            f"Retrained on {run.source.get('positions')} positions, {last['epoch']} epochs, "
            f"{last['seconds']:.0f} s; saved {path.name}"
        )
        self.invert(model=path, chosen=(name, scan))  # the scan it learnt, as it was then

    # -- model files -----------------------------------------------------------------------------
    def load_model_file(self) -> None:
        chosen, _ = QFileDialog.getOpenFileName(self, "Load model", "", "Models (*.safetensors)")
        if chosen:
            self.load_model_path(Path(chosen))

    def load_model_path(self, path: Path) -> None:
        try:
            require_mode(read_card(path), "ptycho", path)
            load_model(path)  # refuse a broken file now, not at inversion time
        except Exception as err:
            report_error(err)
            return
        self._refresh_models(select=path)

    def save_model_file(self) -> None:
        current = self.model_path()
        if current is None:
            show_error("No model selected.")
            return
        target, _ = QFileDialog.getSaveFileName(self, "Save model as", "", "Models (*.safetensors)")
        if target:
            self.save_model_as(current, Path(target))

    def save_model_as(self, current: Path, target: Path) -> Path | None:
        try:  # a model file gone since, a folder not writable: a message, not a traceback
            model, card = load_model(current)
            saved = save_model(model, weights_path(target), card)
        except Exception as err:
            report_error(err)
            return None
        self._refresh_models(select=saved)
        return saved
