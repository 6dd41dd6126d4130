"""The "Diffraction data" dock: open a file (choosing the HDF5 dataset), see what the selected
layer holds, and pick the compute device."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

from napari.layers import Layer
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import _settings
from .._reader import read_layers, stack_layers
from ..core import io
from ..core.device import DEVICE_CHOICES
from ..core.errors import CdinnError
from . import relay_reports

if TYPE_CHECKING:
    import napari

AUTOMATIC = "(automatic)"


class DataDock(QWidget):
    """Open diffraction files into layers and summarise the selected one."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None

        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("CXI, HDF5, NPY/NPZ, TIFF or PNG file, or a folder")
        self.path_edit.editingFinished.connect(self._refresh_datasets)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        folder = QPushButton("Folder…")  # a folder of TIFF or PNG frames, read as one stack
        folder.clicked.connect(self._browse_folder)
        path_row = QHBoxLayout()
        path_row.addWidget(self.path_edit)
        path_row.addWidget(browse)
        path_row.addWidget(folder)

        self.dataset_combo = QComboBox()
        self.dataset_combo.addItem(AUTOMATIC)
        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(self._open_clicked)

        self.device_combo = QComboBox()
        self.device_combo.addItems(DEVICE_CHOICES)
        self.device_combo.setCurrentText(_settings.device_choice())
        self.device_combo.currentTextChanged.connect(_settings.set_device_choice)
        _settings.on_device_change(self._show_device)  # chosen in the preferences too

        self.info = QPlainTextEdit()
        self.info.setReadOnly(True)
        self.info.setPlaceholderText("Select a layer opened by napari-cdinn to see its summary.")

        form = QFormLayout()
        form.addRow("File", path_row)
        form.addRow("Dataset", self.dataset_combo)
        form.addRow("", self.open_button)
        form.addRow("Compute device", self.device_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.info)

        self.viewer.layers.selection.events.active.connect(self._show_active)
        self._show_active()

    # -- opening -------------------------------------------------------------------------------
    def _show_device(self, event: object) -> None:
        """The device setting changed (here or in the preferences): show it."""
        with contextlib.suppress(RuntimeError):  # the combo went with its window
            self.device_combo.setCurrentText(str(event.value))

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open diffraction data")
        if path:
            self.path_edit.setText(path)
            self._refresh_datasets()

    def _browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a folder of TIFF or PNG frames")
        if path:
            self.path_edit.setText(path)
            self._refresh_datasets()

    def _typed_path(self) -> Path:
        path = Path(self.path_edit.text().strip())
        try:
            return path.expanduser()  # ~/scans/run.h5 too
        except RuntimeError:  # ~nosuchuser/...: the reader says it is not found
            return path

    def _refresh_datasets(self) -> None:
        """List the numeric datasets of an HDF5 file so the user can override the choice."""
        self.dataset_combo.clear()
        self.dataset_combo.addItem(AUTOMATIC)
        path = self._typed_path()
        if path.is_file() and io.file_kind(path) in ("hdf5", "cxi"):
            try:
                for name, shape, dtype in io.list_datasets(path):
                    self.dataset_combo.addItem(f"{name}  {shape} {dtype}", name)
            except CdinnError as err:
                show_error(str(err))

    def _open_clicked(self) -> None:
        text = self.path_edit.text().strip()
        if not text:
            show_error("Choose a file to open first.")
            return
        self.open_path(self._typed_path(), self.dataset_combo.currentData())

    def open_path(self, path: Path, dataset: str | None = None) -> None:
        """Read ``path`` in a worker thread and add its layers; errors become notifications."""
        self.path_edit.setText(str(path))
        self.open_button.setEnabled(False)
        self.worker = create_worker(
            # as a drop: invert on open, a results file's layers
            lambda: stack_layers(io.read(path, dataset=dataset)) if dataset else read_layers(path),
            _progress={"desc": f"Opening {path.name}"},
            _ignore_errors=True,  # report_error shows them; re-raising would make them "unhandled"
        )
        self.worker.returned.connect(self._add_layers)
        relay_reports(self.worker)
        self.worker.finished.connect(lambda: self.open_button.setEnabled(True))
        self.worker.start()

    def _add_layers(self, layer_data: list) -> None:
        for data, kwargs, kind in layer_data:
            self.viewer.add_layer(Layer.create(data, kwargs, kind))
        show_info(f"Opened {len(layer_data)} layer(s) with napari-cdinn")

    # -- summary -------------------------------------------------------------------------------
    def _show_active(self, event: object = None) -> None:
        layer = self.viewer.layers.selection.active
        summary = layer.metadata.get("cdinn", {}).get("summary") if layer is not None else None
        if not summary:
            self.info.setPlainText("")
            return
        width = max(len(k) for k in summary)
        self.info.setPlainText("\n".join(f"{k:>{width}}: {v}" for k, v in summary.items()))
