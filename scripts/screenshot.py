"""Screenshots for the README: both bundled samples opened through the plugin's dock
(docs/screenshot.png), and with ``--cdi`` the CDI sample inverted by the Invert CDI dock with all
three methods side by side (docs/screenshot_cdi.png), and with ``--ptycho`` the ptychography
sample through the Ptychography dock: ePIE, a drawn region, retraining, the network's result
(docs/screenshot_ptycho.png), and with ``--wideangle`` the wide-angle sample shots through the
Wide-angle dock: the network's answers, the patterns simulated from them, the cluster, and a
refined shot in the table (docs/screenshot_wideangle.png).

The Bragg CDI patterns and the ptychography scan (diffraction and scan positions) are opened with
the "Diffraction data" dock, shown side by side in napari's grid mode, and the ptychography
diffraction layer is selected so the dock shows its summary.

Run (a display is needed; on a headless machine use xvfb)::

    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/screenshot.py
    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/screenshot.py -o /tmp/shot.png --frame 5
    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/screenshot.py --cdi
    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/screenshot.py --ptycho
    xvfb-run -a -s "-screen 0 1400x900x24" python scripts/screenshot.py --wideangle
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = ("cdi_crystals.cxi", "ptycho_scan.cxi")  # opened in this order; the last one is selected


def _wait(condition, timeout: float = 60.0) -> None:
    """Process Qt events until ``condition()`` holds (a worker finished), or fail after ``timeout``."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise SystemExit(f"timed out after {timeout:g} s waiting for the viewer")
        QApplication.processEvents()
        time.sleep(0.02)


def _settle(seconds: float = 0.5) -> None:
    """Let Qt lay out, resize and repaint for a moment."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def _hide_notifications(window) -> None:
    """Close the "Opened N layer(s)" toasts, which would cover part of the canvas."""
    from napari._qt.dialogs.qt_notification import NapariQtNotification

    for toast in window.findChildren(NapariQtNotification):
        toast.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-o", "--output", type=Path, help="default docs/screenshot(_cdi, _ptycho, _wideangle).png"
    )
    parser.add_argument("--cdi", action="store_true", help="the Invert CDI dock with its results")
    parser.add_argument("--ptycho", action="store_true", help="the Ptychography dock at work")
    parser.add_argument("--wideangle", action="store_true", help="the Wide-angle dock at work")
    parser.add_argument("--size", default="1400x860", help="window size WIDTHxHEIGHT")
    parser.add_argument("--frame", type=int, default=12, help="frame shown (both stacks)")
    args = parser.parse_args()
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        print(
            "no display: run under xvfb, e.g.\n"
            '  xvfb-run -a -s "-screen 0 1400x900x24" python scripts/screenshot.py',
            file=sys.stderr,
        )
        return 2
    width, height = (int(v) for v in args.size.lower().split("x"))

    import napari
    from napari_cdinn._sample_data import sample_path
    from napari_cdinn._viewer import DOCK

    viewer = napari.Viewer(title="napari-cdinn")
    window = viewer.window._qt_window
    window.resize(width, height)
    if args.ptycho:
        return ptycho_screenshot(viewer, args.output or REPO / "docs" / "screenshot_ptycho.png")
    if args.wideangle:
        output = args.output or REPO / "docs" / "screenshot_wideangle.png"
        return wideangle_screenshot(viewer, output, shot=3)
    if args.cdi:
        return cdi_screenshot(
            viewer, args.output or REPO / "docs" / "screenshot_cdi.png", args.frame
        )
    args.output = args.output or REPO / "docs" / "screenshot.png"
    _, dock = viewer.window.add_plugin_dock_widget("napari-cdinn", DOCK)

    for name in SAMPLES:  # through the dock, as a user would: a worker reads, then adds the layers
        before = len(viewer.layers)
        dock.open_path(sample_path(name))
        _wait(lambda before=before: len(viewer.layers) > before and dock.open_button.isEnabled())

    diffraction = [layer for layer in viewer.layers if layer.name.endswith(" diffraction")]
    if len(diffraction) != len(SAMPLES):
        raise SystemExit(f"expected {len(SAMPLES)} diffraction layers, got {viewer.layers}")
    frame = diffraction[-1].data.shape[-1]
    for layer in viewer.layers:
        if layer.name.endswith(" scan positions"):
            # shown shrunk to a frame's size, so the grid's cells (as large as the largest layer)
            # fit the diffraction frames rather than the scan; display only, data untouched
            extent = float(layer.extent.data[1].max()) or 1.0
            layer.scale = (frame / extent, frame / extent)
            layer.size = 4  # object pixels
    viewer.canvas.grid.enabled = True  # one cell per layer: both stacks and the scan side by side
    viewer.dims.set_point(0, args.frame)
    viewer.layers.selection.active = diffraction[-1]  # fills the dock's summary
    _wait(lambda: bool(dock.info.toPlainText()))
    return _save(viewer, args.output)


def _save(viewer, output: Path) -> int:
    """Fit the view (once the window has its final size), hide the toasts, write the window to
    ``output`` and close the viewer."""
    _settle()
    viewer.reset_view()
    _hide_notifications(viewer.window._qt_window)
    _settle()
    output.parent.mkdir(parents=True, exist_ok=True)
    image = viewer.screenshot(str(output), canvas_only=False, flash=False)
    print(f"wrote {output} ({image.shape[1]} x {image.shape[0]} px)")
    viewer.close()
    return 0


def cdi_screenshot(viewer, output: Path, frame: int) -> int:
    """The CDI sample inverted by network, ER/HIO and refine, side by side with the dock's plot."""
    from napari_cdinn._sample_data import sample_path

    _, dock = viewer.window.add_plugin_dock_widget("napari-cdinn", "Invert CDI")
    viewer.open(sample_path("cdi_crystals.cxi"), plugin="napari-cdinn")
    for box in dock.method_boxes.values():
        box.setChecked(True)
    dock.run()
    _wait(lambda: dock.run_button.isEnabled(), timeout=600)
    viewer.dims.set_point(0, frame)
    viewer.layers.selection.active = viewer.layers[0]
    return _save(viewer, output)


def ptycho_screenshot(viewer, output: Path) -> int:
    """ePIE on the sample scan, a region over its left half, retraining, the network beside it."""
    import numpy as np

    _, dock = viewer.window.add_plugin_dock_widget("napari-cdinn", "Ptychography")
    viewer.open_sample("napari-cdinn", "ptycho")
    dock.epochs.setValue(100)
    dock.reconstruct()
    _wait(lambda: dock.worker is None, timeout=600)
    scan = viewer.layers["ptycho_scan diffraction"].metadata["cdinn"]["data"]
    low, high = scan.positions.min(0) - 2, scan.positions.max(0) + 66
    dock.draw_region()
    region = viewer.layers["ptycho_scan training region"]
    region.add_rectangles(np.array([[low[0], low[1]], [high[0], (low[1] + high[1]) / 2 + 20]]))
    region.mode = "pan_zoom"
    dock.reference_combo.setCurrentText("ptycho_scan amplitude (ePIE)")
    dock.seconds.setValue(30)
    dock.retrain()
    _wait(lambda: dock.worker is None and "Retrained" in dock.training_status.text(), timeout=300)
    _wait(lambda: dock.worker is None, timeout=600)
    for layer in viewer.layers:
        layer.visible = "phase" in layer.name or "region" in layer.name
    viewer.layers.move(viewer.layers.index(region), len(viewer.layers) - 1)
    network = next(  # the retrained model's, named after it
        layer for layer in viewer.layers if layer.name.startswith("ptycho_scan phase (NN ")
    )
    network.translate = np.add(network.translate, [0, network.data.shape[1] + 8])  # beside
    viewer.layers.selection.active = viewer.layers["ptycho_scan diffraction"]
    return _save(viewer, output)


def wideangle_screenshot(viewer, output: Path, shot: int) -> int:
    """The sample shots: the network's answers for all, the patterns simulated from them beside
    the shots, the cluster of the current shot, and that shot refined by a short simplex."""
    _, dock = viewer.window.add_plugin_dock_widget("napari-cdinn", "Wide-angle")
    viewer.open_sample("napari-cdinn", "wideangle")
    dock.predict()
    _wait(lambda: dock.worker is None, timeout=300)
    viewer.dims.set_current_step(0, shot)
    dock.evaluations.setValue(150)
    dock.fit("refine")
    _wait(lambda: dock.worker is None, timeout=300)
    return _save(viewer, output)


if __name__ == "__main__":
    sys.exit(main())
