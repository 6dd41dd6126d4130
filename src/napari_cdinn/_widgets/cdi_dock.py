"""The "Invert CDI" dock: network, iterative and refined reconstructions of a diffraction layer,
side by side, with per-pattern chi^2 and wall times; work runs in a napari worker."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
from matplotlib.figure import Figure
from napari.layers import Image, Layer
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QSignalBlocker
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from .. import _settings
from .._layers import dataset_of, layers_for_result
from ..core import cdi
from ..core.data import DiffractionStack, ObjectResult, PtychoScan
from . import RunLayers, WorkerDock, refill, source_label

if TYPE_CHECKING:
    import napari


def diffraction_stack(layer: Layer | None) -> DiffractionStack | None:
    """The raw diffraction data behind a layer napari-cdinn opened (None for other layers)."""
    data = dataset_of(layer.metadata) if isinstance(layer, Image) else None
    stack = getattr(data, "stack", data)
    return stack if isinstance(stack, DiffractionStack) else None


class CDIDock(WorkerDock):
    """Pick a diffraction layer, tick methods, Run (and Cancel); results appear as layers."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer

        self.layer_combo = QComboBox()
        self.method_boxes = {
            "nn": QCheckBox("Network"),
            "iterative": QCheckBox("Iterative (ER/HIO)"),
            "refine": QCheckBox("Refine (network + RAAR/ER)"),
        }
        self.method_boxes["nn"].setChecked(True)
        self.iterations = QSpinBox(minimum=10, maximum=5000, value=620)
        self.refine_iterations = QSpinBox(minimum=1, maximum=1000, value=50)
        self.threshold = QDoubleSpinBox(minimum=0.01, maximum=0.9, singleStep=0.05, value=0.2)
        self.invert_on_open = QCheckBox("Invert with the network on open")
        self.invert_on_open.setChecked(_settings.invert_on_open())
        self.invert_on_open.toggled.connect(_settings.set_invert_on_open)
        _settings.on_invert_on_open_change(self._show_invert_on_open)
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.run)
        self.run_buttons = [self.run_button]
        self.stop_message = "Inversion cancelled"
        self.times = QLabel("")
        self.figure = Figure(figsize=(3.2, 2.2), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)

        form = QFormLayout()
        form.addRow("Diffraction layer", self.layer_combo)
        for box in self.method_boxes.values():
            form.addRow("", box)
        form.addRow("Iterative iterations", self.iterations)
        form.addRow("Refine iterations", self.refine_iterations)
        form.addRow("Shrink-wrap threshold", self.threshold)
        form.addRow("", self.invert_on_open)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.times)
        layout.addWidget(self.canvas)

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.selection.events.active.connect(self._follow_selection)
        self._refresh_layers()
        self._follow_selection()

    # -- layer choice ----------------------------------------------------------------------------
    def _refresh_layers(self, event: object = None) -> None:
        stacks = [layer for layer in self.viewer.layers if diffraction_stack(layer) is not None]
        refill(self.layer_combo, stacks, self._refresh_layers)

    def _follow_selection(self, event: object = None) -> None:
        """The dock follows the user clicking through several opened datasets."""
        layer = self.viewer.layers.selection.active
        if diffraction_stack(layer) is not None:
            self.layer_combo.setCurrentIndex(self.layer_combo.findData(layer.unique_id))

    def selected_layer(self) -> Layer | None:
        chosen = self.layer_combo.currentData()  # the layer's unique id (refill)
        return next((layer for layer in self.viewer.layers if layer.unique_id == chosen), None)

    def _show_invert_on_open(self, event: object = None) -> None:
        """The box follows the setting when the preferences change it."""
        with QSignalBlocker(self.invert_on_open):
            self.invert_on_open.setChecked(_settings.invert_on_open())

    # -- running ---------------------------------------------------------------------------------
    def run(self) -> None:
        layer = self.selected_layer()
        stack = diffraction_stack(layer)
        methods = [m for m, box in self.method_boxes.items() if box.isChecked()]
        if stack is None:
            show_error("Open diffraction data first (drag a file onto napari) and pick its layer.")
            return
        if not methods:
            show_error("Tick at least one method.")
            return
        worker = create_worker(
            cdi.invert_steps, stack, methods, self.iterations.value(),
            self.refine_iterations.value(), self.threshold.value(), _settings.device_choice(),
            _ignore_errors=True,
        )  # fmt: skip
        self.start_work(
            worker, f"Inverting {layer.name}", lambda results: self._show(layer, results)
        )

    # -- results ---------------------------------------------------------------------------------
    def _show(self, layer: Layer, results: dict[str, ObjectResult]) -> None:
        source = source_label(layer.name)
        if isinstance(dataset_of(layer.metadata), PtychoScan):  # frames one by one, as CDI:
            source += " frames"  # not the Ptychography dock's stitched layers of the same name
        run = RunLayers(self.viewer)  # earlier runs' layers and opened results stay
        for result in results.values():
            for layer_data in layers_for_result(result, source, amplitude_word="shape"):
                run.show(layer_data)
        self.viewer.canvas.grid.enabled = True
        self.viewer.reset_view()
        self._plot(results)

    def _plot(self, results: dict[str, ObjectResult]) -> None:
        self.figure.clear()
        axes = self.figure.add_subplot(111)
        for result in results.values():
            axes.semilogy(
                np.arange(len(result.chi2)), result.chi2, ".-", label=result.provenance.method
            )
        axes.set_xlabel("pattern")
        axes.set_ylabel("chi²")
        axes.legend(fontsize="small")
        self.canvas.draw_idle()
        self.times.setText(
            "  ".join(
                f"{r.provenance.method}: {r.provenance.wall_time_s:.2f} s" for r in results.values()
            )
        )
