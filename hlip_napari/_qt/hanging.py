"""3-up hanging: the viewer shows the axial plane, this dock the coronal and sagittal ones, with a linked
crosshair. A click in any plane moves the other two to that point in patient space; scrolling one plane
moves its line in the others. Each plane shows the study's own series in that plane when there is one
(an acquired sagittal in the sagittal canvas), else the scan on screen, reformatted.

Why docked canvases and not napari's multi-canvas: napari 0.9 has one canvas and one camera per viewer
(its grid mode tiles layers, not planes), so each extra plane is its own ``ViewerModel`` drawn by its own
``QtViewer`` canvas, holding copies of the layers that share the voxel arrays (no copy of the data).
The same :class:`PlaneCanvas` shows a prior study side by side in compare mode.
"""
from __future__ import annotations

import weakref

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget

from .._layers import KIND_KEY, SCAN_KEY, STUDY_KEY, UNITS, study_label, study_of
from .._on_screen import on_screen
from .._reading import reading
from .._show import relabel
from .._view import PLANES, of_kind, show_plane, unwrap
from .jobs import follow, follow_layer

SIDE_PLANES = ("coronal", "sagittal")
CROSS_COLOR = "#4fc3f7"


def copy_kwargs(layer) -> dict:
    """What a copy of ``layer`` on another canvas takes from it: placement, contrast, look and metadata."""
    return {"affine": np.asarray(layer.affine.affine_matrix), "name": layer.name,
            "contrast_limits": tuple(layer.contrast_limits), "colormap": layer.colormap, "opacity": layer.opacity,
            "blending": layer.blending, "visible": layer.visible, "metadata": dict(layer.metadata),
            "interpolation2d": layer.interpolation2d}


def copy_layer(layer):
    """A layer for another canvas: the same voxels (shared), placement, contrast and metadata."""
    from napari.layers import Image

    return Image(layer.data, units=UNITS, **copy_kwargs(layer))


def plane_layers(layers, plane: str) -> list:
    """Which scan each plane shows: the series acquired in that plane if the study has one, else the one on
    screen (the first visible scan). Relevance overlays follow their scan."""
    scans = of_kind(layers, "scan")
    if not scans:
        return []
    native = [layer for layer in scans if layer.metadata.get("orientation") == plane]
    shown = next((layer for layer in scans if layer.visible), scans[0])
    pick = native[0] if native and not (shown.metadata.get("orientation") == plane) else shown
    k = pick.metadata.get(SCAN_KEY)
    overlays = [layer for layer in layers if layer.metadata.get(KIND_KEY) == "relevance"
                and layer.metadata.get(SCAN_KEY) == k]
    return [pick, *overlays]


class PlaneCanvas(QWidget):
    """One more canvas: its own ViewerModel and QtViewer, a title, the plugin's reading controls."""

    def __init__(self, title: str, parent=None):
        super().__init__(parent)
        from napari.components import ViewerModel
        from napari.qt import QtViewer

        self.model = ViewerModel(title=title)
        self.qt_viewer = QtViewer(self.model)
        self.qt_viewer.setParent(self)  # deleted with this widget; only its canvas is laid out
        self.qt_viewer.hide()
        self.title = QLabel(title)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.title)
        layout.addWidget(self.qt_viewer.canvas.native, 1)
        self.sources: list = []
        self.key: list = []
        # the plane takes the dock's height (napari adds a stretch below a dock's widgets that want none)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    def hang(self, layers, plane: str) -> None:
        """Show copies of ``layers`` (sharing their voxels) hung in ``plane``; nothing when ``layers`` is
        empty. The copies shown before (another study's, or the previous prompt's overlay) go first."""
        self.sources = list(layers)
        self.key = [(id(x), id(x.data)) for x in layers]
        gone = [x for x in self.model.layers if x.metadata.get(KIND_KEY) != "crosshair" or not layers]
        if gone:
            with self.model.layers.batched_update():  # one scene update (and garbage collection) for the plane
                for layer in gone:
                    self.model.layers.remove(layer)
        if not layers:
            self.title.setText(f"<b>{plane.capitalize()}</b>")
            return
        study = study_of(layers[0])
        for x in self.model.layers:  # the crosshair moves on with the study (redrawn for it)
            relabel(x, study)
        for layer in layers:
            copy = copy_layer(layer)
            copy.visible = True  # the plane's own series, even when hidden in the viewer
            self.model.layers.insert(len(self.model.layers) - sum(
                x.metadata.get(KIND_KEY) == "crosshair" for x in self.model.layers), copy)
        state = reading(self.model)
        state.compact = True  # the title says whose; the corner says where
        show_plane(self.model, plane)
        state.start()
        self.title.setText(f"<b>{plane.capitalize()}</b> · {study_label(study_of(layers[0]))} · "
                           f"{layers[0].name.split(' · ', 1)[-1]}")

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        if self.model.layers:
            self.model.reset_view()  # frame the study in the size the dock finally got

    def close_canvas(self) -> None:
        """Free the canvas now (napari counts live QtViewers; a closed dock must not keep one)."""
        if self.qt_viewer is None:
            return
        self.model.layers.clear()
        qt_viewer, self.qt_viewer = self.qt_viewer, None
        qt_viewer.close()
        qt_viewer.setParent(None)
        qt_viewer.deleteLater()


class HangingWidget(QWidget):
    """Docked coronal + sagittal planes linked to the viewer's axial plane. ``napari_viewer`` is injected."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        from .._show import watch

        self.viewer = unwrap(napari_viewer)
        self.screen = on_screen(self.viewer)
        watch(self.viewer)
        self.point: np.ndarray | None = None  # the crosshair, world (S, P, L) mm
        self.study = None  # the study the planes show (the screen's, once hung)
        self.canvases = {plane: PlaneCanvas(plane.capitalize(), self) for plane in SIDE_PLANES}
        self._syncing = False
        self._closed = False
        self._timer = QTimer(self)  # layer changes within one turn (a relevance result's overlays): one re-hang
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.rebuild)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        hint = QLabel("Click a point in any plane: the others move there. The main canvas is axial.")
        hint.setWordWrap(True)
        layout.addWidget(hint)
        for canvas in self.canvases.values():
            layout.addWidget(canvas, 1)
        self.setMinimumWidth(300)
        follow(self, self.screen.study_changed, self._study_changed)
        follow(self, self.viewer.layers.events.inserted, self._schedule)
        follow(self, self.viewer.layers.events.removed, self._schedule)
        follow(self, self.viewer.dims.events.point, self._scrolled)
        self.viewer.mouse_drag_callbacks.append(self._click)
        for canvas in self.canvases.values():
            canvas.model.mouse_drag_callbacks.append(self._click)
            canvas.model.dims.events.point.connect(self._scrolled)
        self._watched: weakref.WeakSet = weakref.WeakSet()
        self._contrast_followed: weakref.WeakSet = weakref.WeakSet()
        self.destroyed.connect(lambda *_: self._detach())
        self.rebuild()

    # --- the viewers this widget links ---------------------------------------------------------------
    def viewers(self) -> dict:
        return {"axial": self.viewer, **{p: c.model for p, c in self.canvases.items()}}

    def _detach(self) -> None:
        self._closed = True
        self._timer.stop()
        try:
            self.viewer.mouse_drag_callbacks.remove(self._click)
        except ValueError:
            pass

    def _study_changed(self, _study=None) -> None:
        self._timer.stop()
        self.rebuild()

    def _schedule(self, event=None) -> None:
        """A layer came, went, or was shown/hidden outside a study switch: re-hang once this turn is over."""
        value = getattr(event, "value", None)
        if value is not None and getattr(value, "metadata", {}).get(KIND_KEY) == "crosshair":
            return
        if self.screen.switching or self._closed:
            return  # the switch ends with study_changed, which re-hangs
        self._timer.start(0)

    def rebuild(self) -> None:
        """Hang the study on screen: axial in the viewer, coronal and sagittal here, the crosshair at its
        centre when the study is new to the planes."""
        if self._closed:
            return
        study = self.screen.study
        layers = [layer for layer in self.viewer.layers if study is not None and study_of(layer) is study
                  and layer.metadata.get(KIND_KEY) in ("scan", "relevance")]
        self._syncing = True  # hanging moves the planes' sliders: not a scroll to follow
        try:
            for plane, canvas in self.canvases.items():
                chosen = plane_layers(layers, plane)
                if [(id(x), id(x.data)) for x in chosen] != canvas.key or canvas.qt_viewer is None:
                    canvas.hang(chosen, plane)
                for source in chosen:
                    self._follow_contrast(source)
        finally:
            self._syncing = False
        for layer in layers:  # showing another series in the viewer re-hangs the planes
            if layer not in self._watched:
                self._watched.add(layer)
                follow_layer(self, weakref.WeakSet(), layer, "visible", lambda _x: self._schedule())
        if not layers:
            self.study, self.point = None, None
            return
        if tuple(self.viewer.dims.order) != PLANES["axial"][0]:
            show_plane(self.viewer, "axial")
        if self.point is None or study is not self.study:
            self.study = study
            self._aim(np.asarray(self.viewer.dims.point, dtype=float))
        self.set_point(self.point)

    def _follow_contrast(self, source) -> None:
        """Window/level changed on a layer in the viewer: its copies in the planes follow. One connection per
        layer, looking up which copy shows it now (copies take other layers over as studies change)."""
        follow_layer(self, self._contrast_followed, source, "contrast_limits", self._contrast_changed)

    def _contrast_changed(self, layer) -> None:
        for canvas in self.canvases.values():
            for src, copy in zip(canvas.sources, canvas.model.layers):
                if src is layer:
                    copy.contrast_limits = layer.contrast_limits

    # --- the crosshair -------------------------------------------------------------------------------
    def _click(self, viewer, event):
        """A click (press and release without moving) sets the crosshair where it lands."""
        if event.button != 1 or viewer.dims.ndisplay != 2:
            return
        start = np.asarray(event.pos, dtype=float)
        moved = False
        yield
        while event.type == "mouse_move":
            moved = moved or float(np.abs(np.asarray(event.pos, dtype=float) - start).max()) > 3
            yield
        if not moved:
            self.set_point(np.asarray(event.position, dtype=float)[-3:])

    def _scrolled(self, event=None) -> None:
        """A plane scrolled (wheel, slider): its slice position moves the line the others show."""
        if self._syncing or self.point is None or self.screen.switching or self.study is not self.screen.study:
            return
        for viewer in self.viewers().values():
            if viewer.dims.ndim == 3:
                axis = int(viewer.dims.order[0])
                value = float(viewer.dims.point[axis])
                if not np.isclose(value, self.point[axis]):
                    point = self.point.copy()
                    point[axis] = value
                    self.set_point(point)
                    return

    def set_point(self, point) -> None:
        """Move every plane to ``point`` (world S, P, L mm) and draw the crosshair there."""
        self._aim(point)
        for viewer in self.viewers().values():
            self._move(viewer)

    def _aim(self, point) -> None:
        """The crosshair's point: ``point``, or the nearest point of the study for a click beside it."""
        point = np.asarray(point, dtype=float)[-3:]
        scans = [x for x in self.viewer.layers if x.metadata.get(KIND_KEY) == "scan" and study_of(x) is self.study]
        if scans:
            lo = np.min([np.asarray(x.extent.world)[0, -3:] for x in scans], axis=0)
            hi = np.max([np.asarray(x.extent.world)[1, -3:] for x in scans], axis=0)
            point = np.clip(point, lo, hi)
        self.point = point

    def _move(self, viewer) -> None:
        """One plane to the crosshair's point, with the crosshair drawn on it."""
        if self.point is None or viewer.dims.ndim != 3 or not len(viewer.layers):
            return
        self._syncing = True
        try:
            axis = int(viewer.dims.order[0])
            viewer.dims.set_point(axis, float(self.point[axis]))
            self._draw(viewer)
            # a new or moved crosshair changes the layers' extent, and napari then snaps the slider to its
            # world grid: put it back on the point
            viewer.dims.set_point(axis, float(self.point[axis]))
        finally:
            self._syncing = False

    def _draw(self, viewer) -> None:
        """Two lines through the crosshair, across the plane the viewer shows, on its current slice."""
        layer = next((x for x in viewer.layers if x.metadata.get(KIND_KEY) == "crosshair"), None)
        extent = np.asarray(viewer.layers.extent.world, dtype=float)[:, -3:]
        order = [int(a) for a in viewer.dims.order]
        v_axis, h_axis = order[-2], order[-1]
        p = self.point.copy()
        lines = []
        for axis in (v_axis, h_axis):
            a, b = p.copy(), p.copy()
            a[axis], b[axis] = extent[0, axis], extent[1, axis]
            lines.append(np.stack([a, b]))
        if layer is None:
            active = viewer.layers.selection.active
            study = self.study
            metadata = {KIND_KEY: "crosshair"}
            if study is not None:
                metadata.update({STUDY_KEY: study, "study_uid": study.uid, "series_uid": "",
                                 "study_label": study_label(study)})
            name = f"{study_label(study)} · crosshair" if study is not None else "crosshair"
            width = float(np.max(extent[1] - extent[0])) / 400  # a thin line whatever the field of view
            layer = viewer.add_shapes(lines, shape_type="line", edge_color=CROSS_COLOR, edge_width=width,
                                      opacity=0.8, name=name, metadata=metadata, units=UNITS)
            if active is not None and active in viewer.layers:
                viewer.layers.selection.active = active
        else:
            layer.data = lines

    def close_canvases(self) -> None:
        self._syncing, self.point, self._closed = True, None, True  # closing: nothing to follow any more
        self._detach()
        for canvas in self.canvases.values():
            canvas.close_canvas()



class CompareWidget(QWidget):
    """Compare mode: a second study (a prior) in its own canvas beside the one on screen, each labelled
    (the canvas title and its corner text name the study; the viewer's corner names the other)."""

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = unwrap(napari_viewer)
        self.study = None
        self.canvas = PlaneCanvas("Compare", self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.canvas, 1)
        self.setMinimumWidth(360)

    def show_study(self, study) -> list:
        """Show ``study`` here (its first scan; the others hidden), in the plane the viewer shows."""
        from napari.layers import Image

        from .._layers import study_layer_data

        model = self.canvas.model
        model.layers.clear()
        self.study = study
        layers = [model.add_layer(Image(data, **kwargs)) for data, kwargs, _kind in study_layer_data(study)]
        order = tuple(self.viewer.dims.order)
        plane = next((p for p, (o, _c) in PLANES.items() if o == order), "axial")
        reading(model)
        show_plane(model, plane)
        self.canvas.title.setText(f"<b>Compare</b> · {study_label(study)} · {study.description or study.uid}")
        return layers

    def close_canvases(self) -> None:
        self.canvas.close_canvas()
