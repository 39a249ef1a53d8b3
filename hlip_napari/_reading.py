"""Reading a study as in a PACS viewer: one patient on screen, the wheel steps slices, a drag windows.

``reading(viewer)`` returns the viewer's :class:`Reading` (made once): once the plugin's layers arrive it
turns the PACS mouse mode on and draws the corner texts a radiologist reads by (study label, "Im 15/30" with the slice position in mm, W/L, orientation
letters on the edges). Nothing here knows Qt widgets; napari's own overlays draw the text.

Mouse in PACS mode (2-D views): wheel = next/previous slice of the shown scan, Ctrl+wheel = zoom,
left drag = window (horizontal: width, vertical: level), middle or Shift+left drag = pan. Off, napari's
own controls come back (wheel zooms, drag pans, Ctrl+wheel steps the world grid).
"""
from __future__ import annotations

import functools
import weakref

import numpy as np

from ._layers import KIND_KEY, study_label, study_of
from ._napari_compat import wheel_slice_callbacks
from ._view import PLANES, camera, unwrap

# world axis -> (letter at its low end, letter at its high end); world = (S, P, L) as in _layers
LETTERS = {0: ("I", "S"), 1: ("A", "P"), 2: ("R", "L")}
AXIS_NAMES = {0: "S", 1: "P", 2: "L"}  # the sign convention of the slice position (LPS, as DICOM)
EDGES = {"top": "top_center", "bottom": "bottom_center", "left": "middle_left", "right": "middle_right"}
ZOOM_STEP = 1.15  # per wheel notch with Ctrl
NARROW_PX = 520  # a canvas narrower than this gets the small corner texts
WL_RATE = 1 / 250  # fraction of the window width per pixel dragged
OVERLAY_PREFIX = "hlip_"
NO_STUDY_TEXT = "HLIP Explorer\nNo study open\nFile ▸ Open a folder:\nDICOM, NIfTI, HLIP .pt\nor the Study browser"
LEGEND_WINDOWS = ("Brain", "Subdural", "Stroke", "Bone", "Lung", "Liver")  # the CT presets the legend lists
LEGEND_LINE = 26  # characters: the legend stays left of the bottom orientation letter on a narrow canvas
CORNERS = (("info", "top_left"), ("legend", "bottom_left"), *EDGES.items())


@functools.cache
def legend_text() -> str:
    """What an empty viewer shows at the bottom left: the PACS mouse (it is not napari's own) and CT windows
    of the Study browser's window box (W/L in HU), as a reader's quick reference; short lines."""
    from hlip_engine.windows import window_presets

    presets = window_presets()
    lines = ["Mouse: wheel = next image", "Ctrl+wheel = zoom", "left drag = window", "Shift+drag = pan",
             "CT windows (W/L):"]
    lines += [f"{n} {presets[n]['width']:.0f}/{presets[n]['level']:.0f}" for n in LEGEND_WINDOWS if n in presets]
    return "\n".join(lines)

_READINGS: dict[int, tuple[weakref.ref, Reading]] = {}


def reading(viewer) -> Reading:
    """The viewer's reading state, installed on first use."""
    viewer = unwrap(viewer)
    key = id(viewer)
    found = _READINGS.get(key)
    if found is not None and found[0]() is viewer:
        return found[1]
    state = Reading(viewer)
    _READINGS[key] = (weakref.ref(viewer), state)
    return state


def edge_letters(order, orientation2d) -> dict[str, str]:
    """Which patient direction each canvas edge shows, for a dims order and a 2-D camera orientation."""
    vertical, horizontal = order[-2], order[-1]
    v_low, v_high = LETTERS[vertical]
    h_low, h_high = LETTERS[horizontal]
    down = orientation2d[0] == "down"  # values grow downwards: the low end is at the top
    right = orientation2d[1] == "right"
    return {"top": v_low if down else v_high, "bottom": v_high if down else v_low,
            "left": h_low if right else h_high, "right": h_high if right else h_low}


def reference_layer(viewer):
    """The scan the reader is looking at: the active layer when it is a shown scan, else the top-most one."""
    active = viewer.layers.selection.active
    md = getattr(active, "metadata", None) or {}
    if active is not None and md.get(KIND_KEY) == "scan" and active.visible:
        return active
    for layer in reversed(list(viewer.layers)):
        if (layer.metadata or {}).get(KIND_KEY) == "scan" and layer.visible:
            return layer
    return None


def _runs_against_view(layer, axis: int) -> bool:
    """Whether the shown axis is the layer's scan's own slice axis, stored the other way in the layer."""
    from ._layers import SCAN_KEY, layer_view

    study, k = study_of(layer), (layer.metadata or {}).get(SCAN_KEY)
    if study is None or k is None:
        return False
    view, _ = layer_view(study.scans[int(k)])
    return bool(view.axes[axis] == 0 and view.flips[axis])


def slice_of(viewer, layer) -> tuple[int, int, float, int]:
    """(image number from 1, images, position mm, world axis) of ``layer`` at the viewer's slider.

    In the series' own plane the number is the scan's own slice (as its images are numbered), even where the
    layer's array runs the other way through patient space; in a reformatted plane it counts along the view.
    """

    axis = int(viewer.dims.order[0])
    data = np.asarray(layer.world_to_data(np.asarray(viewer.dims.point, dtype=float)), dtype=float)
    n = int(layer.data.shape[axis])
    i = int(np.clip(np.round(data[axis]), 0, n - 1))
    data[axis] = i
    world = np.asarray(layer.data_to_world(data), dtype=float)
    number = n - 1 - i if _runs_against_view(layer, axis) else i  # the scan's slice axis, reversed in the layer
    return number + 1, n, float(world[axis]), axis


class Reading:
    """One viewer's reading state: the PACS mouse mode and the canvas texts."""

    def __init__(self, viewer):
        self._viewer = weakref.ref(viewer)
        self.pacs = False
        self.compact = False  # small canvases (3-up planes): slice and window only, smaller letters
        self._saved_wheel: list = []
        self._started = False  # the texts and the PACS mouse come with the plugin's first study
        self._screen = None  # the viewer's OnScreen once :meth:`follow` is called (the 3-up planes have none)
        viewer.layers.events.inserted.connect(self._inserted)
        viewer.layers.events.removed.connect(self._refresh)
        viewer.dims.events.point.connect(self._refresh)
        viewer.dims.events.order.connect(self._refresh)
        viewer.dims.events.ndisplay.connect(self._refresh)
        if hasattr(getattr(viewer, "canvas", None), "events") and hasattr(viewer.canvas.events, "size"):
            viewer.canvas.events.size.connect(self._refresh)  # a narrow canvas: smaller, shorter texts
        camera(viewer).events.orientation.connect(self._refresh)
        viewer.layers.selection.events.active.connect(self._refresh)
        if any(study_of(layer) is not None for layer in viewer.layers):
            self.start()
        self._refresh()  # an empty viewer says how to open a study

    @property
    def viewer(self):
        return self._viewer()

    def follow(self, screen) -> None:
        """Draw the texts from ``screen`` (the viewer's :class:`OnScreen`): the study on screen's, redrawn once
        when a switch ends (``study_changed``), and blank while a switch is under way, so a corner never names
        one patient over another's images. napari paints during a switch (a new slider, the layer controls):
        the texts are not rasterised there."""
        if self._screen is screen:
            return
        self._screen = screen
        screen.study_changed.connect(self._refresh)
        self._refresh()

    def _inserted(self, event) -> None:
        layer = event.value
        if study_of(layer) is None or self.viewer is None:
            return
        self.start()
        for name in ("visible", "contrast_limits"):
            if hasattr(layer.events, name):
                getattr(layer.events, name).connect(self._refresh)
        self._refresh()

    def start(self) -> None:
        """The plugin's first study in this viewer: corner texts, scale bar on the image, the PACS mouse
        (switchable in the Study browser)."""
        if self._started:
            return
        self._started = True
        viewer = self.viewer
        for key, position in CORNERS:
            self._overlay(key, position, 13 if key in EDGES else 10)
        bar = viewer.canvas.overlays["scale_bar"]
        bar.box = False  # on the image, like the corner texts
        if self._screen is None:
            bar.visible = True  # else with the study on screen (see _refresh)
        self.set_pacs(True)
        self._refresh()

    # --- PACS mouse mode ----------------------------------------------------------------------------
    def set_pacs(self, on: bool) -> None:
        viewer = self.viewer
        if viewer is None or on == self.pacs:
            return
        self.pacs = on
        camera(viewer).mouse_zoom = not on
        camera(viewer).mouse_pan = not on
        if on:
            self._saved_wheel = wheel_slice_callbacks(viewer)  # napari's Ctrl+wheel: ours zooms instead
            for cb in self._saved_wheel:
                viewer.mouse_wheel_callbacks.remove(cb)
            viewer.mouse_wheel_callbacks.append(self._wheel)
            viewer.mouse_drag_callbacks.append(self._drag)
        else:
            for callbacks, cb in ((viewer.mouse_wheel_callbacks, self._wheel),
                                  (viewer.mouse_drag_callbacks, self._drag)):
                if cb in callbacks:
                    callbacks.remove(cb)
            viewer.mouse_wheel_callbacks.extend(self._saved_wheel)
            self._saved_wheel = []

    def _free_hand(self, viewer) -> bool:
        """Our mouse controls act only when no layer tool (drawing a ruler, painting) wants the mouse."""
        active = viewer.layers.selection.active
        return active is None or getattr(active, "mode", "pan_zoom") == "pan_zoom"

    def _wheel(self, viewer, event) -> None:
        delta = float(event.delta[1]) if len(event.delta) > 1 else 0.0
        if delta == 0:
            return
        if "Control" in event.modifiers or viewer.dims.ndisplay == 3:
            camera(viewer).zoom *= ZOOM_STEP if delta > 0 else 1 / ZOOM_STEP
        else:
            self.step(-1 if delta > 0 else 1)  # wheel towards the screen = the next image, as in PACS
        event.handled = True

    def step(self, n: int) -> None:
        """Move ``n`` images of the shown scan (its own slices, not napari's world grid): +1 is the next image
        in the series' own numbering, as in a PACS, also where its array runs against the viewer's axis."""
        viewer = self.viewer
        layer = reference_layer(viewer)
        if layer is None or viewer.dims.ndisplay != 2:
            return
        axis = int(viewer.dims.order[0])
        if _runs_against_view(layer, axis):
            n = -n
        data = np.asarray(layer.world_to_data(np.asarray(viewer.dims.point, dtype=float)), dtype=float)
        data[axis] = np.clip(np.round(data[axis]) + n, 0, layer.data.shape[axis] - 1)
        world = np.asarray(layer.data_to_world(data), dtype=float)
        viewer.dims.set_point(axis, float(world[axis]))

    def _drag(self, viewer, event):
        if viewer.dims.ndisplay != 2 or not self._free_hand(viewer):
            return
        pan = event.button == 3 or (event.button == 1 and "Shift" in event.modifiers)
        layer = reference_layer(viewer)
        if event.button != 1 and not pan:
            return
        if layer is None and not pan:
            return
        start = np.asarray(event.pos, dtype=float)
        lo, hi = (float(v) for v in layer.contrast_limits) if layer is not None else (0.0, 1.0)
        width0, level0 = max(hi - lo, 1e-3), (hi + lo) / 2
        center0 = np.asarray(camera(viewer).center, dtype=float)
        yield
        while event.type == "mouse_move":
            dx, dy = np.asarray(event.pos, dtype=float) - start
            if pan:
                self._pan(viewer, center0, dx, dy)
            else:
                width = max(width0 * (1 + dx * WL_RATE * 2), width0 * 0.02)
                level = level0 + dy * width0 * WL_RATE
                self.set_window(layer, width, level)
            yield

    @staticmethod
    def set_window(layer, width: float, level: float) -> None:
        lo, hi = level - width / 2, level + width / 2
        rlo, rhi = layer.contrast_limits_range
        layer.contrast_limits_range = (min(rlo, lo), max(rhi, hi))
        layer.contrast_limits = (lo, hi)
        layer.metadata["contrast"] = f"W {width:.0f} / L {level:.0f} (dragged)"

    @staticmethod
    def _pan(viewer, center0, dx: float, dy: float) -> None:
        zoom = max(float(camera(viewer).zoom), 1e-9)
        order = viewer.dims.order
        vertical, horizontal = order[-2], order[-1]
        down, right = camera(viewer).orientation2d
        center = center0.copy()
        n = len(center)  # napari keeps a 3-value centre; the displayed axes are the last two of the order
        shift = {vertical: dy / zoom * (1 if down == "down" else -1),
                 horizontal: dx / zoom * (1 if right == "right" else -1)}
        for axis, d in shift.items():
            idx = axis - (viewer.dims.ndim - n)
            if 0 <= idx < n:
                center[idx] -= d
        camera(viewer).center = tuple(center)

    # --- what the canvas says -------------------------------------------------------------------------
    def _overlay(self, key: str, position: str, size: int = 10):
        from napari.components.overlays import TextOverlay

        viewer = self.viewer
        name = OVERLAY_PREFIX + key
        if name not in viewer.canvas.overlays:
            # plain text on the image, as a PACS draws its corner texts (napari's default box behind each text
            # costs a draw program per text as well)
            viewer.canvas.overlays[name] = TextOverlay(text="", position=position, font_size=size, visible=True,
                                                       box=False,
                                                       color=(1.0, 0.85, 0.3, 1.0) if key in EDGES else
                                                       (0.95, 0.95, 0.95, 1.0))
        return viewer.canvas.overlays[name]

    def texts(self) -> dict[str, str]:
        """What each canvas text says now: ``info`` (top left), ``slice``, ``window``, and the edge letters."""
        viewer = self.viewer
        screen = self._screen
        if viewer is not None and screen is not None and (
                screen.switching or (len(viewer.layers) and screen.study is None)):
            return {}  # a study is on its way in: nothing until it is on screen
        layer = reference_layer(viewer) if viewer is not None else None
        if screen is not None and layer is not None and study_of(layer) is not screen.study:
            return {}
        if layer is None:
            # an empty viewer (no layer at all, not a 3-up plane): how to open a study, and the letters of the
            # axial hanging a study opens in
            if viewer is None or len(viewer.layers) or self.compact:
                return {}
            return {"info": NO_STUDY_TEXT, "legend": legend_text(), **edge_letters(*PLANES["axial"])}
        study = study_of(layer)
        # one item per line, each short: the corner text must not reach the orientation letter at the top
        limit = self.line_limit()
        what = study.description if len(study.description) <= limit else study.description[:limit - 1] + "…"
        series = layer.name.split(" · ", 1)[-1]
        series = series if len(series) <= limit else series[:limit - 1] + "…"
        out = {"info": f"{study_label(study)}\n{what}\n{series}" if what else f"{study_label(study)}\n{series}"}
        lo, hi = (float(v) for v in layer.contrast_limits)
        out["window"] = f"W {hi - lo:.0f}  L {(hi + lo) / 2:.0f}"
        if viewer.dims.ndisplay == 2 and viewer.dims.ndim == 3:
            i, n, pos, axis = slice_of(viewer, layer)
            out["slice"] = f"Im {i}/{n}   {AXIS_NAMES[axis]} {pos:.1f} mm"
            out.update(edge_letters(viewer.dims.order, camera(viewer).orientation2d))
        return out

    def _canvas_width(self) -> int | None:
        size = getattr(getattr(self.viewer, "canvas", None), "size", None)  # (height, width) in pixels
        return None if size is None else int(size[1])

    def narrow(self) -> bool:
        """Small letters: the 3-up planes, and any canvas narrower than ``NARROW_PX``."""
        width = self._canvas_width()
        return self.compact or (width is not None and width < NARROW_PX)

    def line_limit(self) -> int:
        """Characters per corner-text line: what fits in ~45 % of the canvas width (30 at most), so a line
        stops short of the top orientation letter."""
        width = self._canvas_width()
        if width is None:
            return 30
        char_px = 8.7 if self.narrow() else 10.9  # a capital at 8 / 10 pt, as measured on the screenshots
        return int(max(10, min(30, 0.45 * width / char_px)))

    def _refresh(self, *_args) -> None:
        viewer = self.viewer
        if viewer is None:
            return
        texts = self.texts()
        if self.compact and "info" in texts:
            texts["info"] = ""
        if "slice" in texts:
            texts["info"] += "\n" + texts.pop("slice") + "\n" + texts.pop("window")
        elif "window" in texts:
            texts["info"] += "\n" + texts.pop("window")
        texts["info"] = texts.get("info", "").strip("\n")
        small = 8 if self.narrow() else 10
        if self._screen is not None and self._started:
            # the scale bar measures the study on screen: it comes and goes with it (drawn after a switch)
            bar = viewer.canvas.overlays["scale_bar"]
            wanted = self._screen.study is not None and not self._screen.switching
            if bar.visible != wanted:
                bar.visible = wanted
        for key, position in CORNERS:
            size = small + 3 if key in EDGES else small
            overlay = self._overlay(key, position, size)
            if overlay.font_size != size:
                overlay.font_size = size
            text = texts.get(key, "")
            if overlay.text != text:
                overlay.text = text
