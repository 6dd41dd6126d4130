"""Start napari with the plugin's dock: what ``napari-cdinn view`` runs."""

from __future__ import annotations

from pathlib import Path

DOCK = "Diffraction data"
DOCKS = (DOCK, "Invert CDI", "Ptychography", "Wide-angle")


def open_viewer(
    file: Path | None = None, dataset: str | None = None, screenshot: Path | None = None
) -> int:
    """Open a viewer with the dock (and ``file``); with ``screenshot``, save the window and quit."""
    from qtpy.QtCore import QTimer

    import napari

    viewer = napari.Viewer(title="napari-cdinn")
    frame, dock = viewer.window.add_plugin_dock_widget("napari-cdinn", DOCK)
    for other in DOCKS[1:]:
        viewer.window.add_plugin_dock_widget("napari-cdinn", other, tabify=True)
    QTimer.singleShot(0, frame.raise_)  # the data dock's tab in front (else the last added)
    if file is not None:
        dock.open_path(Path(file), dataset)
    if screenshot is not None:

        def shoot() -> None:
            viewer.screenshot(str(screenshot), canvas_only=False, flash=False)
            viewer.close()

        QTimer.singleShot(1500, shoot)
    napari.run()
    return 0
