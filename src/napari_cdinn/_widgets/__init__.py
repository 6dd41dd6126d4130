"""napari dock widgets: layer plumbing, threads and calls into ``core`` only."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from napari.layers import Layer
from napari.utils import progress
from napari.utils.notifications import notification_manager, show_error, show_info
from qtpy.QtWidgets import QComboBox, QPushButton, QWidget

from .._layers import LayerData
from ..core.errors import CdinnError

if TYPE_CHECKING:
    import napari


def report_error(err: Exception) -> None:
    """A worker's error as a notification: our own errors as their one-line message."""
    show_error(str(err) if isinstance(err, CdinnError) else f"{type(err).__name__}: {err}")


def relay_reports(worker) -> None:
    """A worker's errors and warnings as notifications. Its thread catches the warnings (NaN
    pixels masked, frames left out, ...) into its ``warned`` signal, which nothing else shows:
    they were lost."""
    worker.errored.connect(report_error)
    worker.warned.connect(_relay_warning)


def _relay_warning(caught: tuple) -> None:
    """A worker's warning as a notification, but not libraries' deprecations: the worker's
    thread shows every warning ("always"), where napari's own filters would hide those."""
    if not issubclass(caught[1], DeprecationWarning | PendingDeprecationWarning):
        notification_manager.receive_warning(*caught)


def refill(combo: QComboBox, layers: list, on_rename: Callable) -> None:
    """``combo`` listing ``layers`` by name, the layer it had chosen still chosen (by identity:
    after a rename too), and ``on_rename`` called when any of them is renamed (the list would
    go stale: a renamed layer's old name pointed at another layer or none)."""
    chosen = combo.currentData()
    combo.clear()
    for layer in layers:
        layer.events.name.connect(on_rename)  # once per layer: napari drops repeats
        combo.addItem(layer.name, layer.unique_id)
    index = combo.findData(chosen) if chosen is not None else -1
    if index >= 0:
        combo.setCurrentIndex(index)


class RunLayers:
    """The layers one run of a dock makes: its live previews update them and its result lands
    in them.  Layers already in the viewer (an earlier run's, results the user opened from a
    file) are never changed or removed: where a name is taken, napari numbers the new layer's
    ("... [1]"), and both results stay to be compared."""

    def __init__(self, viewer: napari.Viewer) -> None:
        self.viewer = viewer
        self.made: dict[str, Layer] = {}  # by the name asked for (napari may have numbered it)

    def show(self, layer_data: LayerData) -> Layer:
        data, kwargs, kind = layer_data
        layer = self.made.get(kwargs["name"])
        if layer is not None and layer in self.viewer.layers and layer.data.shape == data.shape:
            layer.data = data
            layer.metadata = kwargs.get("metadata", {})
            if "contrast_limits" in kwargs:
                layer.contrast_limits = kwargs["contrast_limits"]
        else:  # the first of this run, or the user removed the run's layer meanwhile
            layer = self.viewer.add_layer(Layer.create(data, kwargs, kind))
            self.made[kwargs["name"]] = layer
        return layer


def latest_layer(viewer: napari.Viewer, name: str) -> Layer | None:
    """The last layer in the list named ``name`` or, as napari numbers repeats, ``name [k]``."""
    pattern = re.compile(re.escape(name) + r"( \[\d+\])?")
    matches = [layer for layer in viewer.layers if pattern.fullmatch(layer.name)]
    return matches[-1] if matches else None


def source_label(layer_name: str) -> str:
    """What a data layer's results are named after: "x diffraction" (or "x shots") -> "x", and
    a layer napari numbered, "x diffraction [1]" -> "x [1]" (not "x diffraction [1] shape")."""
    return re.sub(r" (diffraction|shots)( \[\d+\])?$", r"\2", layer_name)


def advance(bar, step: tuple[int, int]) -> None:
    """Move a napari progress bar to a core generator's ``(done, total)``."""
    done, total = step
    bar.total = total
    bar.update(done - bar.n)


class WorkerDock(QWidget):
    """A dock that runs one napari worker at a time (a core generator yielding ``(done,
    total)``): its progress in the activity dock, the dock's run buttons off and its stop button
    on while it runs, errors as notifications.  Subclasses list ``run_buttons`` and place
    ``stop_button`` (made here) in their layout; ``worker`` is None when the dock is idle."""

    stop_message = "Cancelling..."

    def __init__(self) -> None:
        super().__init__()
        self.worker = None
        self.pbar = None
        self._latest_step: tuple[int, int] | None = None
        self._showing = False
        self.run_buttons: list[QPushButton] = []
        self.stop_button = QPushButton("Cancel")
        self.stop_button.setEnabled(False)
        self.stop_button.clicked.connect(self.stop_work)

    def start_work(
        self,
        worker,
        description: str,
        on_return: Callable,
        then: Callable | None = None,
    ) -> None:
        """Run ``worker``; ``on_return`` gets its result, ``then`` runs after it ends however
        it ended (finished, stopped or failed), once the dock is idle again."""
        self.worker = worker
        self.pbar = progress(total=0, desc=description)
        worker.yielded.connect(self.on_progress)
        worker.returned.connect(on_return)
        relay_reports(worker)
        worker.finished.connect(self.on_finished)
        if then is not None:
            worker.finished.connect(then)
        for button in self.run_buttons:
            button.setEnabled(False)
        self.stop_button.setEnabled(True)
        worker.start()

    def on_progress(self, step: tuple[int, int]) -> None:
        """Show the worker's latest step. napari's progress bar processes Qt events while it
        redraws, which delivers the worker's next steps inside this call: there they are only
        recorded, and shown by the loop here, so a worker yielding faster than the GUI draws
        cannot nest these calls until the stack overflows (it did, in ePIE on a fast CPU)."""
        self._latest_step = step
        if self._showing:
            return
        self._showing = True
        try:
            shown = None
            while self.pbar is not None and self._latest_step is not shown:
                shown = self._latest_step
                advance(self.pbar, shown)
                self.on_step(shown)
        finally:
            self._showing = False

    def on_step(self, step: tuple[int, int]) -> None:
        """What a dock shows besides the progress bar after a step (subclasses)."""

    def on_finished(self) -> None:
        if self.pbar is not None:
            self.pbar.close()
            self.pbar = None
        for button in self.run_buttons:
            button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.worker = None

    def stop_work(self) -> None:
        """Ends the running work at its next step (the worker quits at its next yield)."""
        if self.worker is not None:
            self.worker.quit()
            show_info(self.stop_message)
