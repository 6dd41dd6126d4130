"""The "Wide-angle" dock: the network's orientation and size for every shot of a stack, the
pattern re-simulated from each answer beside the measured one, the cluster as a surface, and the
forward fit (Fit, Refine) of the current shot, with progress and Cancel.  All work runs in
napari workers; the dock only moves layers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from napari.layers import Image, Layer
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from .. import _settings
from .._layers import dataset_of
from ..core import icosahedral, wideangle
from ..core.data import DiffractionStack, OrientationResult, ShotSet
from ..core.nn.registry import list_models
from ..core.nn.wideangle import CONSENSUS_DEGREES
from ..core.simulate.wideangle import RADII
from . import WorkerDock, refill, source_label

if TYPE_CHECKING:
    import napari

GAP = 8  # pixels between a shot and its re-simulated pattern


def shots_of(layer: Layer | None) -> ShotSet | DiffractionStack | None:
    """The shots behind a layer napari-cdinn opened: single-shot images, or a stack of
    128 x 128 patterns (e.g. simulated shots in a CXI file)."""
    data = dataset_of(layer.metadata) if isinstance(layer, Image) else None
    if isinstance(data, ShotSet):
        return data
    if isinstance(data, DiffractionStack) and data.frame_shape == (128, 128):
        return data
    return None


class WideAngleDock(WorkerDock):
    """Shots -> Predict (whole stack) -> per shot: 3D cluster, re-simulated pattern, table;
    Fit / Refine the current shot."""

    def __init__(self, napari_viewer: napari.Viewer):
        super().__init__()
        self.viewer = napari_viewer
        # answers per shots layer, by its unique id (they stay with it through a rename)
        self.network: dict[str, OrientationResult] = {}
        self.fits: dict[tuple[str, int, str], OrientationResult] = {}  # (layer, shot, method)
        # the layers this dock shows beside each shots layer ("simulated", "cluster"), by the
        # shots layer's id: updated by identity, so a user's layer of the same name is left alone
        self.shown: dict[tuple[str, str], Layer] = {}

        self.shots_combo = QComboBox()
        self.shots_combo.activated.connect(self._show_current)  # the user picked another layer
        self.model_combo = QComboBox()
        self.predict_button = QPushButton("Predict (network)")
        self.predict_button.clicked.connect(self.predict)
        self.starts = QSpinBox(minimum=1, maximum=64, value=wideangle.FitRecipe.starts)
        self.evaluations = QSpinBox(minimum=10, maximum=5000, value=wideangle.FitRecipe.evaluations)
        self.fit_button = QPushButton("Fit shot")
        self.fit_button.setToolTip("Monte-Carlo simplex fit of the current shot (random starts)")
        self.fit_button.clicked.connect(lambda: self.fit("fit"))
        self.refine_button = QPushButton("Refine shot")
        self.refine_button.setToolTip("Simplex fit of the current shot from the network's answer")
        self.refine_button.clicked.connect(lambda: self.fit("refine"))
        self.unsure_button = QPushButton("Refine unsure")
        self.unsure_button.setToolTip(
            "Refine, from the network's answer, every shot of the stack where fewer than "
            f"{wideangle.UNSURE_BELOW} of its eight flips agree"
        )
        self.unsure_button.clicked.connect(self.refine_unsure)
        self.run_buttons = [
            self.predict_button, self.fit_button, self.refine_button, self.unsure_button
        ]  # fmt: skip
        self.table = QTableWidget(0, 7)
        self.table.setHorizontalHeaderLabels(
            ["method", "radius (nm)", "flips agree", "quaternion (w, x, y, z)", "to fit (deg)",
             "similarity", "beam offset (px)"]
        )  # fmt: skip
        self.table.horizontalHeaderItem(2).setToolTip(
            "how many of the network's answers for the eight flips of the shot agree (within "
            f"{CONSENSUS_DEGREES:g} deg) with its answer: few mean an unsure answer, worth a "
            "Refine"
        )
        self.table.verticalHeader().setVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Shots layer", self.shots_combo)
        form.addRow("Model", self.model_combo)
        form.addRow(self.predict_button)
        form.addRow("Fit: random starts", self.starts)
        form.addRow("Fit: simulations per start", self.evaluations)
        buttons = QHBoxLayout()
        for button in (self.fit_button, self.refine_button, self.unsure_button, self.stop_button):
            buttons.addWidget(button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.table)
        layout.addWidget(self.status)

        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self._show_current)
        self._refresh_layers()
        for path in list_models("wideangle"):
            self.model_combo.addItem(path.stem, str(path))

    # -- choices ---------------------------------------------------------------------------------
    def _refresh_layers(self, event: object = None) -> None:
        layers = [layer for layer in self.viewer.layers if shots_of(layer) is not None]
        refill(self.shots_combo, layers, self._refresh_layers)
        ids = [layer.unique_id for layer in layers]
        # answers for a layer that is gone go with it: a new layer of the same name (the same
        # file re-simulated and opened again) must not show them, nor refine from them
        self.network = {key: result for key, result in self.network.items() if key in ids}
        self.fits = {key: result for key, result in self.fits.items() if key[0] in ids}
        self.shown = {key: layer for key, layer in self.shown.items() if key[1] in ids}
        self._show_table(self.shots_combo.currentData(), self.current_shot())  # no stale rows

    def _own(self, kind: str, shots: Layer) -> Layer | None:
        """The ``kind`` layer this dock made beside ``shots``, if it is still in the viewer."""
        layer = self.shown.get((kind, shots.unique_id))
        return layer if layer is not None and layer in self.viewer.layers else None

    def _layer(self, name: str) -> Layer | None:
        return self.viewer.layers[name] if name in self.viewer.layers else None  # noqa: SIM401

    def _still(self, name: str, layer_id: str) -> bool:
        """Whether the layer called ``name`` is still the one of ``layer_id`` (not removed, nor
        replaced by a layer of the same name, while a worker ran on it)."""
        layer = self._layer(name)
        return layer is not None and layer.unique_id == layer_id

    def selected(self) -> tuple[str, ShotSet | DiffractionStack] | None:
        layer_name = self.shots_combo.currentText()
        data = shots_of(self._layer(layer_name))
        if data is None:
            show_error("Open single-shot images first (drag a file onto napari) and pick them.")
            return None
        return layer_name, data

    def current_shot(self) -> int:
        """The shot the viewer shows (its first axis), 0 for a single image."""
        layer = self._layer(self.shots_combo.currentText())
        if layer is None or layer.ndim < 3:
            return 0
        return int(np.clip(self.viewer.dims.current_step[0], 0, layer.data.shape[0] - 1))

    # -- work ------------------------------------------------------------------------------------
    def on_finished(self) -> None:
        super().on_finished()
        self._show_current(create=True)

    def predict(self) -> None:
        chosen = self.selected()
        model = self.model_combo.currentData()
        if chosen is None:
            return
        if not model:
            show_error("No wide-angle model found.")
            return
        layer_name, data = chosen
        layer_id = self._layer(layer_name).unique_id  # the viewer hands out a new proxy each time
        worker = create_worker(
            wideangle.answers_steps, data, Path(model), _settings.device_choice(),
            _ignore_errors=True,
        )  # fmt: skip

        def done(out: tuple) -> None:
            if self._still(layer_name, layer_id):  # not removed (or replaced) while it ran
                self._show_network(layer_name, layer_id, *out)

        self.start_work(worker, f"Network on {layer_name}", done)

    def fit(self, method: str, unsure: bool = False) -> None:
        """Fit or refine the current shot or, with ``unsure``, refine every shot whose network
        answer few flips agree with, in one worker; each shot's answer joins its table."""
        chosen = self.selected()
        if chosen is None:
            return
        layer_name, data = chosen
        layer_id = self._layer(layer_name).unique_id
        start = None
        if method == "refine":
            start = self.network.get(layer_id)
            if start is None:
                show_error("Predict with the network first: Refine starts from its answer.")
                return
        shots = wideangle.unsure_shots(start) if unsure else np.array([self.current_shot()])
        if not len(shots):
            self.status.setText(
                f"No unsure shots: at least {wideangle.UNSURE_BELOW} of 8 flips agree on each."
            )
            return
        recipe = wideangle.FitRecipe(
            starts=self.starts.value(), evaluations=self.evaluations.value()
        )
        finished: list[tuple[int, OrientationResult]] = []  # filled shot by shot as it runs
        worker = create_worker(
            wideangle.fit_steps, data, recipe, start, shots, finished, _ignore_errors=True
        )

        def keep() -> None:  # however it ended: a cancelled fit keeps the shots it finished
            if not self._still(layer_name, layer_id):
                return  # the shots' layer went (or another took its name) while it ran
            for shot, result in finished:
                self.fits[(layer_id, shot, method)] = result
            self._publish(layer_name, layer_id)
            self._show_current(create=True)
            if unsure:
                done = [shot for shot, _ in finished]
                self.status.setText(
                    f"Refined {len(done)} of {len(shots)} unsure shot(s): "
                    f"{', '.join(map(str, done)) or 'none'}"
                )

        what = f"{len(shots)} unsure shot(s)" if unsure else f"shot {shots[0]}"
        self.start_work(
            worker, f"{wideangle.LABELS[method]} of {what}", lambda result: None, then=keep
        )

    def refine_unsure(self) -> None:
        """Refine every shot whose network answer few flips agree with (the button)."""
        self.fit("refine", unsure=True)

    # -- display ---------------------------------------------------------------------------------
    def _show_network(
        self, layer_name: str, layer_id: str, result: OrientationResult, simulated: np.ndarray
    ) -> None:
        self.network[layer_id] = result
        self.viewer.canvas.grid.enabled = False  # beside the shots, not in cells of a grid
        shots = self._layer(layer_name)
        name = f"{source_label(layer_name)} simulated (NN)"
        offset = (shots.data.shape[-1] + GAP) * shots.scale[-1]
        kwargs = {
            "name": name,
            "colormap": shots.colormap.name,
            "translate": (*shots.translate[:-1], shots.translate[-1] + offset),
            "scale": shots.scale,
            "metadata": {"cdinn_result": result},
        }
        # shots on the log scale share their contrast; intensities shown as log10(1 + I) don't
        same_scale = isinstance(shots_of(shots), ShotSet)
        kwargs["contrast_limits"] = shots.contrast_limits if same_scale else (0.0, 1.0)
        existing = self._own("simulated", shots)
        if existing is not None and existing.data.shape == simulated.shape:
            existing.data = simulated
            existing.metadata = kwargs["metadata"]
        else:
            if existing is not None:
                self.viewer.layers.remove(existing)
            self.shown["simulated", shots.unique_id] = self.viewer.add_image(simulated, **kwargs)
        self._publish(layer_name, layer_id)
        wall = result.provenance.wall_time_s or 0.0
        left_out = int(np.isnan(result.radii_nm).sum())
        self.status.setText(
            f"NN: {len(result.radii_nm)} shot(s) in {wall:.2f} s "
            f"({1e3 * wall / len(result.radii_nm):.1f} ms per shot)"
            + (f"; {left_out} left out (no signal, or one value everywhere)" if left_out else "")
        )

    def _publish(self, layer_name: str, layer_id: str) -> None:
        """Put the shots' answers (the network's, then each method's fits, in shot order) in the
        metadata of the dock's simulated layer beside them, where napari's File > Save Selected
        Layers finds them (``_writer``): one results file with every answer of those shots."""
        shots = self._layer(layer_name)
        shown = None if shots is None else self._own("simulated", shots)
        network = self.network.get(layer_id)
        if shown is None or network is None:
            return
        fits = []
        for method in ("fit", "refine"):
            done = sorted(
                (shot, r) for (i, shot, m), r in self.fits.items() if (i, m) == (layer_id, method)
            )
            if done:
                fits.append(wideangle.merged([result for _, result in done]))
        shown.metadata = {**shown.metadata, "cdinn_result": network, "cdinn_fits": fits}

    def _answers(
        self, layer_id: str | None, shot: int
    ) -> list[tuple[str, np.ndarray, float, float, str, str]]:
        """(method, quaternion, radius, similarity or nan, the beam offset the fit found as
        text, the network's flips agreeing as text) for the shot, network first."""
        rows = []
        network = self.network.get(layer_id)
        if network is not None and shot < len(network.radii_nm):
            agree = network.flips_agreeing
            agreeing = "" if agree is None else f"{agree[shot]} of 8"
            rows.append(
                ("NN", network.quaternions[shot], network.radii_nm[shot], np.nan, "", agreeing)
            )
        for method in ("fit", "refine"):
            fitted = self.fits.get((layer_id, shot, method))
            if fitted is not None:
                found = fitted.provenance.parameters
                offset = ", ".join(f"{d:+d}" for d in found["beam_offsets_px"][0])
                rows.append((wideangle.LABELS[method], fitted.quaternions[0],
                             fitted.radii_nm[0], found["similarity"][0], offset, ""))  # fmt: skip
        return rows

    def _show_current(self, event: object = None, create: bool = False) -> None:
        """Table and cluster for the shot on view.  Only after work ends (``create``) may the
        cluster layer be added; on a change of shot it is only updated, so that the dock never
        adds layers while napari removes them (e.g. when closing)."""
        layer_name, layer_id = self.shots_combo.currentText(), self.shots_combo.currentData()
        shot = self.current_shot()
        rows = self._show_table(layer_id, shot)
        answered = [row for row in rows if np.isfinite(row[2])]  # not a shot left out
        shots = self._layer(layer_name)
        if answered and shots is not None:
            self._show_cluster(layer_name, shot, answered[0][1], answered[0][2], create)
        elif rows and shots is not None:  # left out: no cluster, not another shot's
            network = self.network.get(layer_id)
            answered_shots = np.flatnonzero(np.isfinite(network.radii_nm))
            if create and self._own("cluster", shots) is None and len(answered_shots):
                k = answered_shots[0]  # the layer made now, hidden, for the shots answered
                self._show_cluster(
                    layer_name, shot, network.quaternions[k], network.radii_nm[k], True
                )
            cluster = self._own("cluster", shots)
            if cluster is not None:
                cluster.metadata = {**cluster.metadata, "shot": shot, "left_out": True}
                cluster.visible = False

    def _show_table(self, layer_id: str | None, shot: int) -> list[tuple]:
        """The table of the shot's answers (empty for a layer without any); returns its rows."""
        rows = self._answers(layer_id, shot)
        fitted = self.fits.get((layer_id, shot, "fit"))
        self.table.setRowCount(len(rows))
        for row, (method, quaternion, radius, similarity, offset, agreeing) in enumerate(rows):
            to_fit = ""
            if fitted is not None:
                to_fit = (
                    f"{float(icosahedral.misorientation(quaternion, fitted.quaternions[0])):.2f}"
                )
            cells = (
                method, f"{radius:.1f}", agreeing, ", ".join(f"{v:+.4f}" for v in quaternion),
                to_fit, "" if np.isnan(similarity) else f"{similarity:.3f}", offset,
            )  # fmt: skip
            if not np.isfinite(radius):  # left out: no signal, or one value everywhere
                cells = (method, "left out", "", "no signal, or one value everywhere", "", "", "")
            pinned = wideangle.radius_limit_note(radius)  # clipped there: no measurement
            if pinned:
                cells = (method, f"{radius:.1f} (at limit)", *cells[2:])
            for column, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if pinned and column == 1:
                    item.setToolTip(pinned)
                self.table.setItem(row, column, item)
        self.table.resizeColumnsToContents()
        return rows

    def _show_cluster(
        self, layer_name: str, shot: int, quaternion: np.ndarray, radius: float, create: bool
    ) -> None:
        """The icosahedron at the answer's orientation and size as a Surface layer beside the
        patterns: its facets that face the detector, projected along the beam and drawn in the
        shots' axes (x right, y down, as the pattern lies; a viewer at the detector, looking
        back, sees them mirrored left to right), coloured by depth, in nm (the layer's scale
        maps nm to the shots' pixels).  A 3D surface would share the shot stack's axes, so the
        cluster is drawn as its projection."""
        shots = self._layer(layer_name)
        vertices, faces = wideangle.cluster_mesh(quaternion, radius)  # (z, y, x) in nm
        front = wideangle.facing_the_detector(vertices, faces)
        side = shots.data.shape[-1]
        nm = (side / 2 - GAP) / RADII[1]  # the largest cluster fills its panel
        centre = (side - 1) / 2
        placed = {
            "scale": (nm * shots.scale[-2], nm * shots.scale[-1]),
            "translate": (
                shots.translate[-2] + centre * shots.scale[-2],
                shots.translate[-1] + (2 * (side + GAP) + centre) * shots.scale[-1],
            ),
        }
        data = (vertices[:, 1:], faces[front], vertices[:, 0])  # depth as the vertex value
        seen = vertices[np.unique(faces[front]), 0]  # colours spread over the visible depths
        depths = (float(seen.min()), float(max(seen.max(), seen.min() + 1e-3)))
        name = f"{source_label(layer_name)} cluster"
        metadata = {"shot": shot, "radius_nm": radius, "quaternion": quaternion}
        existing = self._own("cluster", shots)
        if existing is not None:
            existing.data = data
            existing.contrast_limits = depths
            if existing.metadata.get("left_out"):  # hidden on a shot left out: shown again
                existing.visible = True
            existing.metadata = metadata
        elif create:
            self.shown["cluster", shots.unique_id] = self.viewer.add_surface(
                data, name=name, colormap="bop orange", contrast_limits=depths,
                metadata=metadata, **placed,
            )  # fmt: skip
